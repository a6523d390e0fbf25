"""State layout round trip and bounds, pseudonymisation, dead-letter records."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.dead_letter import dead_letter, operator_dead_letter
from operators.privacy import DEV_KEY_ID, Pseudonymizer, PseudonymKeyError
from operators.schema import Rejection, parse_event
from operators.state import VERSION, StateError, UserState, decode, encode

T = 1_704_067_200_000


def _state(n: int) -> UserState:
    return UserState(
        first_ts=T, last_ts=T + n * 1000, n_events=n,
        items=[i * 7919 % 2**32 for i in range(n)], ts=[T + i * 1000 for i in range(n)],
        types=[1 + i % 5 for i in range(n)], ratings=[(i % 11) / 2 if i % 5 == 4 else 0.0 for i in range(n)],
        cats={11: 2.5, 22: 0.75}, dedup=[(2**63 + i, T + i * 1000) for i in range(n)],
        flagged_until=T + 5, flag_last=[0, T, 0, T + 1], last_emit_ts=T + 3, pending_ts=T + 4,
        pending_event_id="ev-ü", surprise=-3.25, surprise_n=9, last_recs=[1, 2, 3],
        user_key="ab" * 32, key_id="k1",
    )  # fmt: skip


def test_round_trip_is_exact() -> None:
    s = _state(50)
    b = encode(s)
    assert b[0] == VERSION
    assert decode(b) == s
    assert encode(decode(b)) == b


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60),
    gaps=st.lists(st.integers(0, 10**8), min_size=60, max_size=60),
    types=st.lists(st.integers(1, 5), min_size=60, max_size=60),
    halves=st.lists(st.integers(0, 10), min_size=60, max_size=60),
    pend=st.text(max_size=30),
)
def test_round_trip_property(n: int, gaps: list[int], types: list[int], halves: list[int], pend: str) -> None:
    ts, t = [], T
    for g in gaps[:n]:
        t += g
        ts.append(t)
    s = UserState(first_ts=T, last_ts=ts[-1] if ts else T, n_events=n, items=list(range(n)), ts=ts,
                  types=types[:n], ratings=[h / 2 for h in halves[:n]], pending_event_id=pend.replace("\ud800", ""),
                  dedup=[(i, x) for i, x in enumerate(ts)])  # fmt: skip
    try:
        s.pending_event_id.encode("utf-8")
    except UnicodeEncodeError:
        return
    assert decode(encode(s)) == s


def test_typical_state_is_under_a_kib_and_dedup_is_bounded() -> None:
    s = _state(50)
    s.dedup = s.dedup[:20]  # a typical user: a few dozen events a day
    assert len(encode(s)) <= 1024
    s.dedup = [(i, T) for i in range(5000)]
    assert len(encode(s)) > 1024  # the cap lives in the operator (dedup_max_ids), measured in its test


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],  # truncated
        lambda b: b + b"x",  # trailing garbage
        lambda b: bytes([VERSION + 1]) + b[1:],  # a future layout
        lambda b: b"",
    ],
)
def test_corrupt_state_is_a_state_error(mutate: object) -> None:
    with pytest.raises(StateError):
        decode(mutate(encode(_state(5))))  # type: ignore[operator]


def test_pseudonym_is_keyed_and_stable() -> None:
    a = Pseudonymizer(b"k" * 16, "a")
    b = Pseudonymizer(b"j" * 16, "b")
    assert a.pseudonym("u1") == Pseudonymizer(b"k" * 16, "a").pseudonym("u1")
    assert a.pseudonym("u1") != b.pseudonym("u1")
    assert a.pseudonym("u1") != a.pseudonym("u2")
    assert len(a.pseudonym("u1")) == 64 and "u1" not in a.pseudonym("u1")
    assert "k" * 16 not in repr(a)


def test_from_env_requires_a_key_unless_dev_allowed() -> None:
    with pytest.raises(PseudonymKeyError, match="STREAMREC_PSEUDONYM_KEY"):
        Pseudonymizer.from_env(env={})
    assert Pseudonymizer.from_env(allow_dev_key=True, env={}).key_id == DEV_KEY_ID
    with pytest.raises(PseudonymKeyError, match="KEY_ID"):
        Pseudonymizer.from_env(env={"STREAMREC_PSEUDONYM_KEY": "00" * 32})
    p = Pseudonymizer.from_env(env={"STREAMREC_PSEUDONYM_KEY": "00" * 32, "STREAMREC_PSEUDONYM_KEY_ID": "k7"})
    assert p.key_id == "k7" and p.pseudonym("x") == Pseudonymizer(bytes(32), "k7").pseudonym("x")
    with pytest.raises(PseudonymKeyError):
        Pseudonymizer(b"short", "k")


def test_dead_letter_record() -> None:
    rej = parse_event(b'{"event_id": 1}' + b" " * 5000)
    assert isinstance(rej, Rejection)
    d = dead_letter(rej, "events", offset=3)
    assert d["kind"] == "dead_letter" and d["reason"] == "bad_type" and d["raw_truncated"] is True
    assert len(d["raw"]) <= 1024 and d["source"] == "events"
    assert d["id"] == dead_letter(rej, "events", offset=3)["id"] != dead_letter(rej, "events", offset=4)["id"]
    o = operator_dead_letter("operator_bad_input", "why", "user_operator", object())
    assert o["reason"] == "operator_bad_input" and o["raw_encoding"] == "repr"
