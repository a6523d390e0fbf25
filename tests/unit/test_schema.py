"""The event contract validator: every reason code, round trips, and "never raises" under fuzzing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import operators.schema as schema
from operators.schema import (
    MAX_MESSAGE_BYTES,
    RAW_KEEP_BYTES,
    TS_MAX_MS,
    TS_MIN_MS,
    Event,
    ItemMeta,
    Reason,
    Rejection,
    parse_event,
    parse_item,
)

GOOD: dict[str, Any] = {
    "event_id": "e-1",
    "user_id": "u-1",
    "item_id": "i-1",
    "event_type": "click",
    "ts": 1_700_000_000_000,
}
GOOD_ITEM: dict[str, Any] = {
    "item_id": "i-1",
    "title": "Toy Story (1995)",
    "categories": ["Animation", "Comedy"],
}


def enc(d: Any) -> bytes:
    return json.dumps(d, ensure_ascii=False).encode("utf-8")


def ev(**kw: Any) -> dict[str, Any]:
    d = dict(GOOD)
    for k, v in kw.items():
        if v is _DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return d


_DROP = object()


def test_valid_event_round_trips() -> None:
    d = ev(event_type="rating", rating=4.5, session_id="s-9", context={"device": "ios", "n": [1, 2.5, None]})
    e = parse_event(enc(d))
    assert isinstance(e, Event)
    assert (e.rating, e.session_id, e.context) == (4.5, "s-9", {"device": "ios", "n": [1, 2.5, None]})
    assert parse_event(e.to_json()) == e
    assert parse_event(e.to_json().encode()) == e
    assert json.loads(e.to_json()) == {**d, "rating": 4.5}


def test_str_and_bytes_agree_and_nulls_mean_absent() -> None:
    d = ev(session_id=None, context=None, rating=None)
    a, b = parse_event(enc(d)), parse_event(json.dumps(d))
    assert isinstance(a, Event) and a == b
    assert a.session_id is None and a.context is None and a.rating is None
    assert "session_id" not in a.to_dict() and "rating" not in a.to_dict()


def test_boundaries_accepted() -> None:
    for d in (
        ev(ts=TS_MIN_MS),
        ev(ts=TS_MAX_MS - 1),
        ev(event_type="rating", rating=0.5),
        ev(event_type="rating", rating=5),
        ev(user_id="x" * 256),
        ev(user_id="ü 名前"),  # printable non-ASCII and a plain space are fine
    ):
        assert isinstance(parse_event(enc(d)), Event), d
    for t in schema.EVENT_TYPES:
        extra = {"rating": 3.0} if t == "rating" else {}
        assert isinstance(parse_event(enc(ev(event_type=t, **extra))), Event)


# (payload, expected reason, expected field) — one or more cases for every event reason code.
EVENT_CASES: list[tuple[Any, Reason, str | None]] = [
    (12345, Reason.BAD_PAYLOAD_TYPE, None),
    (None, Reason.BAD_PAYLOAD_TYPE, None),
    (enc(ev(context={"pad": "x" * MAX_MESSAGE_BYTES})), Reason.TOO_LARGE, None),
    (
        json.dumps(ev(context={"pad": "é" * (MAX_MESSAGE_BYTES // 2)})),
        Reason.TOO_LARGE,
        None,
    ),  # bytes, not chars
    (b'{"event_id":"\xff"}', Reason.NOT_UTF8, None),
    (b"\xef\xbb\xbf" + enc(GOOD)[:-1] + b"\xc3", Reason.NOT_UTF8, None),
    ('{"user_id":"\udc80"}', Reason.NOT_UTF8, None),  # str with a lone surrogate cannot be UTF-8
    (b"", Reason.NOT_JSON, None),
    (b'{"event_id": "e"', Reason.NOT_JSON, None),
    (b'{"ts": NaN}', Reason.NOT_JSON, None),
    (b'{"ts": Infinity}', Reason.NOT_JSON, None),
    (b'{"rating": 1e999}', Reason.NOT_JSON, None),
    (b"[" * 5000 + b"]" * 5000, Reason.NOT_JSON, None),
    (b"\xef\xbb\xbf" + enc(GOOD), Reason.NOT_JSON, None),  # a BOM is not JSON
    (b"[1, 2]", Reason.NOT_OBJECT, None),
    (b'"event"', Reason.NOT_OBJECT, None),
    (b"null", Reason.NOT_OBJECT, None),
    (enc(GOOD)[:-1] + b',"ts":1700000000001}', Reason.DUPLICATE_FIELD, "ts"),
    (enc(ev(event_id=_DROP)), Reason.MISSING_FIELD, "event_id"),
    (enc(ev(user_id=None)), Reason.MISSING_FIELD, "user_id"),
    (enc(ev(item_id=_DROP)), Reason.MISSING_FIELD, "item_id"),
    (enc(ev(event_type=_DROP)), Reason.MISSING_FIELD, "event_type"),
    (enc(ev(ts=_DROP)), Reason.MISSING_FIELD, "ts"),
    (enc(ev(event_type="rating")), Reason.MISSING_FIELD, "rating"),
    (enc(ev(event_id=17)), Reason.BAD_TYPE, "event_id"),
    (enc(ev(event_type=["click"])), Reason.BAD_TYPE, "event_type"),
    (enc(ev(ts="1700000000000")), Reason.BAD_TYPE, "ts"),
    (enc(ev(ts=1.7e12)), Reason.BAD_TYPE, "ts"),
    (enc(ev(ts=True)), Reason.BAD_TYPE, "ts"),
    (enc(ev(event_type="rating", rating="5")), Reason.BAD_TYPE, "rating"),
    (enc(ev(event_type="rating", rating=True)), Reason.BAD_TYPE, "rating"),
    (enc(ev(session_id=5)), Reason.BAD_TYPE, "session_id"),
    (enc(ev(context=[1])), Reason.BAD_TYPE, "context"),
    (enc(ev(user_id="")), Reason.BAD_ID, "user_id"),
    (enc(ev(item_id="x" * 257)), Reason.BAD_ID, "item_id"),
    (enc(ev(event_id="a\nb")), Reason.BAD_ID, "event_id"),
    (enc(ev(user_id="bell\u0007")), Reason.BAD_ID, "user_id"),
    (enc(ev(user_id="zero\u200bwidth")), Reason.BAD_ID, "user_id"),
    (enc(ev(session_id="")), Reason.BAD_ID, "session_id"),
    (enc(ev(event_type="like")), Reason.BAD_EVENT_TYPE, "event_type"),
    (enc(ev(event_type="Click")), Reason.BAD_EVENT_TYPE, "event_type"),
    (enc(ev(ts=TS_MIN_MS - 1)), Reason.TS_OUT_OF_RANGE, "ts"),
    (enc(ev(ts=TS_MAX_MS)), Reason.TS_OUT_OF_RANGE, "ts"),
    (enc(ev(ts=1_700_000_000)), Reason.TS_OUT_OF_RANGE, "ts"),  # seconds, not ms
    (enc(ev(ts=-(10**30))), Reason.TS_OUT_OF_RANGE, "ts"),
    (enc(ev(event_type="rating", rating=0.49)), Reason.BAD_RATING, "rating"),
    (enc(ev(event_type="rating", rating=5.01)), Reason.BAD_RATING, "rating"),
    (enc(ev(event_type="rating", rating=0)), Reason.BAD_RATING, "rating"),
    (enc(ev(event_type="rating", rating=10**400)), Reason.BAD_RATING, "rating"),
    (enc(ev(event_type="click", rating=4.0)), Reason.UNEXPECTED_RATING, "rating"),
    (
        b'{"event_id":"e","user_id":"u","item_id":"i","event_type":"view","ts":1700000000000,"context":{"x":"\\ud800"}}',
        Reason.BAD_CONTEXT,
        "context",
    ),  # fmt: skip
    (enc(ev(timestamp=1)), Reason.UNKNOWN_FIELD, "timestamp"),
    (enc(ev(**{"\u0000weird": 1})), Reason.UNKNOWN_FIELD, "'\\x00weird'"),
]


@pytest.mark.parametrize(("payload", "reason", "field"), EVENT_CASES)
def test_event_rejections(payload: Any, reason: Reason, field: str | None) -> None:
    r = parse_event(payload)
    assert isinstance(r, Rejection), r
    assert (r.reason, r.field) == (reason, field), r.message
    assert r.message
    json.loads(r.to_json())  # a dead-letter record is always valid JSON


ITEM_CASES: list[tuple[Any, Reason, str | None]] = [
    (enc({**GOOD_ITEM, "title": ""}), Reason.BAD_TITLE, "title"),
    (enc({**GOOD_ITEM, "title": "x" * 1025}), Reason.BAD_TITLE, "title"),
    (enc({**GOOD_ITEM, "title": "tab\there"}), Reason.BAD_TITLE, "title"),
    (enc({**GOOD_ITEM, "categories": "Comedy"}), Reason.BAD_TYPE, "categories"),
    (enc({**GOOD_ITEM, "categories": ["ok", 3]}), Reason.BAD_CATEGORIES, "categories"),
    (enc({**GOOD_ITEM, "categories": [""]}), Reason.BAD_CATEGORIES, "categories"),
    (enc({**GOOD_ITEM, "categories": ["c"] * 65}), Reason.BAD_CATEGORIES, "categories"),
    (enc({**GOOD_ITEM, "text": "line\u0000"}), Reason.BAD_TEXT, "text"),
    (enc({**GOOD_ITEM, "text": 5}), Reason.BAD_TYPE, "text"),
    (enc({k: v for k, v in GOOD_ITEM.items() if k != "categories"}), Reason.MISSING_FIELD, "categories"),
    (enc({**GOOD_ITEM, "item_id": ""}), Reason.BAD_ID, "item_id"),
    (enc({**GOOD_ITEM, "genres": []}), Reason.UNKNOWN_FIELD, "genres"),
    (b"\x80", Reason.NOT_UTF8, None),
]


@pytest.mark.parametrize(("payload", "reason", "field"), ITEM_CASES)
def test_item_rejections(payload: Any, reason: Reason, field: str | None) -> None:
    r = parse_item(payload)
    assert isinstance(r, Rejection), r
    assert (r.reason, r.field) == (reason, field), r.message


def test_valid_item_round_trips() -> None:
    it = parse_item(enc({**GOOD_ITEM, "text": "Two lines\nand a\ttab.", "categories": []}))
    assert isinstance(it, ItemMeta) and it.categories == () and it.text == "Two lines\nand a\ttab."
    assert parse_item(it.to_json()) == it


def test_every_reason_is_exercised_and_documented() -> None:
    from tests.unit.operators.test_control import CONTROL_CASES

    covered = {r for _, r, _ in EVENT_CASES} | {r for _, r, _ in ITEM_CASES} | {r for _, r in CONTROL_CASES}
    assert set(Reason) - covered == {Reason.INTERNAL_ERROR}
    doc = schema.__doc__ or ""
    for r in Reason:
        assert f"\n{r.value} " in doc, f"reason {r.value} missing from the module docstring table"


def test_raw_preview_is_truncated_and_safe() -> None:
    big = enc(ev(event_type="nope", context={"pad": "€" * 2000}))  # multi-byte chars straddle the cut
    r = parse_event(big)
    assert isinstance(r, Rejection) and r.reason == Reason.BAD_EVENT_TYPE
    assert r.raw_encoding == "utf-8" and r.raw_truncated and r.raw_size == len(big)
    assert big.startswith(r.raw.encode()) and RAW_KEEP_BYTES - 3 <= len(r.raw.encode()) <= RAW_KEEP_BYTES
    r2 = parse_event(b"\xff\xfe" + b"x" * 3000)
    assert isinstance(r2, Rejection) and r2.raw_encoding == "base64" and r2.raw_truncated
    assert base64.b64decode(r2.raw) == (b"\xff\xfe" + b"x" * 3000)[:RAW_KEEP_BYTES]
    r3 = parse_event(b"x" * (MAX_MESSAGE_BYTES + 1))
    assert isinstance(r3, Rejection) and r3.reason == Reason.TOO_LARGE and len(r3.raw) == RAW_KEEP_BYTES


def test_internal_errors_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_d: Any) -> Event:
        raise KeyError("bug")

    monkeypatch.setattr(schema, "_validate_event", boom)
    r = parse_event(enc(GOOD))
    assert isinstance(r, Rejection) and r.reason == Reason.INTERNAL_ERROR and "KeyError" in r.message


# ---- fuzzing: never raise, never an internal error ----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
ids = st.text(max_size=8) | st.integers() | st.none()
near_events = st.fixed_dictionaries(
    {},
    optional={
        "event_id": ids,
        "user_id": ids,
        "item_id": ids,
        "event_type": st.sampled_from([*schema.EVENT_TYPES, "x", ""]) | json_values,
        "ts": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
        "rating": st.floats(allow_nan=False, allow_infinity=False) | st.integers() | json_values,
        "session_id": ids,
        "context": st.dictionaries(st.text(max_size=4), json_values, max_size=3) | json_values,
        "extra": json_values,
    },
)


def _ok(r: object) -> None:
    assert isinstance(r, Event | ItemMeta | Rejection)
    if isinstance(r, Rejection):
        assert r.reason != Reason.INTERNAL_ERROR, r.message
        json.loads(r.to_json())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    _ok(parse_event(raw))
    _ok(parse_item(raw))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(json_values)
def test_arbitrary_json_never_raises(value: Any) -> None:
    raw = json.dumps(value)
    _ok(parse_event(raw))
    _ok(parse_event(raw.encode()))
    _ok(parse_item(raw))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(near_events)
def test_near_valid_events_never_raise_and_valid_ones_round_trip(d: dict[str, Any]) -> None:
    r = parse_event(json.dumps(d))
    _ok(r)
    if isinstance(r, Event):
        assert parse_event(r.to_json()) == r


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(s: str) -> None:
    _ok(parse_event(s))
    _ok(parse_item(s))


@settings(max_examples=400, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "ts", "item_id"]), st.integers()), max_size=8))
def test_pairs_hook_is_the_key_by_key_loop(pairs: list[tuple[str, int]]) -> None:
    """The JSON object hook: the values, key order and first repeated key of assigning the pairs one by one."""
    from operators.schema import _pairs_hook

    want: dict[str, int] = {}
    dup = None
    for k, v in pairs:
        if k in want and dup is None:
            dup = k
        want[k] = v
    got = _pairs_hook(pairs)
    assert list(got.items()) == list(want.items()) and got.dup == dup
