"""MovieLens loaders (three formats on tiny fixtures made here), event JSONL loading, `data stats|convert`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from operators.schema import TS_MIN_MS, Event, parse_event
from streamrec.data import ItemMeta, load_events, load_items
from streamrec.data import cli as data_cli
from streamrec.data.cli import stats_of

REPO = Path(__file__).resolve().parents[2]
ML100K = REPO.parent / "shared" / "data" / "ml-100k"

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


def make_100k(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    # ts 881250949 (1997) twice: a tie that must stay in file order.
    (d / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t881250949\n\n")
    (d / "u.item").write_bytes(
        (
            f"242|Kolya (1996)|24-Jan-1997||http://x|{flags('Comedy')}\n"
            f"302|L.A. Confidential (1997)|01-Jan-1997||http://x|{flags('Crime', 'Film-Noir', 'Mystery')}\n"
            f"377|Café Society (1995)|01-Jan-1995||http://x|{flags('unknown')}\n"
        ).encode("latin-1")
    )
    (d / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    return d


def make_1m(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978300760\n")
    (d / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Amélie (2001)::Comedy|Romance\n".encode(
            "latin-1"
        )
    )
    return d


def make_latest(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,1,0.5,964982703\n"
    )
    (d / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '3,"American President, The (1995)",(no genres listed)\n',
        encoding="utf-8",
    )
    return d


def test_ml100k_events_and_items(tmp_path: Path) -> None:
    d = make_100k(tmp_path / "ml-100k")
    ev = load_events(d)
    assert [(e.user_id, e.item_id) for e in ev] == [
        ("196", "242"),
        ("22", "377"),
        ("186", "302"),
    ]  # stable tie
    e = ev[0]
    assert (e.event_type, e.ts, e.rating, e.event_id) == (
        "rating",
        881250949000,
        3.0,
        "ml-196-242-881250949000",
    )
    assert load_events(d / "u.data") == ev
    items = {i.item_id: i for i in load_items(d)}
    assert items["302"].categories == ("Crime", "Film-Noir", "Mystery")
    assert items["377"].title == "Café Society (1995)" and items["377"].categories == ("unknown",)
    assert load_items(d / "u.data") == load_items(d)


def test_ml100k_split_files_are_detected(tmp_path: Path) -> None:
    d = make_100k(tmp_path / "ml-100k")
    (d / "ua.base").write_text("5\t242\t2\t881250950\n")
    assert [e.user_id for e in load_events(d / "ua.base")] == ["5"]


def test_ml1m(tmp_path: Path) -> None:
    d = make_1m(tmp_path / "ml-1m")
    ev = load_events(d)
    assert [e.event_id for e in ev] == [
        "ml-1-1193-978300760000",
        "ml-2-1193-978300760000",
        "ml-1-661-978302109000",
    ]
    assert [e.rating for e in ev] == [5.0, 4.0, 3.0]
    items = load_items(d / "ratings.dat")
    assert items == [
        ItemMeta("1193", "One Flew Over the Cuckoo's Nest (1975)", ("Drama",)),
        ItemMeta("661", "Amélie (2001)", ("Comedy", "Romance")),
    ]


def test_ml_latest(tmp_path: Path) -> None:
    d = make_latest(tmp_path / "ml-latest-small")
    ev = load_events(d / "ratings.csv")
    assert [(e.user_id, e.item_id, e.rating) for e in ev] == [
        ("1", "3", 4.5),
        ("1", "1", 4.0),
        ("2", "1", 0.5),
    ]
    items = load_items(d)
    assert items[1] == ItemMeta("3", "American President, The (1995)", ())
    assert items[0].categories == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")


@pytest.mark.parametrize(
    ("fmt", "file", "content", "needle"),
    [
        ("100k", "u.data", "196\t242\t3\n", "u.data:1: expected 4"),
        ("100k", "u.data", "196\t242\t3\t881250949\n1\t2\tseven\t881250949\n", "u.data:2: bad rating"),
        ("100k", "u.data", "196\t242\t9\t881250949\n", "u.data:1: rating 9.0 outside"),
        ("1m", "ratings.dat", "1::x::5::978300760\n", "ratings.dat:1: user and item ids"),
        ("latest", "ratings.csv", "user,movie,rating,timestamp\n", "ratings.csv:1: expected the header"),
        ("latest", "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0\n", "ratings.csv:2: expected 4"),
    ],
)
def test_malformed_rows_name_file_and_line(
    tmp_path: Path, fmt: str, file: str, content: str, needle: str
) -> None:
    d = {"100k": make_100k, "1m": make_1m, "latest": make_latest}[fmt](tmp_path / fmt)
    (d / file).write_text(content)
    with pytest.raises(ValueError, match=needle):
        load_events(d)


def test_malformed_item_file(tmp_path: Path) -> None:
    d = make_100k(tmp_path / "x")
    (d / "u.item").write_text("1|Title|date||url|0|1\n")
    with pytest.raises(ValueError, match=r"u\.item:1: expected 24"):
        load_items(d)


def test_unknown_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a known data format"):
        load_events(tmp_path)
    with pytest.raises(ValueError, match="not a known data format"):
        load_events(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_events(tmp_path / "missing")
    (tmp_path / "events.jsonl").write_text("")
    assert load_events(tmp_path) == [] and load_items(tmp_path) == []


def test_jsonl_sorted_stably_and_invalid_lines_raise(tmp_path: Path) -> None:
    def line(i: int, ts: int) -> str:
        return json.dumps(
            {"event_id": f"e{i}", "user_id": "u", "item_id": "i", "event_type": "view", "ts": ts}
        )

    p = tmp_path / "x.jsonl"
    p.write_text(
        "\n".join([line(1, 1_700_000_000_002), line(2, 1_700_000_000_001), line(3, 1_700_000_000_002)])
    )
    assert [e.event_id for e in load_events(p)] == ["e2", "e1", "e3"]
    assert load_items(p) == []
    p.write_text(line(1, 1_700_000_000_000) + "\n\n" + line(2, 5) + "\n")
    with pytest.raises(ValueError, match=r"x\.jsonl:3: invalid event: ts_out_of_range \(field ts\)"):
        load_events(p)
    p.write_text(line(1, 1_700_000_000_000) + "\n" + line(1, 1_700_000_000_001) + "\n")
    with pytest.raises(ValueError, match=r"x\.jsonl:2: duplicate event_id 'e1' \(first at line 1\)"):
        load_events(p)
    (tmp_path / "x.items.jsonl").write_text('{"item_id":"i","title":"T","categories":[]}\n{"item_id":"j"}\n')
    with pytest.raises(ValueError, match=r"x\.items\.jsonl:2: invalid item: missing_field"):
        load_items(p)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_convert_round_trips_and_shifts_into_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = make_100k(tmp_path / "ml")
    out = tmp_path / "conv" / "ml.jsonl"
    assert _run(["data", "convert", str(d), "--out", str(out)]) == 0
    assert "shifted" in capsys.readouterr().out
    original, converted = load_events(d), load_events(out)
    shift = converted[0].ts - original[0].ts
    assert converted[0].ts == TS_MIN_MS and shift > 0
    assert [(e.event_id, e.ts + shift) for e in original] == [(e.event_id, e.ts) for e in converted]
    for line in out.read_bytes().splitlines():
        assert isinstance(parse_event(line), Event)
    assert load_items(out) == load_items(d)  # items written next to it as ml.items.jsonl
    assert _run(["data", "convert", str(d), "--out", str(out), "--no-shift"]) == 1
    assert "contract" in capsys.readouterr().err
    # In-range data is written unchanged.
    m1 = make_1m(tmp_path / "m1")
    assert _run(["data", "convert", str(m1), "--out", str(tmp_path / "m1.jsonl")]) == 0
    assert load_events(tmp_path / "m1.jsonl") == load_events(m1)


def test_stats_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_latest(tmp_path / "l")
    assert _run(["data", "stats", str(d), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert {k: s[k] for k in ("events", "users", "items", "first_ts", "last_ts")} == {
        "events": 3, "users": 2, "items": 2, "first_ts": 964981247000, "last_ts": 964982703000,
    }  # fmt: skip
    assert _run(["data", "stats", str(tmp_path / "nope")]) == 1
    assert "no such file" in capsys.readouterr().err


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason=f"MovieLens-100K not found at {ML100K}")
def test_real_ml100k_stats(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["data", "stats", str(ML100K), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["events"], s["users"], s["items"], s["catalogue_items"]) == (100000, 943, 1682, 1682)
    assert s == stats_of(ML100K)
    ev = load_events(ML100K)
    assert all(a.ts <= b.ts for a, b in zip(ev, ev[1:], strict=False))
