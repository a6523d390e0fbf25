"""Loaders for the public MovieLens formats, auto-detected from a directory or one of its files.

=========  ===========================================  ======================================================
format     ratings                                      items
=========  ===========================================  ======================================================
ml-100k    `u.data` (or `*.base`/`*.test` splits):      `u.item`, latin-1, `|`-separated, 19 genre flags named
           tab-separated user, item, rating, ts (s)     by `u.genre`
ml-1m      `ratings.dat`: `::`-separated, latin-1       `movies.dat`: id::title::Genre1|Genre2
ml-latest  `ratings.csv` with header, ts in seconds,    `movies.csv`: movieId,title,genres (quoted titles),
           half-star ratings                            "(no genres listed)" -> no categories
=========  ===========================================  ======================================================

Ratings become `rating` events: ts in ms, event_id `ml-<user>-<item>-<ts ms>`, stably sorted by ts (ties keep
file order). Timestamps are kept as in the source: ML-100K (1997-98) and older ml-latest ratings fall before
the wire contract's 2000-01-01 lower bound, which matters only when they are replayed as messages
(`streamrec data convert` shifts them; see `loaders.shift_into_contract`). Any malformed line raises a
ValueError naming file and line: this is an offline loader, and skipping rows would change the data set.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from operators.schema import RATING_MAX, RATING_MIN, Event, ItemMeta, Rejection, item_from_mapping

FORMATS = ("ml-100k", "ml-1m", "ml-latest")

# ML-100K's genre order, used only if `u.genre` is missing next to `u.item`.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_NO_GENRES = "(no genres listed)"
_ITEM_FILE = {"ml-100k": "u.item", "ml-1m": "movies.dat", "ml-latest": "movies.csv"}


@dataclass(frozen=True)
class Source:
    """A detected MovieLens data set: its format and files (items/genres may be absent)."""

    fmt: str
    ratings: Path
    items: Path | None
    genres: Path | None = None


def detect(path: str | Path) -> Source | None:
    """The MovieLens data set at `path` (a directory or one of its files), or None if it is not one."""
    p = Path(path)
    if p.is_dir():
        for fmt, name in (("ml-100k", "u.data"), ("ml-1m", "ratings.dat"), ("ml-latest", "ratings.csv")):
            if (p / name).is_file():
                return _source(fmt, p / name)
        return None
    if not p.is_file():
        return None
    name, parent = p.name, p.parent
    if name == "u.data" or (p.suffix in (".base", ".test") and (parent / "u.item").is_file()):
        return _source("ml-100k", p)
    if name in ("u.item", "u.genre") and (parent / "u.data").is_file():
        return _source("ml-100k", parent / "u.data")
    if name in ("ratings.dat", "movies.dat") and (parent / "ratings.dat").is_file():
        return _source("ml-1m", parent / "ratings.dat")
    if (
        name in ("ratings.csv", "movies.csv")
        and (parent / "ratings.csv").is_file()
        and _is_latest_csv(parent)
    ):
        return _source("ml-latest", parent / "ratings.csv")
    return None


def _is_latest_csv(d: Path) -> bool:
    with open(d / "ratings.csv", encoding="utf-8", errors="replace") as f:
        head = f.readline().strip().lower()
    return head.startswith("userid,movieid,rating")


def _source(fmt: str, ratings: Path) -> Source:
    d = ratings.parent
    items = d / _ITEM_FILE[fmt]
    genres = d / "u.genre" if fmt == "ml-100k" else None
    return Source(
        fmt,
        ratings,
        items if items.is_file() else None,
        genres if genres is not None and genres.is_file() else None,
    )


def _err(path: Path, lineno: int, msg: str) -> ValueError:
    return ValueError(f"{path}:{lineno}: {msg}")


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    with open(path, encoding=encoding, newline="") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line


def _rating_event(path: Path, lineno: int, user: str, item: str, rating: str, ts: str) -> Event:
    user, item = user.strip(), item.strip()
    if not user.isdigit() or not item.isdigit():
        raise _err(path, lineno, f"user and item ids must be integers, got {user[:20]!r}, {item[:20]!r}")
    try:
        r = float(rating)
        t = int(ts)
    except ValueError:
        raise _err(path, lineno, f"bad rating or timestamp: {rating[:20]!r}, {ts[:20]!r}") from None
    if not RATING_MIN <= r <= RATING_MAX:
        raise _err(path, lineno, f"rating {r} outside [{RATING_MIN}, {RATING_MAX}]")
    if t < 0:
        raise _err(path, lineno, f"negative timestamp {t}")
    ms = t * 1000
    return Event(f"ml-{user}-{item}-{ms}", user, item, "rating", ms, r)


def _ratings(src: Source) -> Iterator[Event]:
    p = src.ratings
    if src.fmt == "ml-100k":
        for lineno, line in _lines(p, "latin-1"):
            f = line.split("\t")
            if len(f) != 4:
                raise _err(
                    p, lineno, f"expected 4 tab-separated fields (user, item, rating, ts), got {len(f)}"
                )
            yield _rating_event(p, lineno, *f)
    elif src.fmt == "ml-1m":
        for lineno, line in _lines(p, "latin-1"):
            f = line.split("::")
            if len(f) != 4:
                raise _err(
                    p, lineno, f"expected 4 '::'-separated fields (user, item, rating, ts), got {len(f)}"
                )
            yield _rating_event(p, lineno, *f)
    else:
        with open(p, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:4]] != [
                "userId",
                "movieId",
                "rating",
                "timestamp",
            ]:
                raise _err(p, 1, "expected the header userId,movieId,rating,timestamp")
            for row in reader:
                if not row:
                    continue
                if len(row) != 4:
                    raise _err(p, reader.line_num, f"expected 4 fields, got {len(row)}")
                yield _rating_event(p, reader.line_num, *row)


def load_ratings(src: Source) -> list[Event]:
    """Rating events of a data set, stably sorted by ts (ties in file order)."""
    events = list(_ratings(src))
    seen: set[str] = set()
    for e in events:
        if e.event_id in seen:
            raise ValueError(f"{src.ratings}: duplicate rating {e.event_id} (same user, item and timestamp)")
        seen.add(e.event_id)
    events.sort(key=attrgetter("ts"))
    return events


def _item(path: Path, lineno: int, item_id: str, title: str, cats: list[str]) -> ItemMeta:
    item_id = item_id.strip()
    if not item_id.isdigit():
        raise _err(path, lineno, f"item id must be an integer, got {item_id[:20]!r}")
    out = item_from_mapping({"item_id": item_id, "title": title.strip(), "categories": cats})
    if isinstance(out, Rejection):
        raise _err(path, lineno, f"{out.reason.value}: {out.message}")
    return out


def _genre_names(src: Source) -> tuple[str, ...]:
    if src.genres is None:
        return ML100K_GENRES
    names: dict[int, str] = {}
    for lineno, line in _lines(src.genres, "latin-1"):
        name, _, idx = line.rpartition("|")
        if not name or not idx.strip().isdigit():
            raise _err(src.genres, lineno, "expected 'name|index'")
        names[int(idx)] = name
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{src.genres}: genre indexes must be 0..{len(names) - 1}")
    return tuple(names[i] for i in range(len(names)))


def load_movies(src: Source) -> list[ItemMeta]:
    """Item metadata (title, genres as categories) in file order; [] if the data set has no item file."""
    p = src.items
    if p is None:
        return []
    out: list[ItemMeta] = []
    if src.fmt == "ml-100k":
        genres = _genre_names(src)
        for lineno, line in _lines(p, "latin-1"):
            f = line.split("|")
            if len(f) != 5 + len(genres):
                raise _err(p, lineno, f"expected {5 + len(genres)} '|'-separated fields, got {len(f)}")
            flags = f[5:]
            if any(x not in ("0", "1") for x in flags):
                raise _err(p, lineno, "genre flags must be 0 or 1")
            out.append(
                _item(p, lineno, f[0], f[1], [g for g, x in zip(genres, flags, strict=True) if x == "1"])
            )
    elif src.fmt == "ml-1m":
        for lineno, line in _lines(p, "latin-1"):
            f = line.split("::")
            if len(f) != 3:
                raise _err(p, lineno, f"expected 3 '::'-separated fields (id, title, genres), got {len(f)}")
            out.append(_item(p, lineno, f[0], f[1], _split_genres(f[2])))
    else:
        with open(p, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:3]] != ["movieId", "title", "genres"]:
                raise _err(p, 1, "expected the header movieId,title,genres")
            for row in reader:
                if not row:
                    continue
                if len(row) != 3:
                    raise _err(p, reader.line_num, f"expected 3 fields, got {len(row)}")
                out.append(_item(p, reader.line_num, row[0], row[1], _split_genres(row[2])))
    return out


def _split_genres(s: str) -> list[str]:
    s = s.strip()
    if not s or s == _NO_GENRES:
        return []
    return [g for g in s.split("|") if g]
