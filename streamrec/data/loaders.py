"""The loaders behind `streamrec.data.load_events` / `load_items`: MovieLens or event JSONL, auto-detected.

Event JSONL is what `streamrec simulate` and `streamrec data convert` write: one contract message per line
(`operators.schema`). Items live next to it: `items.jsonl` beside `events.jsonl`, else `<stem>.items.jsonl`.
Being offline, these loaders raise a ValueError naming the line for any invalid line or repeated event_id
(the stream job dead-letters instead); blank lines are skipped.
"""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path

from operators.schema import TS_MAX_MS, TS_MIN_MS, Event, ItemMeta, Rejection, parse_event, parse_item
from streamrec.data import movielens

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def items_path_for(events_path: str | Path) -> Path:
    """Where the items of an event JSONL file live."""
    p = Path(events_path)
    if p.name == "events.jsonl":
        return p.with_name("items.jsonl")
    return p.with_name(p.stem + ".items.jsonl")


def _is_items_file(p: Path) -> bool:
    return p.name == "items.jsonl" or p.name.endswith(".items.jsonl")


def _exists(p: Path) -> None:
    if not p.exists():
        raise FileNotFoundError(f"no such file or directory: {p}")


def _unknown(p: Path) -> ValueError:
    return ValueError(
        f"{p}: not a known data format. Expected a MovieLens directory or file (ml-100k u.data, "
        "ml-1m ratings.dat, ml-latest ratings.csv), an event JSONL file (*.jsonl), or a directory holding "
        "events.jsonl"
    )


def _read_jsonl(path: Path) -> list[tuple[int, bytes]]:
    out = []
    for lineno, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if line.strip():
            out.append((lineno, line))
    return out


def read_events_jsonl(path: str | Path) -> list[Event]:
    """Events of a JSONL file, stably sorted by ts; raises on the first invalid line or repeated event_id."""
    p = Path(path)
    events: list[Event] = []
    first_line: dict[str, int] = {}
    for lineno, line in _read_jsonl(p):
        e = parse_event(line)
        if isinstance(e, Rejection):
            field = f" (field {e.field})" if e.field else ""
            raise ValueError(f"{p}:{lineno}: invalid event: {e.reason.value}{field}: {e.message}")
        if e.event_id in first_line:
            raise ValueError(
                f"{p}:{lineno}: duplicate event_id {e.event_id!r} (first at line {first_line[e.event_id]})"
            )
        first_line[e.event_id] = lineno
        events.append(e)
    events.sort(key=attrgetter("ts"))
    return events


def read_items_jsonl(path: str | Path) -> list[ItemMeta]:
    """Items of a JSONL file in file order; raises on the first invalid line or repeated item_id."""
    p = Path(path)
    items: list[ItemMeta] = []
    first_line: dict[str, int] = {}
    for lineno, line in _read_jsonl(p):
        it = parse_item(line)
        if isinstance(it, Rejection):
            field = f" (field {it.field})" if it.field else ""
            raise ValueError(f"{p}:{lineno}: invalid item: {it.reason.value}{field}: {it.message}")
        if it.item_id in first_line:
            raise ValueError(
                f"{p}:{lineno}: duplicate item_id {it.item_id!r} (first at line {first_line[it.item_id]})"
            )
        first_line[it.item_id] = lineno
        items.append(it)
    return items


def load_events(path: str | Path) -> list[Event]:
    """Events from a MovieLens dir/file or an event JSONL file, stably sorted by ts (ties in input order)."""
    p = Path(path)
    _exists(p)
    src = movielens.detect(p)
    if src is not None:
        return movielens.load_ratings(src)
    if p.is_dir():
        if (p / "events.jsonl").is_file():
            return read_events_jsonl(p / "events.jsonl")
        raise _unknown(p)
    if p.suffix in JSONL_SUFFIXES and not _is_items_file(p):
        return read_events_jsonl(p)
    raise _unknown(p)


def load_items(path: str | Path) -> list[ItemMeta]:
    """Item metadata for the same paths as `load_events` (or an items JSONL file); [] if there is none."""
    p = Path(path)
    _exists(p)
    src = movielens.detect(p)
    if src is not None:
        return movielens.load_movies(src)
    if p.is_dir():
        if (p / "items.jsonl").is_file():
            return read_items_jsonl(p / "items.jsonl")
        if (p / "events.jsonl").is_file():
            return []
        raise _unknown(p)
    if _is_items_file(p):
        return read_items_jsonl(p)
    if p.suffix in JSONL_SUFFIXES:
        sibling = items_path_for(p)
        return read_items_jsonl(sibling) if sibling.is_file() else []
    raise _unknown(p)


def shift_into_contract(events: list[Event]) -> tuple[list[Event], int]:
    """Events moved in time so all fit the wire contract's ts range, and the shift in ms (0 if none needed).

    Historical data (ML-100K is 1997-98) predates the contract's 2000-01-01 lower bound; shifting everything
    by one constant keeps order and gaps, so replays behave like the original. Raises if the span cannot fit.
    """
    if not events:
        return events, 0
    lo = min(e.ts for e in events)
    hi = max(e.ts for e in events)
    if lo >= TS_MIN_MS and hi < TS_MAX_MS:
        return events, 0
    if hi - lo >= TS_MAX_MS - TS_MIN_MS:
        raise ValueError("the events span more than the contract's ts range; cannot shift them into it")
    shift = TS_MIN_MS - lo if lo < TS_MIN_MS else (TS_MAX_MS - 1) - hi
    return [_with_ts(e, e.ts + shift) for e in events], shift


def _with_ts(e: Event, ts: int) -> Event:
    return Event(e.event_id, e.user_id, e.item_id, e.event_type, ts, e.rating, e.session_id, e.context)


def write_events_jsonl(events: list[Event], items: list[ItemMeta], out: str | Path) -> dict[str, Path]:
    """Events to `out` (one contract message per line) and, if any, items to `items_path_for(out)`."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        for ev in events:
            f.write(ev.to_json().encode("utf-8") + b"\n")
    paths = {"events": p}
    if items:
        ip = items_path_for(p)
        with open(ip, "wb") as f:
            for it in items:
                f.write(it.to_json().encode("utf-8") + b"\n")
        paths["items"] = ip
    return paths
