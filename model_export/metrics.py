"""Offline protocol: HR@k / NDCG@k under full ranking and 100 sampled negatives, shared by every method.

Full ranking scores every item except those already in the user's history; an item scoring *equal* to the
target counts as ranked ahead of it (pessimistic ties: ML-100K has many equal timestamps, and constant scores
must not look good).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from model_export.config import EvalConfig
from model_export.dataset import UserSeq, exclusion_mask

# (histories, exclude (B, N) bool) -> scores (B, N) float; excluded entries may be anything (they are masked).
ScoreFn = Callable[[Sequence[UserSeq], np.ndarray], np.ndarray]


def ranks_full(scores: np.ndarray, targets: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """0-based rank of each target among non-excluded items; ties count ahead; unknown targets rank N."""
    b, n = scores.shape
    s = np.where(exclude, -np.inf, scores.astype(np.float64))
    known = targets < n
    t = np.where(known, targets, 0)
    ts = s[np.arange(b), t]
    ahead = (s >= ts[:, None]).sum(1) - 1  # minus the target itself
    ahead = np.where(np.isfinite(ts), ahead, n)  # a target scored -inf (excluded / NaN-free) is a miss
    return np.where(known, ahead, n)


def ranks_sampled(scores: np.ndarray, targets: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """0-based rank of each target among its sampled negatives (B, S); ties count ahead."""
    b, n = scores.shape
    known = targets < n
    t = np.where(known, targets, 0)
    ts = scores[np.arange(b), t].astype(np.float64)
    ns = np.take_along_axis(scores, negatives, axis=1).astype(np.float64)
    ahead = (ns >= ts[:, None]).sum(1)
    return np.where(known & np.isfinite(ts), ahead, negatives.shape[1] + 1)


def sample_negatives(hist: Sequence[UserSeq], targets: np.ndarray, n_items: int, count: int, seed: int) -> np.ndarray:
    """(B, count) items drawn uniformly without replacement outside the history and the target."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(hist), count), dtype=np.int64)
    for r, s in enumerate(hist):
        banned = np.zeros(n_items, dtype=bool)
        banned[s.items[s.items < n_items]] = True
        if targets[r] < n_items:
            banned[targets[r]] = True
        allowed = np.flatnonzero(~banned)
        if len(allowed) < count:
            raise ValueError(f"user {s.user_id}: only {len(allowed)} candidate negatives, need {count}")
        out[r] = rng.choice(allowed, size=count, replace=False)
    return out


@dataclass(frozen=True)
class Result:
    """HR@k / NDCG@k of one method under one protocol."""

    hr: float
    ndcg: float
    users: int


def summarise(ranks: np.ndarray, k: int) -> Result:
    hit = ranks < k
    ndcg = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    return Result(float(hit.mean()), float(ndcg.mean()), len(ranks))


def evaluate(
    score_fn: ScoreFn,
    hist: Sequence[UserSeq],
    targets: np.ndarray,
    n_items: int,
    cfg: EvalConfig,
    batch_size: int = 256,
    negatives: np.ndarray | None = None,
) -> dict[str, Result]:
    """Run `score_fn` over all users in batches; {'full': ..., 'sampled': ...}."""
    if negatives is None:
        negatives = sample_negatives(hist, targets, n_items, cfg.sampled_negatives, cfg.sample_seed)
    full, sampled = [], []
    for a in range(0, len(hist), batch_size):
        h = hist[a : a + batch_size]
        t = targets[a : a + batch_size]
        ex = exclusion_mask(h, n_items, t)
        sc = np.asarray(score_fn(h, ex), dtype=np.float32)
        if sc.shape != (len(h), n_items):
            raise ValueError(f"score function returned {sc.shape}, expected {(len(h), n_items)}")
        full.append(ranks_full(sc, t, ex))
        sampled.append(ranks_sampled(sc, t, negatives[a : a + batch_size]))
    return {
        "full": summarise(np.concatenate(full), cfg.k),
        "sampled": summarise(np.concatenate(sampled), cfg.k),
    }
