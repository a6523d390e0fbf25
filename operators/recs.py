"""Recommendation list building blocks: diversity re-rank (MMR), intra-list diversity, cold-start fallback.

The re-rank and the diversity score take many lists at once (`mmr_many`, `intra_list_diversity_many`); the
one-list functions are those called with one list."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

import numpy as np


def normalise_rows(emb: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero), for cosine similarities."""
    e = np.asarray(emb, dtype=np.float32)
    n = np.linalg.norm(e, axis=1, keepdims=True)
    return np.where(n > 0, e / np.maximum(n, 1e-12), 0.0).astype(np.float32)


Ids = Sequence[int] | np.ndarray
Scores = Sequence[float] | np.ndarray


def intra_list_diversity(items: Ids, unit_emb: np.ndarray) -> float:
    """Mean pairwise cosine distance (1 - cos) of the list's item embeddings; 0 for fewer than 2 items."""
    return intra_list_diversity_many([items], unit_emb)[0]


def intra_list_diversity_many(lists: Sequence[Ids], unit_emb: np.ndarray) -> list[float]:
    """`intra_list_diversity` of each list: one stacked similarity product per group of equal-length lists."""
    out = [0.0] * len(lists)
    lens, (items,) = _flatten([lists], [np.int64])
    for n, rows, (idx,) in _by_length(lens, items):
        if n < 2:
            continue
        v = unit_emb.take(idx, axis=0)  # (G, n, d)
        sim = v @ v.transpose(0, 2, 1)  # (G, n, n): per list the product `v @ v.T` of one list alone
        ild = (n * n - sim.reshape(len(rows), n * n).sum(axis=1)) / (n * (n - 1))  # float32 for float32 rows
        for i, x in zip(rows, ild.tolist(), strict=True):
            out[i] = x
    return out


def mmr(candidates: Ids, relevance: Scores, unit_emb: np.ndarray, k: int, lam: float) -> list[int]:
    """Maximal marginal relevance: pick argmax lam * rel - (1 - lam) * max cos(item, picked), k times.

    Relevance is min-max normalised over the candidates so `lam` means the same for any score scale;
    lam = 1 returns the candidates in relevance order. Candidates with non-finite relevance are dropped.
    """
    return mmr_many([candidates], [relevance], unit_emb, k, lam)[0]


def mmr_many(
    candidate_lists: Sequence[Ids], relevance_lists: Sequence[Scores], unit_emb: np.ndarray, k: int, lam: float
) -> list[list[int]]:
    """`mmr` of each (candidates, relevance) pair, the lists re-ranked together (any lengths, empty ones too).

    Lists of one length go through the loop together, one numpy call per step for all of them. With 50
    candidates, k = 10, d = 64 (`python -m tests.unit.operators.test_recs_batch`): 34 µs a list one at a time
    before batching; 12 µs a list in batches of 8, 7 in batches of 32-64, 55 for one list alone. numpy arrays in
    place of python lists skip most of the input conversion (1.5-2 µs a list).

    NOTE: equal-length lists are stacked, not padded to one width, so that each list's similarities come from
    the BLAS call the list alone makes (a matrix-vector product on its own (n, d) candidates), bit for bit,
    whatever else is in the batch. Padded, they would not: OpenBLAS takes a matrix's rows in blocks of 4, 2 and 1
    with different kernels, so a row's last bit depends on the matrix's height, and a last-bit change in a
    similarity turns ties (duplicate embeddings) and near-ties the other way.
    """
    out: list[list[int]] = [[] for _ in candidate_lists]
    if k <= 0 or not out:
        return out
    lens, (cand, rel) = _flatten([candidate_lists, relevance_lists], [np.int64, np.float64])
    finite = np.isfinite(rel)
    if not finite.all():
        lens = np.bincount(np.repeat(np.arange(len(lens)), lens)[finite], minlength=len(lens)).tolist()
        cand, rel = cand[finite], rel[finite]
    b = 1.0 - lam
    for n, rows, (c, r) in _by_length(lens, cand, rel):  # c, r: (G, n)
        lo = r.min(axis=1, keepdims=True)
        span = r.max(axis=1, keepdims=True) - lo
        r = np.divide(r - lo, span, out=np.ones_like(r), where=span > 0)  # all 1 in a list of equal relevances
        if lam >= 1.0:
            picks = np.argsort(-r, axis=1, kind="stable")[:, :k]
        else:
            picks = _mmr_picks(lam * r, b, unit_emb.take(c, axis=0), min(k, n))
        chosen = c[np.arange(len(rows))[:, None], picks].tolist()
        for i, row in zip(rows, chosen, strict=True):
            out[i] = row
    return out


def _mmr_picks(a: np.ndarray, b: float, v: np.ndarray, m: int) -> np.ndarray:
    """Positions (G, m) MMR picks in G lists of one length: a = lam * relevance (G, n), v the embeddings
    (G, n, d). Lists whose similarities could be non-finite, or all when b is, take `_mmr_loop`."""
    g = len(a)
    if not math.isfinite(b):
        fast = np.zeros(g, dtype=bool)
    elif v.size == 0 or (float(v.max()) < 1e15 and float(v.min()) > -1e15):
        return _mmr_rows(a, b, v, m)
    else:  # np.float64 thresholds: compared in float64, as the python floats above are
        flat = v.reshape(g, -1)
        fast = (flat.max(axis=1) < np.float64(1e15)) & (flat.min(axis=1) > np.float64(-1e15))
    picks = np.zeros((g, m), dtype=np.int64)
    if fast.any():
        picks[fast] = _mmr_rows(a[fast], b, v[fast], m)
    for i in np.flatnonzero(~fast).tolist():
        picks[i] = _mmr_loop(a[i], b, v[i], m)
    return picks


def _mmr_rows(a: np.ndarray, b: float, v: np.ndarray, m: int) -> np.ndarray:
    """`_mmr_loop` on G lists at once, for a finite b and embeddings with |x| < 1e15.

    Every cosine is finite here (|x| < 1e15 in float32: no dot product overflows), so `red` is `max_sim` and a
    picked item's -inf relevance stays -inf: the values are exactly `_mmr_loop`'s with fewer numpy calls per pick,
    and no similarity row after the last one.
    """
    g, n = a.shape
    at_row = np.arange(g) * n  # flat index of each list's first candidate
    a_live = a.copy()  # a, with -inf where already picked
    a_flat = a_live.reshape(-1)
    v_flat = v.reshape(g * n, v.shape[2])
    tmp = np.empty((g, n))
    sims = np.empty((g, n, 1), dtype=v.dtype)
    sims_2d = sims[:, :, 0]
    picks = np.empty((g, m), dtype=np.int64)
    val = a  # the first pick: no redundancy yet (a - b * 0 is a)
    for it in range(m):
        j = val.argmax(axis=1)
        picks[:, it] = j
        if it + 1 == m:
            break
        j += at_row
        a_flat[j] = -np.inf
        np.matmul(v, v_flat.take(j, axis=0)[:, :, None], out=sims)  # per list `v @ v[j]`: (n, d) @ (d,)
        if it == 0:
            red = sims_2d.astype(np.float64)
            val = np.empty((g, n))
        else:
            np.maximum(red, sims_2d, out=red)
        np.subtract(a_live, np.multiply(b, red, out=tmp), out=val)
    return picks


def _mmr_loop(a: np.ndarray, b: float, v: np.ndarray, m: int) -> list[int]:
    """The plain MMR loop on one list (any inputs, non-finite similarities included): positions picked."""
    max_sim = np.full(len(a), -np.inf)
    chosen = np.zeros(len(a), dtype=bool)
    out: list[int] = []
    for _ in range(m):
        red = np.where(np.isfinite(max_sim), max_sim, 0.0)
        val = a - b * red
        val[chosen] = -np.inf
        j = int(np.argmax(val))
        chosen[j] = True
        out.append(j)
        max_sim = np.maximum(max_sim, v @ v[j])
    return out


def _flatten(columns: Sequence[Sequence[Any]], dtypes: Sequence[type]) -> tuple[list[int], list[np.ndarray]]:
    """The lists' lengths and each column's lists concatenated (a column per argument: ids, scores)."""
    lens = [len(x) for x in columns[0]]
    flat = []
    for col, dt in zip(columns, dtypes, strict=True):
        if [len(x) for x in col] != lens:
            raise ValueError("each candidate list needs one relevance per candidate")
        if col and all(type(x) is list for x in col):  # plain lists of numbers: one conversion of them all
            joined: np.ndarray | None
            try:
                joined = np.asarray(list(chain.from_iterable(col)), dtype=dt)
            except (ValueError, TypeError):  # nested, ragged: each list alone below, as before
                joined = None
            if joined is not None and joined.ndim == 1:
                flat.append(joined)
                continue
        arrays: list[np.ndarray] = [np.asarray(x, dtype=dt).reshape(-1) for x in col]
        flat.append(arrays[0] if len(arrays) == 1 else np.concatenate(arrays) if arrays else np.empty(0, dt))
    return lens, flat


def _by_length(lens: list[int], *flat: np.ndarray) -> Iterator[tuple[int, list[int], list[np.ndarray]]]:
    """Groups of the non-empty lists of one length n: (n, their positions, each flat array's rows as (G, n))."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lens):
        if n:
            groups.setdefault(n, []).append(i)
    if len(groups) == 1 and len(lens) == len(next(iter(groups.values()))):  # one length: reshaped, no copies
        n, rows = next(iter(groups.items()))
        yield n, rows, [x.reshape(len(rows), n) for x in flat]
        return
    starts = np.cumsum([0, *lens[:-1]])
    for n, rows in groups.items():
        idx = starts[rows][:, None] + np.arange(n)
        yield n, rows, [x[idx] for x in flat]


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
