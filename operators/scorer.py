"""Batch scoring over the artefact's ONNX graphs: onnxruntime sessions per worker, batches of any size.

Requests carry model indices (unknown items already mapped to the artefact's unknown index); the scorer
left-pads them to a common length, builds the exclusion mask and splits the outputs back per request.

Padding width and determinism (`canonical`, on by default): onnxruntime's results for a row depend in their last
float bits on how far the row is padded (its attention reductions run over the padded width; measured 2026-12-05 on
an AVX2-only host: user vectors, scores and log-probs of one history differ between widths n, n+1, n+3 and 50, and
not between batch sizes at one width). Padded to the longest row of whatever batch it lands in, a user's log-probs,
and so the model-surprise detector's state, would depend on the batching. So each history is padded to its length
class's width (`canonical_width`: 7, 15, 31, then `max_len`), and a graph call holds one class only: a row's outputs
are a function of the row alone, whatever its batch or call. What it costs, side by side on that host (scorer alone,
µs per request, batches of 1 / 5 / 20, histories of 1-50 positions): 5-17 % more than padding to each call's longest
with `split_cost` 32, up to 24 % for batches of five short histories; the per-event replay of 30,000 simulated events
5-9 % slower (1,115 / 967 vs 1,219 / 1,016 events/s, two alternating rounds; same lists, same flags).
`canonical=False`: the rows of a call are padded to its longest and `split_cost` decides the calls (fewer calls,
less padding; results exact only on hosts whose kernels happen not to depend on the width).

Two graphs of the same model: the fast one (model.topk.onnx: top-K from the last position only) serves every list;
the full one (model.onnx: also the next-item log-probs of every position, (B, L, N) work) runs only when the caller
needs those log-probs (the model-surprise detector), or when the artefact predates the fast graph. The tables both
graphs hold (item-KNN neighbours and similarities: most of a large catalogue's model) are in memory once, shared by
the two sessions (`shared_initializers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from model_export.artifact import ModelArtifact
    from operators.config import ScorerConf


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
    # (n-1,) float32 log P(item[t+1] | items[..t]); 0 where undefined. Only from the full graph: empty (shape (0,))
    # when the fast graph scored the request (`Scorer.score(..., need_logprob=False)` on an artefact that has one)
    next_item_logprob: np.ndarray
    user_vector: np.ndarray  # (d,) float32


class Scorer:
    """onnxruntime over model.onnx and model.topk.onnx (or their int8 versions); create once per worker, reuse for
    every batch. `session` is the full graph's, `topk_session` the fast graph's (None: the artefact has none)."""

    def __init__(self, artifact: ModelArtifact, int8: bool = False, threads: int = 1,
                 share_tables: bool = True, split_cost: int = 0, canonical: bool = True,
                 call_rows: int = 0) -> None:  # fmt: skip
        import onnxruntime as ort

        if split_cost < 0:
            raise ValueError(f"split_cost must be >= 0 (0: one graph call per batch), got {split_cost}")
        if call_rows < 0:
            raise ValueError(f"call_rows must be >= 0 (0: no cap on a graph call's rows), got {call_rows}")
        want = tuple(i["name"] for i in artifact.inputs)
        full = artifact.int8_path if int8 else artifact.model_path
        topk = artifact.topk_int8_path if int8 else artifact.topk_path
        # The two graphs hold the same big tables (item-KNN neighbours and similarities), and so does the artefact
        # (the operator's cold-start candidates): one copy, the artefact's, given to both sessions (without this
        # the tables are in memory three times). `share_tables=False`: each session loads its own (the bench
        # measures the difference).
        self._shared = shared_initializers([full, topk], known=artifact.knn_graph_tables) if share_tables else {}

        def open_session(path: Path, outputs: tuple[str, ...]) -> Any:
            so = ort.SessionOptions()
            so.intra_op_num_threads = max(1, int(threads))
            so.inter_op_num_threads = 1
            for name, value in self._shared.get(path, {}).items():
                so.add_initializer(name, value)
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            names = tuple(i.name for i in sess.get_inputs())
            if names != want:
                raise ValueError(f"{path}: graph inputs {names} do not match the artefact's {want}")
            got = tuple(o.name for o in sess.get_outputs())
            if not set(outputs) <= set(got):
                raise ValueError(f"{path}: graph outputs {got} lack {sorted(set(outputs) - set(got))}")
            return sess

        self.session = open_session(full, _WANT_FULL)
        self.topk_session: Any = open_session(topk, _WANT_TOPK) if topk is not None else None
        self.n_items = artifact.n_items
        self.pad = artifact.pad_index
        self.unk = artifact.unknown_index
        self.max_len = artifact.max_len
        self.version = artifact.version
        self.int8 = int8
        self.split_cost = int(split_cost)
        self.canonical = bool(canonical)
        self.call_rows = int(call_rows)
        release_freed_heap()

    @classmethod
    def from_conf(cls, artifact: ModelArtifact, conf: ScorerConf, int8: bool, threads: int) -> Scorer:
        """A scorer with the call shaping of `conf` (conf/operators.yaml `scorer`); `int8` and `threads` come from
        whoever runs it (the job's conf, the replay's flags)."""
        return cls(artifact, int8=int8, threads=threads, split_cost=conf.split_cost, canonical=conf.canonical_widths,
                   call_rows=conf.call_rows)  # fmt: skip

    def score(self, batch: Sequence[ScoreRequest], need_logprob: bool = False) -> list[ScoreResult]:
        """Top-K per request. The fast graph unless `need_logprob` (or the artefact has no fast graph): then the
        full graph, whose results also carry `next_item_logprob` (empty otherwise). Items, scores and user vectors
        are the same from either graph (up to float noise)."""
        if not batch:
            return []
        if len(batch) == 1:
            return [self._score_one(batch[0], need_logprob)]
        return self._score_batch(batch, need_logprob)

    def _graph(self, need_logprob: bool) -> tuple[Any, list[str]]:
        """(session, outputs to fetch, in order) for a call."""
        if need_logprob or self.topk_session is None:
            return self.session, list(_WANT_FULL)
        return self.topk_session, list(_WANT_TOPK)

    def _score_batch(self, batch: Sequence[ScoreRequest], need_logprob: bool = False) -> list[ScoreResult]:
        """Any batch size, in one call per group of rows (`canonical`: per length class, `width_classes`; else
        rows of similar history length, `split_groups`); each result in its request's place."""
        lens = [min(len(r.items), self.max_len) for r in batch]
        groups = width_classes(lens, self.max_len) if self.canonical else split_groups(lens, self.split_cost)
        if len(groups) == 1:
            return self._call_batch(batch, need_logprob)
        out: list[ScoreResult | None] = [None] * len(batch)
        for g in groups:
            got = ([self._score_one(batch[g[0]], need_logprob)] if len(g) == 1
                   else self._call_batch([batch[i] for i in g], need_logprob))  # fmt: skip
            for i, res in zip(g, got, strict=True):
                out[i] = res
        return cast(list[ScoreResult], out)

    def _call_batch(self, batch: Sequence[ScoreRequest], need_logprob: bool = False) -> list[ScoreResult]:
        """One graph call for the batch: left-pad to the longest history (`canonical`: to its length class's width,
        the same for every row of a call `_score_batch` makes), one exclusion row per request."""
        lens = [min(len(r.items), self.max_len) for r in batch]
        width = max(1, max(lens))
        if self.canonical:
            width = canonical_width(width, self.max_len)
        b = len(batch)
        items = np.full((b, width), self.pad, dtype=np.int64)
        types = np.zeros((b, width), dtype=np.int64)
        ts = np.zeros((b, width), dtype=np.int64)
        exclude = np.zeros((b, self.n_items), dtype=bool)
        # every row's history at once: the rows' last n entries, concatenated in row order, fill the positions
        # `width - n ..` of their rows (a row-major boolean mask takes them in that order)
        flat_items: list[int] = []
        flat_types: list[int] = []
        flat_ts: list[int] = []
        flat_ex: list[int] = []
        ex_rows: list[int] = []
        shared_extra = batch[0].extra_exclude
        for r, (req, n) in enumerate(zip(batch, lens, strict=True)):
            if n:
                flat_items += req.items[-n:]
                flat_types += req.types[-n:]
                flat_ts += req.ts[-n:]
            if req.extra_exclude is not shared_extra:
                shared_extra = None
            flat_ex += req.exclude
            ex_rows += [r] * len(req.exclude)
        if flat_items:
            mask = np.arange(width) >= (width - np.asarray(lens))[:, None]
            it = np.asarray(flat_items, dtype=np.int64)
            it[(it < 0) | (it > self.unk)] = self.unk
            items[mask] = it
            types[mask] = np.asarray(flat_types, dtype=np.int64)
            ts[mask] = np.asarray(flat_ts, dtype=np.int64)
        if shared_extra is not None:  # the same row for every request (the operator's static exclusions)
            exclude |= shared_extra
        else:
            for r, req in enumerate(batch):
                if req.extra_exclude is not None:
                    exclude[r] |= req.extra_exclude
        if flat_ex:
            ex = np.asarray(flat_ex, dtype=np.int64)
            keep = (ex >= 0) & (ex < self.n_items)
            exclude[np.asarray(ex_rows)[keep], ex[keep]] = True
        feeds = {"item_idx": items, "event_type": types, "ts_ms": ts, "exclude": exclude}
        session, want = self._graph(need_logprob)
        out: dict[str, Any] = dict(zip(want, self._run(session, want, feeds, b), strict=True))
        lp_all = out.get("next_item_logprob")
        res = []
        for r, n in enumerate(lens):
            res.append(
                ScoreResult(
                    items=out["topk_items"][r],
                    scores=out["topk_scores"][r],
                    next_item_logprob=_no_logprob() if lp_all is None else _tail(lp_all[r], n),
                    user_vector=out["user_vector"][r],
                )
            )
        return res

    def _run(self, session: Any, want: list[str], feeds: dict[str, np.ndarray], b: int) -> list[np.ndarray]:
        """The graph over a batch's `b` rows: one call, or with `call_rows` calls of at most that many rows (as
        equal as can be), their outputs joined in row order. Per row, a call of 8-16 rows costs less than one of 64
        or more (the (B, N) score arrays then outgrow the core's cache: measured below, `call_rows` in
        conf/operators.yaml); a row's outputs are the same whatever its call's size (every input is per row)."""
        cap = self.call_rows
        if not cap or b <= cap:
            return cast(list[np.ndarray], session.run(want, feeds))
        calls = -(-b // cap)
        size = -(-b // calls)
        parts = [session.run(want, {k: v[i : i + size] for k, v in feeds.items()}) for i in range(0, b, size)]
        return [np.concatenate(col) for col in zip(*parts, strict=True)]

    def _score_one(self, req: ScoreRequest, need_logprob: bool = False) -> ScoreResult:
        """`score` for a batch of one (the per-event path): the same graph inputs, built with fewer numpy calls
        (no padding unless `canonical`; the exclusion row starts as a copy of `extra_exclude`)."""
        n = min(len(req.items), self.max_len)
        width = canonical_width(n, self.max_len) if self.canonical else max(n, 1)
        if width > max(n, 1):  # padding needed: built as a batch's rows are (an empty history too)
            return self._call_batch([req], need_logprob)[0]
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
        session, want = self._graph(need_logprob)
        got = session.run(want, feeds)  # [topk_items, topk_scores, user_vector(, next_item_logprob)], as `want`
        return ScoreResult(
            items=got[0][0],
            scores=got[1][0],
            next_item_logprob=_tail(got[3][0], n) if len(want) > 3 else _no_logprob(),
            user_vector=got[2][0],
        )


def canonical_width(n: int, max_len: int) -> int:
    """The width a history of `n` positions is padded to when results must not depend on the batch: the longest of
    its length class (classes 0-7, 8-15, 16-31, 32-: above 7 positions at most twice its length), at most `max_len`.
    Histories under 7 share one class: a few padded positions cost less than another graph call."""
    return min(max(7, (1 << max(n, 1).bit_length()) - 1), max_len)


def width_classes(lens: Sequence[int], max_len: int) -> list[list[int]]:
    """A batch's rows (by position) grouped by `canonical_width`: one graph call per group, every row padded to its
    class's width; groups shortest first, rows in the given order within each."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lens):
        groups.setdefault(canonical_width(n, max_len), []).append(i)
    return [groups[w] for w in sorted(groups)]


def split_groups(lens: Sequence[int], cost: int) -> list[list[int]]:
    """A batch's rows (by position) split into graph calls by history length: each call pads its rows to its longest
    one, and every padded position costs what a real one does (the transformer and the item-KNN gathers run over it),
    so rows of very different lengths are better scored apart, as long as the padding saved outweighs a call's fixed
    cost. `lens`: each row's history length (positions); `cost`: a call's fixed cost in positions of one row (0: one
    call for the whole batch). Rows are grouped by length class (1, 2, 3-4, 5-8, ...: within a class, padding at most
    doubles a row), and neighbouring classes merged where that is cheaper: the partition of least total cost
    (`cost` + rows x longest, per call; a dynamic programme over the classes). Every row is in exactly one group; a
    batch of one length class is one group, in the given order."""
    n = len(lens)
    if cost <= 0 or n < 2:
        return [list(range(n))]
    classes: dict[int, list[int]] = {}
    for i in sorted(range(n), key=lambda r: lens[r]):
        classes.setdefault(max(lens[i], 1).bit_length(), []).append(i)
    if len(classes) == 1:
        return [list(range(n))]
    groups = list(classes.values())  # shortest class first (insertion follows the sort)
    m = len(groups)
    best = [0.0] + [float("inf")] * m  # best[j]: least cost of the first j classes
    cut = [0] * (m + 1)  # the first class of the last call in that best partition
    for j in range(1, m + 1):
        width = max(lens[groups[j - 1][-1]], 1)  # the longest row of classes i..j-1
        rows = 0
        for i in range(j, 0, -1):
            rows += len(groups[i - 1])
            c = best[i - 1] + cost + rows * width
            if c < best[j]:
                best[j], cut[j] = c, i - 1
    out: list[list[int]] = []
    j = m
    while j:
        i = cut[j]
        out.append([r for g in groups[i:j] for r in g])
        j = i
    return out[::-1]


def shared_initializers(paths: Sequence[Path | None], known: Sequence[np.ndarray] = (),
                        min_bytes: int = 1 << 12) -> dict[Path, dict[str, Any]]:  # fmt: skip
    """Per graph file, the initializers (name → onnxruntime OrtValue) whose contents another of the files, or one of
    the `known` arrays already in memory, also holds, under its own name or another (the exporter names some weights
    per graph): one host buffer each (the known array's if there is one), to pass to
    `SessionOptions.add_initializer` so the sessions share it. Tensors under `min_bytes` are not worth it; None
    paths are skipped. The OrtValues wrap numpy arrays without copying; they must outlive the sessions (the Scorer
    keeps them)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    # contents → the (file, name, array) holding them; equal contents are found among same dtype and shape
    by_content: dict[tuple[str, tuple[int, ...]], list[list[tuple[Path | None, str, np.ndarray]]]] = {}
    for arr in known:  # first: a group's buffer is its first holder's
        if arr.nbytes >= min_bytes and arr.flags.c_contiguous:
            by_content.setdefault((arr.dtype.str, arr.shape), []).append([(None, "", arr)])
    for path in paths:
        if path is None:
            continue
        graph = onnx.load(str(path)).graph
        for init in graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.nbytes < min_bytes:
                continue
            groups = by_content.setdefault((arr.dtype.str, arr.shape), [])
            same = next((g for g in groups if np.array_equal(g[0][2], arr)), None)
            if same is None:
                groups.append([(path, init.name, arr)])
            else:
                same.append((path, init.name, arr))
        del graph
    out: dict[Path, dict[str, Any]] = {}
    for holders in (g for groups in by_content.values() for g in groups):
        if len({p for p, _, _ in holders}) < 2:
            continue  # in one graph only (the session loads it as usual), or a known array no graph holds
        arr = np.ascontiguousarray(holders[0][2])
        value = ort.OrtValue.ortvalue_from_numpy(arr)  # wraps `arr`'s buffer; holds a reference to it
        for path, name, _ in holders:
            if path is not None:
                out.setdefault(path, {})[name] = value
    return out


def release_freed_heap() -> None:
    """Give the heap that loading freed back to the OS (glibc `malloc_trim`; nothing elsewhere). Parsing a model
    leaves its temporary copies in freed heap pages that glibc keeps: measured with a 20k-item model, the process
    stays ~90 MB larger than the sessions need until trimmed."""
    import contextlib
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _tail(lp: np.ndarray, n: int) -> np.ndarray:
    """The log-probs of a request's own `n` events out of its (padded) row: the last n-1 (none if n < 2)."""
    return lp[lp.shape[0] - max(n - 1, 0) :] if n > 1 else lp[:0]


# Outputs fetched per call; the order is the order of the results (`_score_one` indexes them).
_WANT_TOPK = ("topk_items", "topk_scores", "user_vector")
_WANT_FULL = (*_WANT_TOPK, "next_item_logprob")


def _no_logprob() -> np.ndarray:
    """`next_item_logprob` of a result the fast graph scored: empty."""
    return np.zeros(0, dtype=np.float32)
