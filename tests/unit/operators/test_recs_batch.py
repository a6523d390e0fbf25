"""The batched re-rank (`mmr_many`, `intra_list_diversity_many`) returns, list for list, exactly what the one-list
functions returned before batching (kept below as the reference), whatever else is in the batch.

`python -m tests.unit.operators.test_recs_batch [item_embeddings.npy]` times old against new, side by side."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from operators.recs import intra_list_diversity, intra_list_diversity_many, mmr, mmr_many, normalise_rows


def _ref_intra_list_diversity(items: Sequence[int], unit_emb: np.ndarray) -> float:
    """`operators.recs.intra_list_diversity` before batching."""
    if len(items) < 2:
        return 0.0
    v = unit_emb.take(np.asarray(items, dtype=np.int64), axis=0)
    sim = v @ v.T
    n = len(items)
    return float((n * n - sim.sum()) / (n * (n - 1))) if n > 1 else 0.0


def _ref_mmr(
    candidates: Sequence[int], relevance: Sequence[float], unit_emb: np.ndarray, k: int, lam: float
) -> list[int]:
    """`operators.recs.mmr` before batching (its fast path and its plain loop)."""
    cand = np.asarray(candidates, dtype=np.int64)
    if len(cand) == 0 or k <= 0:
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    finite = np.isfinite(rel)
    if not finite.all():
        cand, rel = cand[finite], rel[finite]
    if len(cand) == 0:
        return []
    lo = rel.min()
    span = rel.max() - lo
    rel = (rel - lo) / span if span > 0 else np.ones_like(rel)
    if lam >= 1.0:
        return [int(x) for x in cand[np.argsort(-rel, kind="stable")][:k]]
    v = unit_emb.take(cand, axis=0)
    m = min(k, len(cand))
    a = lam * rel
    b = 1.0 - lam
    if not (math.isfinite(b) and (v.size == 0 or (float(v.max()) < 1e15 and float(v.min()) > -1e15))):
        return _ref_mmr_loop(cand, a, b, v, m)
    n = len(cand)
    a_live = a.copy()
    red = np.zeros(n)
    tmp = np.empty(n)
    val = np.empty(n)
    picked: list[int] = []
    for it in range(m):
        np.subtract(a_live, np.multiply(b, red, out=tmp), out=val)
        j = int(val.argmax())
        picked.append(j)
        if it + 1 == m:
            break
        a_live[j] = -np.inf
        sims = v @ v[j]
        if it == 0:
            red = sims.astype(np.float64)
        else:
            np.maximum(red, sims, out=red)
    return cand[picked].tolist()


def _ref_mmr_loop(cand: np.ndarray, a: np.ndarray, b: float, v: np.ndarray, m: int) -> list[int]:
    max_sim = np.full(len(cand), -np.inf)
    chosen = np.zeros(len(cand), dtype=bool)
    out: list[int] = []
    for _ in range(m):
        red = np.where(np.isfinite(max_sim), max_sim, 0.0)
        val = a - b * red
        val[chosen] = -np.inf
        j = int(np.argmax(val))
        chosen[j] = True
        out.append(int(cand[j]))
        max_sim = np.maximum(max_sim, v @ v[j])
    return out


def _embeddings(rng: np.random.Generator, case: int) -> np.ndarray:
    d = (64, 16, 3, 1, 64, 33, 64, 0)[case % 8]
    emb = rng.normal(size=(400, d)).astype(np.float32)
    emb[:30] = emb[30:60]  # duplicate items: exact similarity ties
    emb[60] = 0.0
    if case % 3 == 0:
        emb = normalise_rows(emb)
    if case % 4 == 1:
        emb = emb.astype(np.float64)
    if case % 5 == 2 and d:  # non-finite or huge embeddings: those lists take the plain loop
        emb[7] = np.nan
        emb[8, 0] = np.inf
        emb[9, -1] = -2e15
    return emb


def _random_lists(rng: np.random.Generator, n_items: int, n_lists: int) -> tuple[list[list[int]], list[list[float]]]:
    cands, rels = [], []
    for _ in range(n_lists):
        n = int(rng.choice([0, 1, 2, 5, 9, 10, 11, 13, 50, 50, 50, int(rng.integers(0, 70))]))
        cand = rng.choice(n_items, size=n, replace=bool(rng.random() < 0.2)).tolist()  # repeats: the same item twice
        rel = rng.normal(size=n).round(int(rng.integers(0, 4))).tolist()  # rounding makes relevance ties
        if n and rng.random() < 0.4:
            for _ in range(int(rng.integers(1, 4))):
                rel[int(rng.integers(0, n))] = float(rng.choice([-math.inf, math.inf, math.nan]))
        if n and rng.random() < 0.05:
            rel = [1.5] * n  # one value: span 0
        cands.append(cand)
        rels.append(rel)
    return cands, rels


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN embeddings: both paths warn
@pytest.mark.parametrize("case", range(16))
def test_mmr_many_matches_the_one_list_reference(case: int) -> None:
    rng = np.random.default_rng(case)
    emb = _embeddings(rng, case)
    for _ in range(12):
        cands, rels = _random_lists(rng, len(emb), int(rng.choice([1, 2, 8, 33, 64])))
        for lam in (0.0, 0.5, 0.9, 1.0, 0.3, -0.5, 1.5):
            for k in (0, 1, 10, int(rng.integers(0, 70))):
                want = [_ref_mmr(c, r, emb, k, lam) for c, r in zip(cands, rels, strict=True)]
                assert mmr_many(cands, rels, emb, k, lam) == want, (lam, k)
                i = int(rng.integers(0, len(cands)))
                assert mmr(cands[i], rels[i], emb, k, lam) == want[i]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # lambda NaN, inf: both paths warn
def test_mmr_many_with_non_finite_lambda_and_numpy_inputs() -> None:
    rng = np.random.default_rng(99)
    emb = normalise_rows(rng.normal(size=(200, 8)).astype(np.float32))
    cands, rels = _random_lists(rng, len(emb), 40)
    for lam in (math.nan, -math.inf, math.inf, np.float32(0.7), 1e300):
        want = [_ref_mmr(c, r, emb, 10, float(lam)) for c, r in zip(cands, rels, strict=True)]
        assert mmr_many(cands, rels, emb, 10, float(lam)) == want, lam
    arrays = [np.asarray(c, dtype=np.int32) for c in cands], [np.asarray(r, dtype=np.float32) for r in rels]
    want = [_ref_mmr(c, r, emb, 10, 0.9) for c, r in zip(*arrays, strict=True)]
    assert mmr_many(*arrays, emb, 10, 0.9) == want
    assert mmr_many([], [], emb, 10, 0.9) == []
    assert mmr_many([[], []], [[], []], emb, 10, 0.9) == [[], []]
    with pytest.raises(ValueError):
        mmr_many([[1, 2, 3]], [[0.1, 0.2]], emb, 10, 0.9)


def test_a_list_gets_the_same_picks_whatever_else_is_in_the_batch() -> None:
    rng = np.random.default_rng(5)
    emb = normalise_rows(rng.normal(size=(500, 64)).astype(np.float32))
    emb[100:150] = emb[150:200]  # exact ties
    emb[3] = np.nan
    cands, rels = _random_lists(rng, len(emb), 64)
    alone = [mmr(c, r, emb, 10, 0.9) for c, r in zip(cands, rels, strict=True)]
    for _ in range(20):
        sel = rng.choice(len(cands), size=int(rng.integers(1, 64)), replace=False)
        got = mmr_many([cands[i] for i in sel], [rels[i] for i in sel], emb, 10, 0.9)
        assert got == [alone[i] for i in sel]


def test_real_embeddings_and_model_candidates(artifact: Any) -> None:
    """Lists as the operator builds them: the trained model's embeddings, candidates = its top 50 logits for
    user vectors made of recent items, lambda 0.9 (and the other settings)."""
    emb, bias = artifact.item_embeddings, artifact.item_bias
    unit = normalise_rows(emb)
    rng = np.random.default_rng(11)
    cands, rels, before = [], [], []
    for _ in range(200):
        hist = rng.integers(0, len(emb), size=int(rng.integers(1, 20)))
        user = emb[hist].mean(axis=0) + rng.normal(scale=0.1, size=emb.shape[1]).astype(np.float32)
        logits = emb @ user + bias
        top = np.argsort(-logits, kind="stable")[: int(rng.choice([50, 50, 50, 12, 7]))]
        cands.append(top.tolist())
        rels.append(logits[top].tolist())
        before.append(top[:10].tolist())
    for lam in (0.0, 0.5, 0.7, 0.9, 1.0):
        chosen = mmr_many(cands, rels, unit, 10, lam)
        assert chosen == [_ref_mmr(c, r, unit, 10, lam) for c, r in zip(cands, rels, strict=True)]
        ild = intra_list_diversity_many(chosen + before, unit)
        assert ild == [_ref_intra_list_diversity(x, unit) for x in chosen + before]


@pytest.mark.parametrize("case", range(8))
def test_intra_list_diversity_many_matches_the_one_list_reference(case: int) -> None:
    rng = np.random.default_rng(100 + case)
    emb = _embeddings(rng, case)
    for _ in range(20):
        lists, _rels = _random_lists(rng, len(emb), int(rng.choice([1, 2, 8, 33, 64])))
        lists += [rng.integers(0, len(emb), size=int(rng.integers(0, 120))).tolist() for _ in range(3)]
        with np.errstate(all="ignore"):
            want = [_ref_intra_list_diversity(x, emb) for x in lists]
            got = intra_list_diversity_many(lists, emb)
        np.testing.assert_array_equal(got, want)  # bit for bit (NaN where the reference gives NaN)
        i = int(rng.integers(0, len(lists)))
        with np.errstate(all="ignore"):
            np.testing.assert_array_equal(intra_list_diversity(lists[i], emb), want[i])
    assert intra_list_diversity_many([], emb) == []


def test_stacked_products_are_bit_for_bit_the_one_list_products() -> None:
    """What the batching rests on: numpy's stacked products make, list by list, the BLAS call of one list alone
    (the same similarities to the last bit, whatever the list's place in the stack)."""
    rng = np.random.default_rng(3)
    for d in (1, 3, 16, 33, 64):
        emb = normalise_rows(rng.normal(size=(300, d)).astype(np.float32))
        for n in (1, 2, 3, 5, 10, 13, 50, 51):
            idx = rng.integers(0, 300, size=(int(rng.integers(1, 40)), n))
            v = emb.take(idx, axis=0)
            j = rng.integers(0, n, size=len(idx))
            sims = np.empty((len(idx), n, 1), dtype=np.float32)
            np.matmul(v, v[np.arange(len(idx)), j][:, :, None], out=sims)
            gram = v @ v.transpose(0, 2, 1)
            for g in range(len(idx)):
                one = emb.take(idx[g], axis=0)
                assert np.array_equal(sims[g, :, 0], one @ one[j[g]])
                assert np.array_equal(gram[g], one @ one.T)


def _bench(emb_path: str | None = None, lists: int = 3000) -> None:
    """µs per list, old (one list at a time) and new (one batched call), for batches of 1, 8, 32, 64 lists of 50
    candidates (a model-like top 50), k = 10, lambda 0.9; each list also scores the diversity of its chosen 10 and
    of its first 10 candidates, as the operator does. Old and new alternate in each round; medians over
    rounds of `lists` lists."""
    rng = np.random.default_rng(0)
    if emb_path:
        emb = np.load(emb_path).astype(np.float32)
    else:  # 2.6k items, d = 64, in 40 clusters
        centres = rng.normal(size=(40, 64))
        emb = (centres[rng.integers(0, 40, 2600)] + 0.6 * rng.normal(size=(2600, 64))).astype(np.float32)
    unit = normalise_rows(emb)
    print(f"embeddings {emb.shape} from {emb_path or 'synthetic clusters'}; 50 candidates, k=10, lambda 0.9")
    print(f"{'batch':>5} | {'mmr old':>8} {'mmr new':>8} | {'ild x2 old':>10} {'ild x2 new':>10} | "
          f"{'total old':>9} {'total new':>9} {'speed-up':>8}   (µs per list)")  # fmt: skip
    inputs = {}
    for batch in (1, 8, 32, 64):
        users = rng.integers(0, len(emb), size=(batch, 8))
        logits = unit[users].mean(axis=1) @ emb.T  # (B, N)
        top = np.argsort(-logits, axis=1)[:, :50]
        inputs[batch] = top.tolist(), np.take_along_axis(logits, top, axis=1).tolist()
    time.sleep(1.0)  # OpenBLAS threads spin for a while after that big product, on the cores the timing uses
    for batch, (cands, rels) in inputs.items():
        firsts = [c[:10] for c in cands]
        t: dict[str, list[float]] = {"mo": [], "mn": [], "io": [], "in": []}
        for _ in range(max(30, lists // batch)):
            t0 = time.perf_counter()
            chosen_old = [_ref_mmr(c, r, unit, 10, 0.9) for c, r in zip(cands, rels, strict=True)]
            t1 = time.perf_counter()
            ild_old = [(_ref_intra_list_diversity(c, unit), _ref_intra_list_diversity(f, unit))
                       for c, f in zip(chosen_old, firsts, strict=True)]  # fmt: skip
            t2 = time.perf_counter()
            chosen = mmr_many(cands, rels, unit, 10, 0.9)
            t3 = time.perf_counter()
            ild = intra_list_diversity_many(chosen + firsts, unit)
            t4 = time.perf_counter()
            assert chosen == chosen_old and ild == [x for pair in zip(*ild_old, strict=True) for x in pair]
            for key, dt in zip(("mo", "io", "mn", "in"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                t[key].append(dt / batch * 1e6)
        med = {key: float(np.median(v)) for key, v in t.items()}
        old, new = med["mo"] + med["io"], med["mn"] + med["in"]
        print(f"{batch:>5} | {med['mo']:>8.1f} {med['mn']:>8.1f} | {med['io']:>10.1f} {med['in']:>10.1f} | "
              f"{old:>9.1f} {new:>9.1f} {old / new:>7.1f}x")  # fmt: skip


if __name__ == "__main__":
    _bench(sys.argv[1] if len(sys.argv) > 1 else None)
