"""MostPop and item-KNN "scorers" with the `Scorer.score` interface, so the replay can run the very same
operator (dedup, filters, debounce, re-rank) with a baseline in place of the ONNX model. They have no next-item
log-probs: `need_logprob` is accepted and ignored, results carry an empty array."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from operators.scorer import ScoreRequest, ScoreResult

if TYPE_CHECKING:
    from model_export.artifact import ModelArtifact


def _topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, len(scores))
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.lexsort((idx, -scores[idx]))]
    return idx.astype(np.int64), scores[idx].astype(np.float32)


class _Base:
    def __init__(self, artifact: ModelArtifact) -> None:
        self.n_items = artifact.n_items
        self.top_k = artifact.top_k
        self.dim = artifact.item_embeddings.shape[1]
        self.version = artifact.version

    def _mask(self, req: ScoreRequest, scores: np.ndarray) -> np.ndarray:
        s = scores.astype(np.float64)  # astype copies
        if req.extra_exclude is not None:
            s[req.extra_exclude] = -np.inf
        ex = np.asarray(req.exclude, dtype=np.int64)
        s[ex[(ex >= 0) & (ex < self.n_items)]] = -np.inf
        return s

    def _result(self, req: ScoreRequest, scores: np.ndarray) -> ScoreResult:
        items, sc = _topk(self._mask(req, scores), self.top_k)
        return ScoreResult(items, sc, np.zeros(0, np.float32), np.zeros(self.dim, np.float32))


class MostPopScorer(_Base):
    """Training-set popularity (the artefact's popular list), the same for everyone."""

    def __init__(self, artifact: ModelArtifact) -> None:
        super().__init__(artifact)
        self.pop = np.full(self.n_items, -1e9)
        self.pop[artifact.popular] = artifact.popular_counts

    def score(self, batch: Sequence[ScoreRequest], need_logprob: bool = False) -> list[ScoreResult]:
        return [self._result(r, self.pop) for r in batch]


class ItemKNNScorer(_Base):
    """Sum of cosine similarities to the recent items (window and recency decay as tuned at training)."""

    def __init__(self, artifact: ModelArtifact) -> None:
        super().__init__(artifact)
        self.nb = artifact.knn_neighbours
        self.sim = artifact.knn_similarities
        self.window = int(artifact.blend.get("knn_window", 5))
        self.decay = float(artifact.blend.get("knn_decay", 0.8))

    def score(self, batch: Sequence[ScoreRequest], need_logprob: bool = False) -> list[ScoreResult]:
        out = []
        for r in batch:
            s = np.zeros(self.n_items)
            known = [i for i in r.items if 0 <= i < self.n_items][-self.window :]
            for age, i in enumerate(reversed(known)):
                nb = self.nb[i]
                ok = (nb >= 0) & (nb < self.n_items)
                np.add.at(s, nb[ok], self.decay**age * self.sim[i][ok])
            out.append(self._result(r, s))
        return out
