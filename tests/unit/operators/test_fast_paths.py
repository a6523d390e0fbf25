"""The fast paths (state codec, MMR, regularity, batch-1 scoring, the fast graph) compute exactly what the reference
code does."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import fraud, item, state
from operators.cf import heaviest_first
from operators.config import UserFraudConf
from operators.item import ItemState
from operators.recs import _flatten, mmr, normalise_rows
from operators.scorer import ScoreRequest
from operators.state import UserState

T = 1_704_067_200_000


def _mmr_reference(
    candidates: list[int], relevance: list[float], unit_emb: np.ndarray, k: int, lam: float
) -> list[int]:
    """`operators.recs.mmr` as it was before the fast path (the definition of the expected output)."""
    cand = np.asarray(candidates, dtype=np.int64)
    if len(cand) == 0 or k <= 0:
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    finite = np.isfinite(rel)
    cand, rel = cand[finite], rel[finite]
    if len(cand) == 0:
        return []
    span = rel.max() - rel.min()
    rel = (rel - rel.min()) / span if span > 0 else np.ones_like(rel)
    if lam >= 1.0:
        return [int(x) for x in cand[np.argsort(-rel, kind="stable")][:k]]
    v = unit_emb[cand]
    max_sim = np.full(len(cand), -np.inf)
    chosen = np.zeros(len(cand), dtype=bool)
    out: list[int] = []
    for _ in range(min(k, len(cand))):
        red = np.where(np.isfinite(max_sim), max_sim, 0.0)
        val = lam * rel - (1.0 - lam) * red
        val[chosen] = -np.inf
        j = int(np.argmax(val))
        chosen[j] = True
        out.append(int(cand[j]))
        max_sim = np.maximum(max_sim, v @ v[j])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_mmr_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    emb[:20] = emb[20:40]  # duplicate items: exact similarity ties
    if seed == 5:
        emb[7] = np.nan  # non-finite embeddings take the plain loop
        emb[8, 0] = np.inf
    unit = normalise_rows(emb) if seed % 2 == 0 else emb
    for _ in range(200):
        n = int(rng.integers(0, 60))
        cand = rng.choice(300, size=n, replace=False).tolist()
        rel = rng.normal(size=n).round(int(rng.integers(0, 3))).tolist()  # rounding makes relevance ties
        if n and rng.random() < 0.3:
            rel[int(rng.integers(0, n))] = -math.inf
        for lam in (0.0, 0.5, 0.9, 1.0):
            k = int(rng.integers(0, 15))
            assert mmr(cand, rel, unit, k, lam) == _mmr_reference(cand, rel, unit, k, lam)


def _random_state(rng: random.Random) -> UserState:
    n = rng.randint(0, 60)
    last = rng.choice([T + rng.randint(0, 10**10), rng.randint(-(2**63), 2**63 - 1), 0])
    ts = [last - rng.choice([0, rng.randint(0, 2**33), rng.randint(-1000, 1000)]) for _ in range(n)]
    n_dedup = rng.choice([0, rng.randint(0, 30), rng.randint(190, 400)])
    return UserState(
        first_ts=T, last_ts=last, n_events=rng.randint(0, 2**33), items=[rng.randint(0, 2**32 - 1) for _ in range(n)],
        ts=ts, types=[rng.randint(1, 5) for _ in range(n)],
        ratings=[rng.choice([0.0, rng.randint(0, 20) / 2, rng.uniform(-3, 10), 2.25, 0.25]) for _ in range(n)],
        cats={rng.randint(0, 2**32 - 1): rng.choice([rng.uniform(0, 10), 10 ** rng.uniform(-9, 5), 65519.0, 7e4])
              for _ in range(rng.randint(0, 10))},
        dedup=[(rng.randint(0, 2**64 - 1), last - rng.randint(-10, 2**33)) for _ in range(n_dedup)],
        flag_last=[rng.randint(0, 2**40) for _ in range(4)], last_emit_ts=T, surprise=rng.uniform(-20, 0),
        surprise_n=rng.randint(0, 70000), last_recs=[rng.randint(0, 2**32 - 1) for _ in range(rng.randint(0, 12))],
        pending_event_id=rng.choice(["", "e1", "é" * 5]), user_key="ab" * 32, key_id="k1",
    )  # fmt: skip


def _call(f: Any, *a: Any) -> Any:
    try:
        return f(*a)
    except Exception as e:  # noqa: BLE001 - the two paths must fail alike too
        return type(e)


def test_state_codec_fast_path_matches_numpy_path() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        s = _random_state(rng)
        b = _call(state._encode_np, s)
        assert _call(state.encode, s) == b
        if isinstance(b, bytes):
            assert repr(_call(state.decode, b)) == repr(_call(state._decode_np, b))
            bad = bytearray(b)
            for _ in range(3):
                bad[rng.randrange(len(bad))] = rng.randrange(256)
            assert repr(_call(state.decode, bytes(bad))) == repr(_call(state._decode_np, bytes(bad)))


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=120), counts=st.tuples(*[st.integers(0, 5)] * 7), last=st.integers(-(2**63), 2**63 - 1))
def test_state_decode_fast_path_matches_numpy_path_on_garbage(body: bytes, counts: tuple[int, ...], last: int) -> None:
    head = state._HEADER.pack(1, 0, T, last, 3, 0, 0, 0, -1.0, 0, 0, 0, 0, 0)
    need = 9 * counts[0] + 6 * counts[1] + 12 * counts[2] + 4 * counts[3] + sum(counts[4:])
    b = head + state._COUNTS.pack(*counts) + (body * (need // max(len(body), 1) + 1))[:need] if body else b""
    assert repr(_call(state.decode, b)) == repr(_call(state._decode_np, b))


def _through_bytes(s: Any) -> Any:
    """What the next event reads once `s` is stored: the decoded bytes, or the bytes when they do not decode."""
    b = state.encode(s)
    try:
        return state.decode(b)
    except state.StateError:
        return b


def _operator_like(rng: random.Random, s: UserState) -> UserState:
    """A decoded state after what an event does to it: later time, an entry more, weights decayed and added, a new
    surprise (f64), flags; now and then what the layout rounds or cuts (an old time, a rating off the half steps,
    a long or non-ASCII string)."""
    ts = s.last_ts + rng.choice([0, rng.randint(1, 10**7), -rng.randint(1, 10**6)])
    if rng.random() < 0.05:
        ts = s.last_ts - 2**33  # older than a u32 age can say
    s.last_ts = max(s.last_ts, ts)
    s.n_events += 1
    s.items.append(rng.randint(0, 2**32 - 1))
    s.ts.append(ts)
    s.types.append(rng.randint(1, 5))
    s.ratings.append(rng.choice([0.0, 4.5, 5.0, 3.7 if rng.random() < 0.05 else 1.0]))
    s.cats = {k: w * rng.uniform(0.5, 1.0) for k, w in s.cats.items()}
    s.cats[rng.randint(0, 2**32 - 1)] = rng.uniform(0, 10)
    s.dedup.append((rng.randint(0, 2**64 - 1), ts))
    s.surprise = rng.uniform(-20, 0)
    s.surprise_n = rng.randint(0, 100)
    s.flag_last[rng.randrange(4)] = ts
    s.last_recs = [rng.randint(0, 2**32 - 1) for _ in range(10)]
    s.pending_event_id = rng.choice(["", "e42", "é" if rng.random() < 0.1 else "e7"])
    s.key_id = rng.choice(["k1", "k" * 300 if rng.random() < 0.05 else "k2"])
    for name in ("items", "ts", "types", "ratings", "dedup"):
        del getattr(s, name)[:-50]
    s.cats = dict(sorted(s.cats.items(), key=lambda kv: -kv[1])[:8])
    return s


def test_settle_is_what_the_bytes_give_back() -> None:
    """`settle` (the state kept decoded between a user's events of one call) is `decode(encode(s))`, or the bytes
    when they do not decode, or what `encode` raises: on random states and on decoded states an event changed."""
    rng = random.Random(11)
    fast = 0
    for _ in range(2000):
        s = _random_state(rng)
        cases = [s]
        b = _call(state.encode, s)
        if isinstance(b, bytes) and isinstance(d := _call(state.decode, b), UserState):
            cases.append(_operator_like(rng, d))
        for c in cases:
            ref = _call(_through_bytes, c)
            assert repr(_call(state.settle, c.copy())) == repr(ref)
    # one user's events one after the other, each on the state the previous one settled
    s = UserState(first_ts=T, last_ts=T)
    for _ in range(2000):
        s = _operator_like(rng, s)
        ref = _call(_through_bytes, s)
        fast += _call(state._settle_fast, s.copy()) is True
        got = _call(state.settle, s.copy())
        assert repr(got) == repr(ref)
        s = got if isinstance(got, UserState) else UserState(first_ts=T, last_ts=T)
    assert fast > 1500  # the usual states take the fast path


def test_state_copy_is_independent() -> None:
    rng = random.Random(1)
    s = UserState(first_ts=T, last_ts=T)
    for _ in range(5):
        s = _operator_like(rng, s)
    c = s.copy()
    assert c == s and c is not s
    for name in state._COPIED:
        assert getattr(c, name) is not getattr(s, name)
    # shared: the operator only replaces it whole, and a pipelined list fills it in place in every state that has it
    assert c.last_recs is s.last_recs and set(state._COPIED) == set(state._CONTAINERS) - {"last_recs"}
    assert set(state._CONTAINERS) == {f for f, v in vars(s).items() if isinstance(v, list | dict)}


def _random_item_state(rng: random.Random) -> ItemState:
    """Usual item states, and now and then (`odd`) what the layout changes: an old time, a rating off the half steps,
    a count past its field, a non-finite baseline, a key id it cuts or encodes otherwise."""
    last = rng.choice([T + rng.randint(0, 10**9), rng.randint(0, 2**62)])

    def odd(usual: Any, unusual: Any) -> Any:
        return unusual if rng.random() < 0.03 else usual

    def t() -> int:
        return last - odd(rng.choice([0, rng.randint(0, 10**8)]), rng.choice([2**33, -5]))

    return ItemState(
        first_ts=T, last_ts=last, n_events=odd(rng.randint(1, 1000), 2**33),
        base_clicks=odd(rng.uniform(0, 50), math.inf), base_r_n=rng.uniform(0, 5), base_r_sum=rng.uniform(0, 20),
        base_events=rng.uniform(0, 100), base_r_hi=rng.uniform(0, 3), base_r_lo=odd(rng.uniform(0, 2), math.nan),
        flag_last=[rng.choice([0, last]), 0],
        clicks=[[rng.randbytes(32), t(), rng.randint(0, 15)] for _ in range(rng.randint(0, 12))],
        ratings=[[rng.randbytes(32), t(), rng.randint(0, 15), odd(rng.choice([0.5, 3.5, 7.5]), rng.choice([3.7, 0.1]))]
                 for _ in range(rng.randint(0, 8))],
        key_id=odd(rng.choice(["k", "k2"]), rng.choice(["é", "k" * 300])),
    )  # fmt: skip


def test_settle_item_is_what_the_bytes_give_back() -> None:
    rng = random.Random(5)
    fast = 0
    for _ in range(3000):
        s = _random_item_state(rng)

        def through_bytes(x: ItemState) -> Any:
            b = item.encode_item(x)
            try:
                return item.decode_item(b)
            except item.ItemStateError:
                return b

        ref = _call(through_bytes, s)
        fast += _call(item._settle_item_fast, s.copy()) is True
        assert repr(_call(item.settle_item, s.copy())) == repr(ref)
    assert fast > 1500
    c = s.copy()
    # new lists (the entries are shared: nothing changes one in place; test_batch's step_many test fails otherwise)
    assert c == s and c.clicks is not s.clicks and c.ratings is not s.ratings and c.flag_last is not s.flag_last


def test_regularity_cv_matches_numpy() -> None:
    rng = random.Random(3)
    for _ in range(5000):
        n = rng.choice([1, 2, 7, 8, 9, 15, 16, 17, 129])
        g = np.array([rng.choice([float(rng.randint(0, 10**6)), rng.uniform(-1e9, 1e9)]) for _ in range(n)])
        assert fraud._cv(g) == float(g.std() / max(g.mean(), 1e-9))


@pytest.mark.parametrize("k", [14, 15])
def test_regularity_median_matches_numpy(k: int) -> None:
    conf = replace(UserFraudConf(), regular_min_gaps=k, regular_min_gap_ms=0)
    rng = random.Random(k)
    for _ in range(500):
        ts = sorted(T + rng.randint(0, 10**7) for _ in range(k + 1 + rng.randint(0, 5)))
        det = fraud.regularity(UserState(ts=ts), conf)
        gaps = np.diff(np.asarray(ts[-(k + 1) :], dtype=np.float64))
        med = float(np.median(gaps))
        if med > conf.regular_max_gap_ms:
            assert det is None
        else:
            assert det is not None and det.evidence["median_gap_ms"] == med


@pytest.mark.parametrize("need_logprob", [False, True])
def test_batch_of_one_matches_the_batch_path(scorer: Any, artifact: Any, need_logprob: bool) -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros(artifact.n_items, dtype=bool)
    mask[:3] = True
    for n in (0, 1, 2, 5, artifact.max_len, artifact.max_len + 7):
        items = rng.integers(-2, artifact.n_items + 3, size=n).tolist()
        req = ScoreRequest(items, [1 + i % 5 for i in range(n)], [T + 1000 * i for i in range(n)],
                           exclude=items[:3] + [-1, 10**6], extra_exclude=mask if n % 2 else None)  # fmt: skip
        one, ref = _call(scorer._score_one, req, need_logprob), _call(scorer._score_batch, [req], need_logprob)
        assert not isinstance(ref, type), ref  # any length scores, an empty history too (one pad position)
        assert not isinstance(one, type), one
        ref = ref[0]
        for f in ("items", "scores", "next_item_logprob", "user_vector"):
            assert np.array_equal(getattr(one, f), getattr(ref, f)), f
        want = (max(min(n, artifact.max_len) - 1, 0),) if need_logprob else (0,)
        assert one.next_item_logprob.shape == want and one.next_item_logprob.dtype == np.float32


@pytest.mark.parametrize("int8", [False, True])
def test_fast_graph_lists_match_the_full_graph(artifact: Any, int8: bool) -> None:
    """The trained model's fast graph (model.topk.onnx, what serves the lists) recommends exactly what its full graph
    (model.onnx) does: same top-K items, scores within 1e-5, on batches of random histories of every length (left
    padding in the batch path), with unknown items, exclusions and a business mask; batch and batch-of-one paths."""
    from operators.scorer import Scorer

    sc = Scorer(artifact, int8=int8, threads=1)
    assert sc.topk_session is not None
    rng = np.random.default_rng(int8)
    n_items = artifact.n_items
    mask = rng.random(n_items) < 0.05
    reqs = []
    for r in range(24):
        n = int(rng.integers(2, artifact.max_len + 6))
        items = rng.integers(0, n_items + 2, size=n).tolist()  # n_items + 1: the unknown item
        ex = rng.choice(n_items, size=int(rng.integers(0, 30)), replace=False).tolist()
        ts = (T + np.cumsum(rng.integers(0, 10**7, n))).tolist()
        reqs.append(ScoreRequest(items, rng.integers(1, 6, size=n).tolist(), ts, exclude=ex,
                                 extra_exclude=mask if r % 3 else None))  # fmt: skip
    fast, full = sc.score(reqs), sc.score(reqs, need_logprob=True)
    fast += [sc.score([q])[0] for q in reqs[:6]]
    full += [sc.score([q], need_logprob=True)[0] for q in reqs[:6]]
    for q, a, b in zip(reqs + reqs[:6], fast, full, strict=True):
        assert np.array_equal(a.items, b.items)
        assert np.max(np.abs(a.scores - b.scores)) < 1e-5
        assert np.max(np.abs(a.user_vector - b.user_vector)) < 1e-5
        assert a.next_item_logprob.shape == (0,)
        assert b.next_item_logprob.shape == (min(len(q.items), artifact.max_len) - 1,)
        banned = set(q.exclude) | set(np.flatnonzero(q.extra_exclude if q.extra_exclude is not None else mask & False))
        assert not banned & set(a.items.tolist())


@pytest.mark.parametrize("int8", [False, True])
def test_the_two_graphs_share_their_tables(artifact: Any, int8: bool) -> None:
    """The big tables the fast and full graphs both hold (item-KNN neighbours and similarities) are in memory once:
    the artefact's own arrays (the operator's cold-start candidates read them) are given to both sessions; the
    scores are bit for bit those of sessions that load their own copies."""
    from operators.scorer import Scorer, shared_initializers

    full = artifact.int8_path if int8 else artifact.model_path
    topk = artifact.topk_int8_path if int8 else artifact.topk_path
    shared = shared_initializers([full, topk])
    assert set(shared) == {full, topk}
    assert {"knn.nbr_idx", "knn.nbr_sim"} <= set(shared[full]) & set(shared[topk])
    for name in ("knn.nbr_idx", "knn.nbr_sim"):
        assert shared[full][name] is shared[topk][name]
        assert shared[full][name].shape()[0] == artifact.n_items + 2  # + the pad and unknown rows
    assert shared_initializers([full]) == {}  # one graph, nothing known: nothing to share
    n = artifact.n_items
    for table, view in zip(artifact.knn_graph_tables, (artifact.knn_neighbours, artifact.knn_similarities),
                           strict=True):  # fmt: skip
        assert table.shape[0] == n + 2 and not table[n:].any() and np.shares_memory(table, view)
    known = shared_initializers([full, topk], known=artifact.knn_graph_tables)
    for name, table in zip(("knn.nbr_idx", "knn.nbr_sim"), artifact.knn_graph_tables, strict=True):
        assert known[full][name] is known[topk][name]
        assert known[full][name].data_ptr() == table.ctypes.data  # the artefact's buffer, not a copy
    only_full = shared_initializers([full, None], known=artifact.knn_graph_tables)
    assert only_full[full]["knn.nbr_idx"].data_ptr() == artifact.knn_graph_tables[0].ctypes.data

    sc = Scorer(artifact, int8=int8, threads=1)
    own = Scorer(artifact, int8=int8, threads=1, share_tables=False)  # each session loads its own copies
    assert sc._shared and not own._shared
    rng = np.random.default_rng(3)
    for need_logprob in (False, True):
        reqs = [ScoreRequest(rng.integers(0, artifact.n_items, 9).tolist(), [1] * 9, list(range(0, 9000, 1000)))
                for _ in range(5)]  # fmt: skip
        got, ref = sc.score(reqs, need_logprob=need_logprob), own.score(reqs, need_logprob=need_logprob)
        for a, b in zip(got, ref, strict=True):
            assert np.array_equal(a.items, b.items) and np.array_equal(a.scores, b.scores)
            assert np.array_equal(a.next_item_logprob, b.next_item_logprob)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=40), st.integers(0, 200))
def test_split_groups_is_a_partition_of_least_cost(lens: list[int], cost: int) -> None:
    """Every row in exactly one call; never more calls than length classes; and no call plan the rule allows (the
    classes in length order, neighbours merged) costs less than the one chosen."""
    from operators.scorer import split_groups

    groups = split_groups(lens, cost)
    assert sorted(r for g in groups for r in g) == list(range(len(lens)))
    assert all(groups) or lens == []

    def plan_cost(gs: list[list[int]]) -> int:
        return sum(cost + len(g) * max([max(lens[r], 1) for r in g]) for g in gs)

    classes = sorted({max(n, 1).bit_length() for n in lens})
    assert len(groups) <= max(len(classes), 1)
    if cost == 0 or len(classes) < 2:
        assert groups == [list(range(len(lens)))]
        return
    by_class = [[r for r in range(len(lens)) if max(lens[r], 1).bit_length() == c] for c in classes]
    best = min(  # every way to cut the ordered classes into runs
        plan_cost(
            [[r for g in by_class[a:b] for r in g] for a, b in zip([0, *cuts], [*cuts, len(classes)], strict=True)]
        )
        for m in range(len(classes))
        for cuts in map(list, itertools.combinations(range(1, len(classes)), m))
    )
    assert plan_cost(groups) == best


def test_split_groups_splits_short_from_long_histories() -> None:
    from operators.scorer import split_groups

    assert split_groups([1] * 8 + [50] * 8, 32) == [list(range(8)), list(range(8, 16))]  # 472 vs 832 in one
    assert split_groups([1, 50], 64) == [[0, 1]]  # a call costs more than the padding saved
    assert split_groups([10, 12, 9], 1) == [[0, 1, 2]]  # one length class: one call, rows as given


@pytest.mark.parametrize("need_logprob", [False, True])
def test_a_split_batch_scores_what_one_call_does(artifact: Any, need_logprob: bool) -> None:
    """A batch of short and long histories scored in calls by length (split_cost) gives each request what the whole
    batch in one call gives it (same items, scores within float noise), in the request's place."""
    from operators.scorer import Scorer

    split = Scorer(artifact, threads=1, split_cost=32, canonical=False)
    whole = Scorer(artifact, threads=1, split_cost=0, canonical=False)
    rng = np.random.default_rng(3)
    reqs = []
    for r in range(20):
        n = [1, 3, 9, artifact.max_len, 0][r % 5]
        items = rng.integers(0, artifact.n_items, size=n).tolist()
        reqs.append(ScoreRequest(items, [1 + i % 5 for i in range(n)], [T + 60_000 * i for i in range(n)],
                                 exclude=items[:2]))  # fmt: skip
    from operators.scorer import split_groups

    assert len(split_groups([min(len(q.items), artifact.max_len) for q in reqs], 32)) > 1  # it does split
    got, ref = split.score(reqs, need_logprob), whole.score(reqs, need_logprob)
    alone = [whole.score([q], need_logprob)[0] for q in reqs]
    for a, b, c in zip(got, ref, alone, strict=True):
        assert np.array_equal(a.items, c.items)  # in its own place: what the request alone gets
        assert np.array_equal(a.items, b.items)
        assert np.max(np.abs(a.scores - b.scores)) < 1e-5
        assert a.next_item_logprob.shape == b.next_item_logprob.shape
        assert np.allclose(a.next_item_logprob, b.next_item_logprob, atol=1e-5)
    with pytest.raises(ValueError, match="split_cost"):
        Scorer(artifact, threads=1, split_cost=-1)


@pytest.mark.parametrize("need_logprob", [False, True])
def test_canonical_widths_make_a_rows_results_independent_of_its_batch(artifact: Any, need_logprob: bool) -> None:
    """With canonical widths (the default) a history's items, scores, log-probs and user vector are bit-identical
    alone, in a batch of other lengths, and in another such batch: each row is padded to its length class's width
    whatever else is in the call. Padded to each call's longest (`canonical=False`) they differ in the last bits on
    hosts whose kernels depend on the width (the AVX2-only host of 2026-12-05: 6 state-equality tests failed)."""
    from operators.scorer import Scorer, canonical_width, width_classes

    sc = Scorer(artifact, threads=1)
    rng = np.random.default_rng(11)
    reqs = []
    for r in range(24):
        n = [0, 1, 2, 5, 9, 16, 33, artifact.max_len][r % 8]
        items = rng.integers(0, artifact.n_items, size=n).tolist()
        reqs.append(ScoreRequest(items, [1 + i % 5 for i in range(n)], [T + 60_000 * i for i in range(n)],
                                 exclude=items[:2]))  # fmt: skip
    alone = [sc.score([q], need_logprob)[0] for q in reqs]
    mixed = sc.score(reqs, need_logprob)
    other = sc.score(reqs[::-1][:17], need_logprob)[::-1]  # another batch: other neighbours, other sizes
    for a, b in [*zip(mixed, alone, strict=True), *zip(other, alone[len(reqs) - 17 :], strict=True)]:
        for f in ("items", "scores", "next_item_logprob", "user_vector"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert [canonical_width(n, 50) for n in (0, 1, 6, 7, 8, 15, 16, 31, 32, 50)] == [7, 7, 7, 7, 15, 15, 31, 31, 50, 50]
    assert canonical_width(3, 5) == 5  # never above the model's length
    assert width_classes([5, 1, 9, 6, 50, 0], 50) == [[0, 1, 3, 5], [2], [4]]


@pytest.mark.parametrize("need_logprob", [False, True])
def test_call_rows_splits_a_call_into_equal_calls_with_the_same_results(artifact: Any, monkeypatch: pytest.MonkeyPatch,
                                                                        need_logprob: bool) -> None:  # fmt: skip
    """`call_rows`: a group of more rows than the cap is scored in calls of at most that many rows, as equal as can
    be, in row order, and every row's outputs are those of the single call (bit for bit: each input is per row)."""
    from operators.scorer import Scorer

    rng = np.random.default_rng(5)
    reqs = []
    for _ in range(37):  # one length class (16-31 positions): one group, so the cap alone splits it
        n = int(rng.integers(16, 32))
        items = rng.integers(0, artifact.n_items, size=n).tolist()
        reqs.append(ScoreRequest(items, [1 + i % 5 for i in range(n)], [T + 60_000 * i for i in range(n)],
                                 exclude=items[:3]))  # fmt: skip
    whole = Scorer(artifact, threads=1).score(reqs, need_logprob)
    capped = Scorer(artifact, threads=1, call_rows=16)
    fed = _spy_feeds(capped, monkeypatch)
    got = capped.score(reqs, need_logprob)
    assert [len(f["item_idx"]) for f in fed] == [13, 13, 11]  # 37 rows, at most 16 a call: three calls
    for a, b in zip(got, whole, strict=True):
        for f in ("items", "scores", "next_item_logprob", "user_vector"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
    fed.clear()
    capped.score(reqs[:16], need_logprob)
    assert [len(f["item_idx"]) for f in fed] == [16]
    with pytest.raises(ValueError, match="call_rows"):
        Scorer(artifact, threads=1, call_rows=-1)


def test_a_scorer_from_the_operators_conf_takes_its_call_shaping(artifact: Any) -> None:
    """The job, the bench's plain consumer and the replay build their scorer with `Scorer.from_conf`."""
    from operators.config import ScorerConf
    from operators.scorer import Scorer

    s = Scorer.from_conf(artifact, ScorerConf(split_cost=3, canonical_widths=False, call_rows=7), False, 1)
    assert (s.split_cost, s.canonical, s.call_rows, s.int8) == (3, False, 7, False)


def _velocity_reference(s: UserState, conf: UserFraudConf, now: int) -> int:
    """The events `fraud.velocity` counts, as it counted them before the bisection: the whole history walked."""
    codes = fraud._codes(conf.velocity_event_types)
    lo = now - conf.velocity_window_ms
    return sum(1 for t, c in zip(s.ts, s.types, strict=True) if lo < t <= now and c in codes)


def _ratings_reference(s: UserState, conf: UserFraudConf, now: int) -> list[float]:
    """The ratings `fraud.rating_anomaly` judges, as it took them before the bisection."""
    lo = now - conf.rating_window_ms
    return [r for t, c, r in zip(s.ts, s.types, s.ratings, strict=True) if c == fraud._RATING_CODE and t > lo and r > 0]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200_000), st.integers(1, len(state.EVENT_TYPES)),
                          st.sampled_from([0.0, 1.0, 2.5, 5.0])), max_size=60),
       st.integers(-10_000, 210_000), st.integers(1, 100_000))  # fmt: skip
def test_windowed_detectors_count_what_the_whole_history_walk_counted(
    events: list[tuple[int, int, float]], now_offset: int, window: int
) -> None:
    """The windows are found by bisection in the (sorted) history: the same events as walking all of it, with ties
    on the window's edges and events after `now` (a late event's state holds later ones)."""
    events.sort(key=lambda e: e[0])  # the operator keeps `ts` sorted (`UserOperator._update`)
    s = UserState(ts=[T + t for t, _, _ in events], types=[c for _, c, _ in events],
                  ratings=[r for _, _, r in events], items=[1] * len(events))  # fmt: skip
    now = T + now_offset
    conf = replace(UserFraudConf(), velocity_window_ms=window, rating_window_ms=window, rating_min=1,
                   unverified_min_ratings=1)  # fmt: skip
    n = _velocity_reference(s, conf, now)
    det = fraud.velocity(s, conf, now)
    assert (det is None) if n == 0 else (det is not None and det.evidence["events_in_window"] == n)
    vals = _ratings_reference(s, conf, now)
    rdet = fraud.rating_anomaly(s, conf, now)
    assert (rdet is None) if not vals else (rdet is not None and rdet.evidence["ratings"] == len(vals))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.integers(0, 50), st.sampled_from([0.0, -0.0, 0.5, 1.0, 1e-9, 3.25, 7.0]), max_size=30))
def test_heaviest_first_is_the_keyed_sort(weights: dict[int, float]) -> None:
    got = heaviest_first(weights)
    want = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))
    assert got == want and [repr(w) for _, w in got] == [repr(w) for _, w in want]  # -0.0 stays -0.0


def test_flatten_joins_lists_as_the_per_list_conversion_did() -> None:
    rng = random.Random(5)
    for _ in range(300):
        ids = [[rng.randint(0, 10**6) for _ in range(rng.randint(0, 12))] for _ in range(rng.randint(1, 6))]
        rel = [[rng.uniform(-5, 5) for _ in x] for x in ids]
        lens, (a, b) = _flatten([ids, rel], [np.int64, np.float64])
        assert lens == [len(x) for x in ids]
        ref_a = np.concatenate([np.asarray(x, dtype=np.int64).reshape(-1) for x in ids])
        ref_b = np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in rel])
        assert a.dtype == np.int64 and b.dtype == np.float64
        assert np.array_equal(a, ref_a) and np.array_equal(b, ref_b)
    # nested, ragged lists are not flat numbers: each list is converted alone, as before
    lens, (a,) = _flatten([[[[1, 2]], [[3]]]], [np.int64])
    assert lens == [1, 1] and a.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="one relevance per candidate"):
        _flatten([[[1, 2]], [[0.5]]], [np.int64, np.float64])


def _rating_anomaly_reference(s: UserState, conf: UserFraudConf, now: int, engaged_feed: bool) -> Any:
    """`fraud.rating_anomaly` as it was before it returned early (the definition of the expected detection)."""
    rc = fraud._RATING_CODE
    vals = [r for t, c, r in zip(s.ts, s.types, s.ratings, strict=True) if c == rc and r > 0
            and t > now - conf.rating_window_ms]  # fmt: skip
    if not vals:
        return None
    best = None
    if conf.rating_min > 0 and len(vals) >= conf.rating_min:
        ext = sum(1 for v in vals if v <= conf.rating_low or v >= conf.rating_high)
        r = (ext / len(vals)) / max(conf.rating_extreme_share, 1e-9)
        best = fraud.Detection(fraud.RATING, fraud._score(r), {"rule": "extreme", "ratings": len(vals), "extreme": ext,
                                                               "share": round(ext / len(vals), 3),
                                                               "window_ms": conf.rating_window_ms})  # fmt: skip
    k = conf.unverified_min_ratings
    if engaged_feed and k > 0 and len(vals) >= k and all(c == rc for c in s.types):
        r = len(vals) / k
        if best is None or fraud._score(r) > best.score:
            best = fraud.Detection(fraud.RATING, fraud._score(r), {"rule": "unverified", "ratings": len(vals),
                                                                   "engagement_events": 0, "min_ratings": k,
                                                                   "window_ms": conf.rating_window_ms})  # fmt: skip
    return best


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100_000), st.sampled_from([1, 2, 5, 5, 5]),
                          st.sampled_from([0.0, 1.0, 2.5, 5.0])), min_size=1, max_size=40),
       st.integers(0, 3), st.integers(0, 3), st.booleans(), st.sampled_from([0.0, 0.3, 0.5, 0.9]))  # fmt: skip
def test_detectors_build_what_they_built_and_none_below_their_floor(
    events: list[tuple[int, int, float]], rating_min: int, min_ratings: int, engaged: bool, floor: float
) -> None:
    """`rating_anomaly`'s early return (neither rule can report) gives what the full count gave; `floor` only
    drops detections scoring below it (the operator's flag threshold: `_raise` dropped those)."""
    events.sort(key=lambda e: e[0])
    s = UserState(ts=[T + t for t, _, _ in events], types=[c for _, c, _ in events],
                  ratings=[r for _, _, r in events], items=[1] * len(events))  # fmt: skip
    now = T + events[-1][0]
    conf = replace(UserFraudConf(), rating_min=rating_min, unverified_min_ratings=min_ratings, rating_window_ms=50_000,
                   velocity_window_ms=30_000, velocity_max_events=3, regular_min_gaps=3, regular_min_gap_ms=1,
                   regular_max_cv=0.5)  # fmt: skip
    want = _rating_anomaly_reference(s, conf, now, engaged)
    assert fraud.rating_anomaly(s, conf, now, engaged) == want
    for got, full in ((fraud.rating_anomaly(s, conf, now, engaged, floor), want),
                      (fraud.velocity(s, conf, now, floor), fraud.velocity(s, conf, now)),
                      (fraud.regularity(s, conf, floor), fraud.regularity(s, conf))):  # fmt: skip
        assert got == (full if full is not None and full.score >= floor else None)


def _feeds_reference(scorer: Any, batch: list[ScoreRequest], width: int) -> dict[str, np.ndarray]:
    """The graph inputs of a batch as `Scorer._call_batch` built them row by row before (the definition)."""
    b = len(batch)
    items = np.full((b, width), scorer.pad, dtype=np.int64)
    types = np.zeros((b, width), dtype=np.int64)
    ts = np.zeros((b, width), dtype=np.int64)
    exclude = np.zeros((b, scorer.n_items), dtype=bool)
    for r, req in enumerate(batch):
        n = min(len(req.items), scorer.max_len)
        if n:
            it = np.asarray(req.items[-n:], dtype=np.int64)
            it[(it < 0) | (it > scorer.unk)] = scorer.unk
            items[r, width - n :] = it
            types[r, width - n :] = np.asarray(req.types[-n:], dtype=np.int64)
            ts[r, width - n :] = np.asarray(req.ts[-n:], dtype=np.int64)
        if req.extra_exclude is not None:
            exclude[r] |= req.extra_exclude
        ex = np.asarray(req.exclude, dtype=np.int64)
        exclude[r, ex[(ex >= 0) & (ex < scorer.n_items)]] = True
    return {"item_idx": items, "event_type": types, "ts_ms": ts, "exclude": exclude}


def _spy_feeds(scorer: Any, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, np.ndarray]]:
    """The inputs of every graph call `scorer` makes from now on, in order (the calls still run)."""
    real, fed = scorer._graph, []

    def graph(need_logprob: bool) -> Any:
        session, want = real(need_logprob)

        class Spy:
            def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
                fed.append(feeds)
                return session.run(names, feeds)

        return Spy(), want

    monkeypatch.setattr(scorer, "_graph", graph)
    return fed


@pytest.mark.parametrize("shared", [True, False])
def test_a_batchs_graph_inputs_are_its_rows_inputs(scorer: Any, artifact: Any, monkeypatch: pytest.MonkeyPatch,
                                                   shared: bool) -> None:  # fmt: skip
    """`_call_batch` fills every row's history at once: the very arrays the row-by-row loop built, for rows of any
    length (none, longer than the model's input), exclusions out of range, shared or per-row extra exclusions."""
    fed = _spy_feeds(scorer, monkeypatch)
    rng = np.random.default_rng(1)
    masks = [np.zeros(artifact.n_items, dtype=bool) for _ in range(2)]
    masks[0][:3], masks[1][5:9] = True, True
    batch = []
    for r, n in enumerate((0, 1, 5, 17, artifact.max_len + 7, 3)):
        items = rng.integers(-2, artifact.n_items + 3, size=n).tolist()
        extra = masks[0] if shared else [None, masks[0], masks[1]][r % 3]
        batch.append(ScoreRequest(items, [1 + i % 5 for i in range(n)], [T + 1000 * i for i in range(n)],
                                  exclude=items[:4] + [-1, 10**6, r], extra_exclude=extra))  # fmt: skip
    out = scorer._call_batch(batch)
    assert len(out) == len(batch) and len(fed) == 1
    want = _feeds_reference(scorer, batch, fed[0]["item_idx"].shape[1])
    for k, v in want.items():
        assert fed[0][k].dtype == v.dtype and np.array_equal(fed[0][k], v), k


def test_a_deferred_order_copies_its_request_whole() -> None:
    """`_Pipe.defer` builds the request's copy field by field (not `dataclasses.replace`): every field, the history's
    lists new."""
    from dataclasses import fields

    from operators.user import _ListOrder, _Pipe, _Queue

    mask = np.zeros(4, dtype=bool)
    req = ScoreRequest([1, 2], [1, 3], [T, T + 1], [2], extra_exclude=mask)
    s = UserState(items=[7, 8], ts=[T, T + 1], types=[1, 3], ratings=[0.0, 0.0])
    o = _ListOrder.__new__(_ListOrder)
    o.s, o.req = s, req
    _Pipe().defer(_Queue.__new__(_Queue), o)
    assert [f.name for f in fields(o.req)] == [f.name for f in fields(req)]
    for f in fields(req):
        got, want = getattr(o.req, f.name), getattr(req, f.name)
        assert got is mask if f.name == "extra_exclude" else got == want
    assert o.req.types is not req.types and o.req.ts is not req.ts


@settings(max_examples=500, deadline=None)
@given(ts=st.lists(st.integers(0, 50), max_size=12), after=st.integers(-1, 51), most=st.integers(-3, 14))
def test_item_window_filter_is_skipped_only_where_it_keeps_every_entry(ts: list[int], after: int, most: int) -> None:
    """`ItemOperator._apply` filters an item's recent clicks and ratings only when `item._dropping` says the filter
    would drop one: where it says no, the filter's list equals the entries."""
    from operators.item import _dropping

    entries = [[b"k", t, 0] for t in ts]
    if not _dropping(entries, after, most):
        assert [e for e in entries if e[1] > after][-most:] == entries
