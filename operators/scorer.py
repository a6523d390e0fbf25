"""Batch scoring over the artefact's ONNX graph: one onnxruntime session per worker, batches of any size.

Requests carry model indices (unknown items already mapped to the artefact's unknown index); the scorer
left-pads them to a common length, builds the exclusion mask and splits the outputs back per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from model_export.artifact import ModelArtifact


@dataclass(frozen=True)
class ScoreRequest:
    """One user's recent history, oldest first (at most max_len are used: the newest)."""

    items: Sequence[int]  # model indices (unknown index for items the model has not seen)
    types: Sequence[int]  # 1-based event types
    ts: Sequence[int]  # event times (ms)
    exclude: Sequence[int] = ()  # item indices never to return (consumed, filtered)
    extra_exclude: np.ndarray | None = field(default=None, compare=False)  # (n_items,) bool, e.g. business


@dataclass(frozen=True)
class ScoreResult:
    items: np.ndarray  # (K,) int64 best-first candidate indices (excluded items never appear)
    scores: np.ndarray  # (K,) float32 blended log-scores (-inf: fewer than K allowed items)
    next_item_logprob: np.ndarray  # (n-1,) float32 log P(item[t+1] | items[..t]); 0 where undefined
    user_vector: np.ndarray  # (d,) float32


class Scorer:
    """onnxruntime over model.onnx (or model.int8.onnx); create once per worker, reuse for every batch."""

    def __init__(self, artifact: ModelArtifact, int8: bool = False, threads: int = 1) -> None:
        import onnxruntime as ort

        path = artifact.int8_path if int8 else artifact.model_path
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = tuple(i.name for i in self.session.get_inputs())
        want = tuple(i["name"] for i in artifact.inputs)
        if names != want:
            raise ValueError(f"{path}: graph inputs {names} do not match the artefact's {want}")
        self.output_names = [o["name"] for o in artifact.outputs]
        self.n_items = artifact.n_items
        self.pad = artifact.pad_index
        self.unk = artifact.unknown_index
        self.max_len = artifact.max_len
        self.version = artifact.version
        self.int8 = int8

    def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        if not batch:
            return []
        if len(batch) == 1:
            return [self._score_one(batch[0])]
        return self._score_batch(batch)

    def _score_batch(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Any batch size: left-pad to the longest history, one exclusion row per request."""
        lens = [min(len(r.items), self.max_len) for r in batch]
        width = max(1, max(lens))
        b = len(batch)
        items = np.full((b, width), self.pad, dtype=np.int64)
        types = np.zeros((b, width), dtype=np.int64)
        ts = np.zeros((b, width), dtype=np.int64)
        exclude = np.zeros((b, self.n_items), dtype=bool)
        for r, (req, n) in enumerate(zip(batch, lens, strict=True)):
            if n:
                it = np.asarray(req.items[-n:], dtype=np.int64)
                it[(it < 0) | (it > self.unk)] = self.unk
                items[r, width - n :] = it
                types[r, width - n :] = np.asarray(req.types[-n:], dtype=np.int64)
                ts[r, width - n :] = np.asarray(req.ts[-n:], dtype=np.int64)
            if req.extra_exclude is not None:
                exclude[r] |= req.extra_exclude
            ex = np.asarray(req.exclude, dtype=np.int64)
            ex = ex[(ex >= 0) & (ex < self.n_items)]
            exclude[r, ex] = True
        feeds = {"item_idx": items, "event_type": types, "ts_ms": ts, "exclude": exclude}
        want = ["topk_items", "topk_scores", "user_vector", "next_item_logprob"]
        out: dict[str, Any] = dict(zip(want, self.session.run(want, feeds), strict=True))
        res = []
        for r, n in enumerate(lens):
            lp = out["next_item_logprob"][r]
            res.append(
                ScoreResult(
                    items=out["topk_items"][r],
                    scores=out["topk_scores"][r],
                    next_item_logprob=lp[lp.shape[0] - max(n - 1, 0) :] if n > 1 else lp[:0],
                    user_vector=out["user_vector"][r],
                )
            )
        return res

    def _score_one(self, req: ScoreRequest) -> ScoreResult:
        """`score` for a batch of one (the per-event path): the same graph inputs, built with fewer numpy calls
        (no padding is needed, the exclusion row starts as a copy of `extra_exclude`)."""
        n = min(len(req.items), self.max_len)
        if n:
            it = np.array(req.items[-n:], dtype=np.int64)
            bad = (it < 0) | (it > self.unk)
            if bad.any():
                it[bad] = self.unk
            items = it.reshape(1, n)
            types = np.array(req.types[-n:], dtype=np.int64).reshape(1, n)
            ts = np.array(req.ts[-n:], dtype=np.int64).reshape(1, n)
        else:
            items = np.full((1, 1), self.pad, dtype=np.int64)
            types = np.zeros((1, 1), dtype=np.int64)
            ts = np.zeros((1, 1), dtype=np.int64)
        extra = req.extra_exclude
        if isinstance(extra, np.ndarray) and extra.dtype == np.bool_ and extra.shape == (self.n_items,):
            exclude = extra.reshape(1, self.n_items).copy()
        else:
            exclude = np.zeros((1, self.n_items), dtype=bool)
            if extra is not None:
                exclude[0] |= extra
        if len(req.exclude):
            ex = np.asarray(req.exclude, dtype=np.int64)
            ex = ex[(ex >= 0) & (ex < self.n_items)]
            exclude[0, ex] = True
        feeds = {"item_idx": items, "event_type": types, "ts_ms": ts, "exclude": exclude}
        top_items, top_scores, user_vector, lp_all = self.session.run(_WANT, feeds)
        lp = lp_all[0]
        return ScoreResult(
            items=top_items[0],
            scores=top_scores[0],
            next_item_logprob=lp[lp.shape[0] - max(n - 1, 0) :] if n > 1 else lp[:0],
            user_vector=user_vector[0],
        )


_WANT = ["topk_items", "topk_scores", "user_vector", "next_item_logprob"]
