"""Recommendation list building blocks: diversity re-rank (MMR), intra-list diversity, cold-start fallback."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def normalise_rows(emb: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero), for cosine similarities."""
    e = np.asarray(emb, dtype=np.float32)
    n = np.linalg.norm(e, axis=1, keepdims=True)
    return np.where(n > 0, e / np.maximum(n, 1e-12), 0.0).astype(np.float32)


def intra_list_diversity(items: Sequence[int], unit_emb: np.ndarray) -> float:
    """Mean pairwise cosine distance (1 - cos) of the list's item embeddings; 0 for fewer than 2 items."""
    if len(items) < 2:
        return 0.0
    v = unit_emb.take(np.asarray(items, dtype=np.int64), axis=0)
    sim = v @ v.T
    n = len(items)
    return float((n * n - sim.sum()) / (n * (n - 1))) if n > 1 else 0.0


def mmr(candidates: Sequence[int], relevance: Sequence[float], unit_emb: np.ndarray, k: int, lam: float) -> list[int]:
    """Maximal marginal relevance: pick argmax lam * rel - (1 - lam) * max cos(item, picked), k times.

    Relevance is min-max normalised over the candidates so `lam` means the same for any score scale;
    lam = 1 returns the candidates in relevance order.
    """
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
        return _mmr_loop(cand, a, b, v, m)
    # Every cosine is finite here (|x| < 1e15 in float32: no dot product overflows), so `red` is `max_sim` and
    # a picked item's -inf relevance stays -inf: the values are exactly `_mmr_loop`'s with fewer numpy calls
    # per pick, and no similarity row after the last one.
    n = len(cand)
    a_live = a.copy()  # a, with -inf where already picked
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


def _mmr_loop(cand: np.ndarray, a: np.ndarray, b: float, v: np.ndarray, m: int) -> list[int]:
    """The plain MMR loop (any inputs, non-finite similarities included)."""
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


def knn_candidates(
    history: Sequence[int],
    neighbours: np.ndarray,
    similarities: np.ndarray,
    n_items: int,
    recent: int,
    per_item: int,
    decay: float = 0.8,
) -> dict[int, float]:
    """Item-KNN expansion of the most recent known items: score = sum of similarity * decay^age."""
    scores: dict[int, float] = {}
    known = [i for i in history if 0 <= i < n_items]
    for age, i in enumerate(reversed(known[-recent:])):
        w = decay**age
        for j, s in zip(neighbours[i, :per_item].tolist(), similarities[i, :per_item].tolist(), strict=True):
            if 0 <= j < n_items and s > 0:
                scores[j] = scores.get(j, 0.0) + w * float(s)
    return scores
