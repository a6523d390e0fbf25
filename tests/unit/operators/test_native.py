"""`operators/_native.c` (the user state's codec and settle in C) returns what the Python fast paths return, or None
(then the Python path decides), and handles the usual states itself."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import state
from operators.state import UserState
from tests.unit.operators.test_fast_paths import T, _call, _operator_like, _random_state

native = state._native


def test_the_extension_is_built_and_used() -> None:
    """`make setup` (`pip install -e .`) builds it; without it every state would take the slower Python paths."""
    assert native is not None, "operators._native is not built: run `make setup` (needs a C compiler)"
    assert state.NATIVE is (os.environ.get("STREAMREC_NATIVE", "1") != "0")


needs_native = pytest.mark.skipif(native is None, reason="not built: test_the_extension_is_built_and_used fails")


def _states(seed: int, n: int) -> list[UserState]:
    """Random states (odd ones included) and operator-like successions of decoded states."""
    rng = random.Random(seed)
    out = [_random_state(rng) for _ in range(n)]
    s = UserState(first_ts=T, last_ts=T)
    for _ in range(n):
        s = _operator_like(rng, s)
        out.append(s.copy())
        b = _call(state._encode_np, s)
        d = _call(state._decode_np, b) if isinstance(b, bytes) else None
        s = d if isinstance(d, UserState) else UserState(first_ts=T, last_ts=T)
    return out


@needs_native
def test_encode_is_the_python_paths_bytes_or_none() -> None:
    handled = 0
    for s in _states(3, 1500):
        got = native.encode(s)
        if got is not None:
            handled += 1
            assert got == state._encode_fast(s) == state._encode_np(s)
    assert handled > 1500  # the usual states (about half of the random ones are odd on purpose)


@needs_native
def test_decode_is_the_python_paths_state_or_none() -> None:
    rng = random.Random(4)
    handled = 0
    for s in _states(5, 1500):
        b = _call(state._encode_np, s)
        if not isinstance(b, bytes):
            continue
        cases = [b]
        for _ in range(2):
            bad = bytearray(b)
            bad[rng.randrange(len(bad))] = rng.randrange(256)
            cases.append(bytes(bad))
        for c in cases:
            got = native.decode(UserState, c)
            if got is not None:
                handled += 1
                ref = state._decode_fast(c)
                assert type(got) is UserState and got == ref and repr(got) == repr(ref)
            else:  # deferred: the Python path decides (often raises), as the reference does
                assert repr(_call(state.decode, c)) == repr(_call(state._decode_np, c))
    assert handled > 2000


@needs_native
def test_settle_is_the_python_fast_path_or_leaves_the_state_alone() -> None:
    handled = 0
    for s in _states(6, 1500):
        a, b = s.copy(), s.copy()
        got = native.settle(a)
        if got is None:
            assert repr(a) == repr(s)  # untouched
            continue
        handled += 1
        assert got is True and state._settle_fast(b) is True
        assert repr(a) == repr(b)
        assert list(a.cats) == list(b.cats)  # the same order (heaviest first, ties in dict order)
    assert handled > 1200


_odd_value = st.sampled_from([True, 2**64, -1, 1.5, "x", None, 2**62 + 1])


@needs_native
@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(state._CONTAINERS + ("first_ts", "last_ts", "n_events", "surprise", "surprise_n",
                                                  "pending_event_id", "user_key", "key_id", "flagged_until")),
       value=_odd_value, seed=st.integers(0, 50))  # fmt: skip
def test_an_odd_field_defers_or_agrees(field: str, value: Any, seed: int) -> None:
    """A value of another type or out of its field's range, anywhere: C answers None, or what Python answers."""
    s = _states(seed, 3)[-1]
    cur = getattr(s, field)
    if isinstance(cur, list) and cur:
        cur[random.Random(seed).randrange(len(cur))] = value
    elif isinstance(cur, dict):
        cur[value] = 1.0 if seed % 2 else value
    else:
        setattr(s, field, value)
    enc = _call(native.encode, s)
    if enc is not None:
        assert enc == state._encode_fast(s)
    a, b = s.copy(), s.copy()
    if _call(native.settle, a) is True:
        assert state._settle_fast(b) is True and repr(a) == repr(b)
    else:
        assert repr(a) == repr(s)
    assert repr(_call(state.settle, s.copy())) == repr(_call(_reference_settle, s.copy()))


def _reference_settle(s: UserState) -> Any:
    return state.settle_via(s, state._settle_fast, state._encode_np, state._decode_np, state.StateError)


# ------------------------------------------------------------------ streaming CF (operators/cf.py)

_weights = st.dictionaries(st.integers(0, 2**32 - 1) | st.integers(0, 40),
                           st.sampled_from([0.0, -0.0, 0.5, 1.0, 1e-9, 3.25, 7.0, 1e39]) | st.floats(0, 10),
                           max_size=90)  # fmt: skip


def _python(f: Any, *args: Any) -> Any:
    """`f` with the C paths of operators/cf.py off (the reference)."""
    from operators import cf

    saved, cf._native = cf._native, None
    try:
        return _call(f, *args)
    finally:
        cf._native = saved


@needs_native
@settings(max_examples=400, deadline=None)
@given(weights=_weights)
def test_heaviest_first_is_the_python_sort(weights: dict[int, float]) -> None:
    from operators.cf import heaviest_first

    got = native.heaviest_first(weights)
    want = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))
    assert got == want and [repr(w) for _, w in got] == [repr(w) for _, w in want]  # -0.0 stays -0.0
    assert heaviest_first(weights) == want


@needs_native
def test_heaviest_first_defers_what_it_does_not_order() -> None:
    assert native.heaviest_first({1: float("nan"), 2: 1.0}) is None
    assert native.heaviest_first({1: 1, 2: 1.0}) is None  # an int weight
    assert native.heaviest_first({2**70: 1.0}) is None
    assert native.heaviest_first({}) == []


@needs_native
@settings(max_examples=300, deadline=None)
@given(add=_weights, succ=_weights, w=st.sampled_from([1.0, 0.8, 0.64 / 3, -0.0, 2]))
def test_cf_accumulate_is_the_python_loop(add: dict[int, float], succ: dict[int, float], w: float) -> None:
    want = dict(add)
    for j, x in succ.items():
        want[j] = want.get(j, 0.0) + w * x
    got = dict(add)
    native.cf_accumulate(got, succ, w)
    assert list(got.items()) == list(want.items()) and repr(got) == repr(want)  # same order, same bits


@needs_native
@settings(max_examples=300, deadline=None)
@given(preds=_weights, last=st.integers(-(2**63), 2**63 - 1), pub=st.integers(-(2**63), 2**63 - 1),
       dirty=st.booleans())  # fmt: skip
def test_cf_codec_is_the_python_codec(preds: dict[int, float], last: int, pub: int, dirty: bool) -> None:
    from operators import cf

    s = cf.CfState(last, pub if not dirty else max(pub, 0), preds, dirty)
    want = _python(cf.encode_cf, s)
    got = native.encode_cf(s.last_ts, -1 - s.published_ts if dirty else s.published_ts, s.preds)
    assert got is None or got == want
    assert _call(cf.encode_cf, s) == want
    if isinstance(want, bytes):
        assert native.decode_cf(want) is not None
        for b in (want, want[:-1], want + b"x", b"\x02" + want[1:]):
            assert repr(_call(cf.decode_cf, b)) == repr(_python(cf.decode_cf, b))


# ------------------------------------------------------------------ one event into a user state (UserOperator._update)


@needs_native
@pytest.mark.parametrize("sections", [{}, {"state": {"history_len": 5, "dedup_max_ids": 3, "top_categories": 2,
                                                      "dedup_window_ms": 50_000, "interest_half_life_ms": 7_000}},
                                      {"state": {"dedup_max_ids": 0, "top_categories": 0}}])  # fmt: skip
def test_update_is_the_python_update(make_op: Any, artifact: Any, sections: dict[str, Any]) -> None:
    """Events in order, late, at equal times, on known and unknown items, ratings, repeated ids, long quiet gaps:
    the C update leaves every state as the Python code does (same values, same dict order, same float bits)."""
    from operators import user
    from operators.schema import Event

    op = make_op(**sections)
    rng = random.Random(9)
    known = [artifact.item_id(i) for i in range(min(artifact.n_items, 40))]
    handled = 0
    for _run in range(60):
        b = UserState()
        t = T
        for _i in range(rng.randint(1, 40)):
            t += rng.choice([0, 1, 1000, 60_000, 10**8, -5000])
            etype = rng.choice(state.EVENT_TYPES)
            item = rng.choice(known) if rng.random() < 0.8 else f"unknown-{rng.randint(0, 5)}"
            e = Event(f"e{rng.randint(0, 30)}", "u", item, etype, t,
                      rating=rng.choice([1.0, 4.5, 3]) if etype == "rating" else None)  # fmt: skip
            h = state.id_hash(e.event_id)
            a = b.copy()
            a_cats, b_cats = a.cats, b.cats
            handled += native.update(a.copy(), e.ts, state.item_hash(e.item_id), state.type_code(etype), 0.0, h,
                                     None, 1.0, 1, 50, 1, 1, 1) is True  # usual values: C takes them
            op._update(a, e, h)  # in C (user._native is the module)
            saved, user._native = user._native, None
            try:
                op._update(b, e, h)
            finally:
                user._native = saved
            assert repr(a) == repr(b) and list(a.cats) == list(b.cats)
            assert (a.cats is a_cats) == (b.cats is b_cats)  # replaced, or changed in place, alike
    assert handled > 500


@needs_native
def test_update_defers_an_unusual_state_untouched() -> None:
    from operators.schema import Event

    e = Event("e1", "u", "i1", "view", T)
    for odd in ({"cats": {1: 1}}, {"ts": [T + 5], "items": [1], "types": [1], "ratings": [0.0], "n_events": True},
                {"dedup": [[1, T]]}, {"last_ts": 2**70}, {"cats": {1: float("nan")}}):  # fmt: skip
        s = UserState(**{"first_ts": T, "last_ts": T, **odd})  # type: ignore[arg-type]
        before = repr(s)
        assert native.update(s, e.ts, 1, 1, 0.0, 7, (1, 2), 1.0, 10, 50, 1000, 1000, 8) is None
        assert repr(s) == before


@needs_native
@pytest.mark.parametrize("cap", [1, 3, 20])
def test_apply_cf_keeps_the_successors_the_python_code_keeps(make_op: Any, artifact: Any, cap: int) -> None:
    """Published predecessor lists (repeated items, ties in weight, items outside the vocabulary, republished
    lists replacing earlier ones): the same successors, new-item successors and inverse index, in the same order."""
    from operators import user
    from operators.cf import CfUpdate

    a, b = make_op(cf={"max_neighbours": cap}), make_op(cf={"max_neighbours": cap})
    rng = random.Random(cap)
    ids = [artifact.item_id(i) for i in range(min(artifact.n_items, 12))] + [f"new-{k}" for k in range(4)]
    for n in range(300):
        preds = tuple((rng.randint(0, 15), rng.choice([1.0, 0.5, 0.25, rng.random()]))
                      for _ in range(rng.randint(0, 6)))  # fmt: skip
        upd = CfUpdate(rng.choice(ids), preds, T + n)
        assert a.apply_cf(upd)
        saved, user._native = user._native, None
        try:
            assert b.apply_cf(upd)
        finally:
            user._native = saved
        for name in ("cf_succ", "cf_new", "cf_in"):
            x, y = getattr(a, name), getattr(b, name)
            assert repr(x) == repr(y), name  # values and (nested) order
    most = max(len(v) for v in a.cf_succ.values())
    assert a.cf_new and (most == cap if cap <= 3 else most <= cap)  # evictions happened (small caps)


# ------------------------------------------------------------------ fraud features, CF's previous items


@needs_native
@settings(max_examples=400, deadline=None)
@given(gaps=st.lists(st.integers(0, 3000) | st.sampled_from([1000, 1000, 1001]), min_size=1, max_size=30),
       k=st.integers(1, 20), max_cv=st.sampled_from([0.05, 0.2, 0.5, 1e-9]), floor=st.sampled_from([0.3, 0.5, 0.9]))
def test_regularity_with_its_floor_is_the_numpy_detection(gaps: list[int], k: int, max_cv: float, floor: float) -> None:
    """C's quick answer (median exact, cv in plain order) only ever returns None where the exact path does, near
    the threshold too (regular gaps with one off by a little put the cv around max_cv)."""
    from dataclasses import replace

    from operators import fraud
    from operators.config import UserFraudConf

    ts = [T]
    for g in gaps:
        ts.append(ts[-1] + g)
    s = UserState(ts=ts)
    conf = replace(UserFraudConf(), regular_min_gaps=k, regular_max_cv=max_cv, regular_min_gap_ms=1,
                   regular_max_gap_ms=2500)  # fmt: skip
    full = fraud.regularity(s, conf)
    want = full if full is not None and full.score >= floor else None
    assert fraud.regularity(s, conf, floor) == want
    got = native.gap_stats(ts, k)
    if len(ts) < k + 1:
        assert got is None
    else:
        tf = [float(t) for t in ts[-(k + 1) :]]
        srt = sorted(b - a for a, b in zip(tf, tf[1:], strict=False))
        assert got[0] == (srt[k // 2] if k % 2 else (srt[k // 2 - 1] + srt[k // 2]) / 2)


@needs_native
@settings(max_examples=400, deadline=None)
@given(hist=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 400)), max_size=30), now=st.integers(0, 450),
       item=st.integers(0, 6), window=st.integers(0, 5), gap=st.integers(0, 300))  # fmt: skip
def test_prev_items_is_the_python_loop(hist: list[tuple[int, int]], now: int, item: int, window: int,
                                       gap: int) -> None:  # fmt: skip
    from operators import cf
    from operators.config import CfConf

    hist.sort(key=lambda e: e[1])
    items, ts = [h for h, _ in hist], [T + t for _, t in hist]
    conf = CfConf(window=window, max_gap_ms=gap)
    got = cf.prev_items(items, ts, T + now, item, conf)
    assert _python(cf.prev_items, items, ts, T + now, item, conf) == got
    assert native.prev_items(items, ts, T + now, item, window, gap) == got
