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


# ------------------------------------------------------------------ ids' hashes, the per-list phase


@needs_native
def test_id_hash_is_blake2b_of_the_id() -> None:
    """Every length around the 128-byte blocks, both digest sizes; what C does not take (non-ASCII, another size,
    not a str) is None, and `item_hash` / `id_hash` then give Python's value."""
    import hashlib
    import string

    rng = random.Random(11)
    for n in [*range(0, 300), 1000, 4099]:
        text = "".join(rng.choice(string.printable) for _ in range(n))
        for size in (4, 8):
            want = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=size).digest(), "little")
            assert native.id_hash(text, size) == want == state.blake2b_int(text, size)
    for odd in ("é", "a\udc80", "日本"):
        assert native.id_hash(odd, 4) is None and native.id_hash(odd, 8) is None
        assert state.item_hash(odd) == state.blake2b_int(odd, 4) and state.id_hash(odd) == state.blake2b_int(odd, 8)
    assert native.id_hash("a", 5) is None and native.id_hash(b"a", 4) is None and native.id_hash("a", True) is None
    assert state.item_hash("item-1") == state.blake2b_int("item-1", 4)


@needs_native
@pytest.mark.parametrize("cap", [2, 20])
def test_cf_scores_are_the_python_scores(make_op: Any, artifact: Any, cap: int) -> None:
    """The stream CF successors of random histories (repeated items, items with and without successors, items the
    lists would exclude) after random publications: the same pairs, order and float bits from C and Python, for
    both pools and several decays."""
    from operators import user
    from operators.cf import CfUpdate

    op = make_op(cf={"max_neighbours": cap}, recs={"knn_recent": 4})
    rng = random.Random(cap)
    ids = [artifact.item_id(i) for i in range(min(artifact.n_items, 30))] + [f"new-{k}" for k in range(6)]
    for n in range(200):
        preds = tuple((rng.randint(0, 15), rng.choice([1.0, 0.5, 0.25, 0.0, rng.random()]))
                      for _ in range(rng.randint(0, 6)))  # fmt: skip
        op.apply_cf(CfUpdate(rng.choice(ids), preds, T + n))
    pool_hashes = list(range(16)) + op.index_hash[:40] + [2**32 - 1]
    handled = 0
    for _ in range(400):
        items = [rng.choice(pool_hashes) for _ in range(rng.randint(0, 30))]
        s = UserState(items=items)
        for new_only in (False, True):
            for decay in (0.8, 0.5, 1.0):
                got = op._cf_scores(s, decay, new_only)
                saved, user._native = user._native, None
                try:
                    want = op._cf_scores(s, decay, new_only)
                finally:
                    user._native = saved
                assert repr(got) == repr(want)
                handled += bool(want)
                c = native.cf_scores(items, op.cf_new if new_only else op.cf_succ, op.cf_succ, op.conf.cf.weight,
                                     decay, 4, op.index_hash)  # fmt: skip
                assert c is not None  # the usual inputs: C decides
    assert handled > 300


@needs_native
def test_cf_scores_defers_what_it_does_not_take() -> None:
    succ = {1: {5: 1.0, 6: 0.5}}
    assert native.cf_scores([1], succ, succ, 1.0, 0.8, 3, list(range(10))) == {5: 1.0, 6: 0.5}
    assert native.cf_scores([1], succ, succ, 1.0, 0.8, 3, list(range(6))) is None  # index 6 outside index_hash
    assert native.cf_scores([1.0], succ, succ, 1.0, 0.8, 3, list(range(10))) is None  # a float item
    assert native.cf_scores([1], {1: {5: 1}}, {1: {5: 1}}, 1.0, 0.8, 3, list(range(10))) is None  # an int weight
    assert native.cf_scores([1], {1: {5: 1.0}}, {}, 1.0, 0.8, 3, list(range(10))) is None  # Python: KeyError
    assert native.cf_scores([1], succ, succ, 1, 0.8, 3, list(range(10))) is None  # an int cf.weight
    assert native.cf_scores([1], succ, succ, 1.0, 0.8, 3, [0, 0, 0, 0, 0, 1, 2]) == {6: 0.5}  # 5's hash is 1
    zero = {1: {5: 0.0, 6: -0.0}}  # the heaviest weighs 0: `or 1.0` scales by 1
    assert repr(native.cf_scores([1], zero, zero, 1.0, 0.8, 3, list(range(10)))) == repr({5: 0.0, 6: 0.0})


def _round_cases(rng: random.Random) -> list[float]:
    import struct

    xs = [0.0, -0.0, 1e-9, -1e-9, 5e-7, -5e-7, 2.5e-6, 1.5e-6, 1e300, -1e300, 4503599627.370496, 4503599627.370497,
          float("inf"), float("-inf"), float("nan"), 5e-324, 123456.7890125]  # fmt: skip
    xs += [k / 128 for k in range(-3000, 3000)]  # exact ties at the 7th decimal (odd k)
    xs += [k / 2**20 for k in range(-3000, 3000)]
    for _ in range(30_000):
        m = rng.choice([1e-8, 1e-4, 1.0, 10.0, 1000.0, 1e6, 1e9])
        xs.append(rng.uniform(-m, m))
        xs.append(round(rng.uniform(-m, m), 7) + rng.choice([0.0, 5e-7, -5e-7]))  # near ties
        xs.append(struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0])  # any bits
    return xs


@needs_native
def test_list_fields_are_the_python_fields(make_op: Any) -> None:
    """Ids, hashes, rounded scores (every float's bits: round(x, 6) is computed in C where it can be told without
    Python, exact ties at the 7th decimal and any bit pattern included) and sources, as `_list_fields` in Python."""
    import struct

    from operators import user

    op = make_op()
    rng = random.Random(12)
    xs = _round_cases(rng)
    n = len(op.item_ids)
    for start in range(0, len(xs), 50):
        rel = xs[start : start + 50]
        cand = [rng.randrange(n) for _ in rel]  # repeats: the last one's relevance counts
        chosen = rng.sample(cand, min(10, len(cand)))
        src = {c: rng.choice(["model", "cf", "content", "popular"]) for c in cand}
        got = native.list_fields(chosen, cand, rel, src, op.item_ids, op.index_hash)
        assert got is not None
        saved, user._native = user._native, None
        try:
            want = op._list_fields(chosen, cand, rel, src)
        finally:
            user._native = saved
        assert got[0] == want[0] and got[1] == want[1] and got[3] == want[3]
        assert [struct.pack("<d", x) for x in got[2]] == [struct.pack("<d", x) for x in want[2]]  # every bit


@needs_native
def test_list_fields_defers_what_it_does_not_take(make_op: Any) -> None:
    import numpy as np

    op = make_op()
    ids, hs = op.item_ids, op.index_hash
    assert native.list_fields([0], [0], [0.5], {0: "model"}, ids, hs) == ([ids[0]], [hs[0]], [0.5], ["model"])
    for chosen, cand, rel, src in (([len(ids)], [len(ids)], [0.5], {len(ids): "cf"}),  # outside item_ids
                                   ([0], [0], [np.float64(0.5)], {0: "model"}),  # not an exact float
                                   ([0], [1], [0.5], {0: "model"}),  # Python: KeyError
                                   ([0], [0], [0.5], {}),  # no source: KeyError
                                   ([0], [0, 1], [0.5], {0: "model"})):  # zip(strict=True) raises
        assert native.list_fields(chosen, cand, rel, src, ids, hs) is None


def _outcome(f: Any, *args: Any) -> Any:
    try:
        return f(*args)
    except Exception as e:  # noqa: BLE001 - compared, not hidden
        return "raised", type(e), str(e)


@needs_native
@pytest.mark.parametrize("conf", [{},
                                  {"max_neighbours": 3, "window": 2, "half_life_ms": 1000, "publish_interval_ms": 0},
                                  {"max_neighbours": 1, "window": 5, "half_life_ms": 1, "publish_interval_ms": 50},
                                  {"max_neighbours": 0, "window": 0},
                                  {"max_neighbours": 200, "window": 3}])  # fmt: skip
def test_cf_step_is_the_python_step(conf: dict[str, Any]) -> None:
    """Events of a few items in and out of time order (late, equal times, gaps of every size), prev lists with
    repeats, the item itself, non-ints, bools and hashes outside 32 bits, states cut short or of another version:
    each step's bytes and publication are Python's, and the usual steps are C's."""
    from dataclasses import replace

    from operators import cf
    from operators.config import CfConf

    op = cf.CfOperator(replace(CfConf(), **conf))
    wide = cf.CfOperator(replace(CfConf(), max_neighbours=40, window=8))  # states a bigger max_neighbours left
    rng = random.Random(len(conf) * 7 + conf.get("window", 3))
    states: dict[str, bytes | None] = {}
    handled = 0
    t = 0  # event times at 0 too (a state's last_ts 0 means "never decayed")
    for i in range(3000):
        item = f"i{rng.randint(0, 6)}"
        t = T if i == 1500 else t + rng.choice([0, 0, 1, 500, 10_000, 10**7, -3000, -(10**6)])
        if rng.random() < 0.03:
            many = {"item_id": item, "ts": t, "prev": [rng.randint(0, 60) for _ in range(8)]}
            states[item] = wide.step(states.get(item), many)[0]
        hashes = [1, 2, 3, 4, 5, 2**32 - 1, state.item_hash(item)]
        prev: list[Any] = [rng.choice(hashes) for _ in range(rng.randint(0, 6))]
        if rng.random() < 0.05:
            prev.insert(rng.randrange(len(prev) + 1), rng.choice(["7", 3.0, None, True, -1, 2**32, 2**70]))
        ev = {"item_id": item, "ts": t, "prev": prev}
        st = states.get(item)
        if rng.random() < 0.02:
            st = rng.choice([b"", b"\x02" + bytes(18), (st or bytes(19))[:-1], bytearray(st or b"")])
        got, want = _outcome(op.step, st, ev), None
        saved, cf._native = cf._native, None
        try:
            want = _outcome(op.step, st, ev)
        finally:
            cf._native = saved
        assert got == want, i  # a value or the same exception (a hash outside 32 bits cannot be stored)
        if got[0] == "raised":
            continue
        c = op.conf
        handled += native.cf_step(st, t, prev, state.item_hash(item), c.window, c.max_neighbours,
                                  max(c.half_life_ms, 1), c.publish_interval_ms) is not None  # fmt: skip
        states[item] = got[0] if isinstance(got[0], bytes) else None
    assert handled > 2500
