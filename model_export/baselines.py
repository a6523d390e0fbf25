"""Offline baselines on the same split: MostPop and recency-weighted item-KNN.

Item-KNN: cosine similarity over user-level co-occurrence of the training interactions (Sarwar et al.,
WWW 2001;
Deshpande & Karypis, TOIS 2004), top-M neighbours per item; a user's score for item j sums the similarities
from their most recent `window` items, weighted decay**age. Window and decay are tuned on validation targets.
The neighbour lists double as the CF candidate source in the artefact and as the KNN half of the blend graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_export.config import EvalConfig, KNNConfig
from model_export.dataset import UserSeq, left_pad
from model_export.metrics import ScoreFn, evaluate, sample_negatives


def popularity(train: Sequence[UserSeq], n_items: int) -> np.ndarray:
    """(N,) training interaction counts."""
    cnt = np.zeros(n_items, dtype=np.float64)
    for s in train:
        np.add.at(cnt, s.items[s.items < n_items], 1.0)
    return cnt


def item_neighbours(
    train: Sequence[UserSeq], n_items: int, top_m: int, shrink: float = 0.0, block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Top-M cosine neighbours per item: idx (N, M) int64, sim (N, M) float32, best first, self excluded.

    NOTE: builds a dense users x items matrix and item blocks of co-occurrence; fine for ML-100K/ML-1M, a
    sparse product is needed for catalogues of 10^5+ items.
    """
    x = np.zeros((len(train), n_items), dtype=np.float32)
    for r, s in enumerate(train):
        x[r, s.items[s.items < n_items]] = 1.0  # binary: repeats count once
    cnt = x.sum(0)  # (N,)
    norm = np.sqrt(cnt)
    m = min(top_m, max(n_items - 1, 1))
    idx = np.zeros((n_items, m), dtype=np.int64)
    sim = np.zeros((n_items, m), dtype=np.float32)
    for a in range(0, n_items, block):
        co = x[:, a : a + block].T @ x  # (b, N)
        s = co / (norm[a : a + block, None] * norm[None, :] + shrink + 1e-12)
        s[np.arange(s.shape[0]), np.arange(a, a + s.shape[0])] = 0.0  # no self-similarity
        part = np.argpartition(-s, m - 1, axis=1)[:, :m] if m < n_items else np.tile(np.arange(n_items), (len(s), 1))
        ps = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        idx[a : a + block] = np.take_along_axis(part, order, axis=1)
        sim[a : a + block] = np.take_along_axis(ps, order, axis=1)
    return idx, sim


def knn_scores(
    items: np.ndarray, nbr_idx: np.ndarray, nbr_sim: np.ndarray, n_items: int, window: int, decay: float
) -> np.ndarray:
    """items (B, L) left-padded (indices >= n_items are pad/unknown) -> (B, N) recency-weighted KNN scores."""
    b, length = items.shape
    age = np.arange(length - 1, -1, -1, dtype=np.float64)  # (L,) 0 for the newest
    w = np.where(age < window, decay**age, 0.0)[None, :] * (items < n_items)  # (B, L)
    safe = np.where(items < n_items, items, 0)
    vals = nbr_sim[safe] * w[..., None]  # (B, L, M)
    cols = nbr_idx[safe] + (np.arange(b) * n_items)[:, None, None]
    out = np.bincount(cols.ravel(), weights=vals.ravel(), minlength=b * n_items)
    return out.reshape(b, n_items).astype(np.float32)


@dataclass(frozen=True)
class KNNModel:
    """Tuned item-KNN."""

    nbr_idx: np.ndarray  # (N, M) int64
    nbr_sim: np.ndarray  # (N, M) float32
    window: int  # recent items used
    decay: float  # weight per step of age
    valid_ndcg: float  # validation NDCG@k at the chosen setting
    grid: dict[str, float]  # "window=..,decay=.." -> validation NDCG@k (what moved the number)

    def score_fn(self, n_items: int) -> ScoreFn:
        """This model as a `metrics.evaluate` score function."""

        def fn(hist: Sequence[UserSeq], _exclude: np.ndarray) -> np.ndarray:
            return self.score(hist, n_items)

        return fn

    def score(self, hist: Sequence[UserSeq], n_items: int) -> np.ndarray:
        items, _, _ = left_pad(hist, max(self.window, 1), n_items)
        return knn_scores(items, self.nbr_idx, self.nbr_sim, n_items, self.window, self.decay)


def tune_knn(
    train: Sequence[UserSeq],
    valid_hist: Sequence[UserSeq],
    valid_tgt: np.ndarray,
    n_items: int,
    cfg: KNNConfig,
    ecfg: EvalConfig,
    max_window: int | None = None,
) -> KNNModel:
    """Grid over window x decay on the validation targets (full-ranking NDCG@k); `max_window` caps the window
    (the in-graph KNN sees at most max_len items)."""
    nbr_idx, nbr_sim = item_neighbours(train, n_items, cfg.neighbours, cfg.shrink)
    negs = sample_negatives(valid_hist, valid_tgt, n_items, ecfg.sampled_negatives, ecfg.sample_seed)
    windows = sorted({min(w, max_window) if max_window else w for w in cfg.windows})
    grid: dict[str, float] = {}
    best: tuple[float, int, float] = (-1.0, windows[0], cfg.decays[0])
    for w in windows:
        for d in cfg.decays:
            m = KNNModel(nbr_idx, nbr_sim, w, d, 0.0, {})
            res = evaluate(m.score_fn(n_items), valid_hist, valid_tgt, n_items, ecfg, negatives=negs)
            grid[f"window={w},decay={d}"] = res["full"].ndcg
            if res["full"].ndcg > best[0]:
                best = (res["full"].ndcg, w, d)
    return KNNModel(nbr_idx, nbr_sim, best[1], best[2], best[0], grid)
