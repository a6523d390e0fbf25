"""The self-describing model artefact directory, and `load_artifact(dir)` for its consumers (the stream
operators).

Layout:
  model.onnx / model.int8.onnx   full serving graph (fp32 / dynamic int8): top-K, scores, user vector and the
                                 next-item log-probs of every position; signature in config.json
  model.topk.onnx / model.topk.int8.onnx   fast serving graph: the same model and top-K from the last position
                                 only (no next-item log-probs); config.json `graphs` describes both. Artefacts
                                 written before it existed lack it (`ModelArtifact.topk_path` is None)
  vocab.json                     external item id <-> index, pad and unknown indices
  config.json                    model config, input/output names + shapes, graph files, blend/KNN settings,
                                 version, training-data fingerprint
  item_categories.json           categories per index (only when item metadata was available)
  knn_neighbours.npy / knn_similarities.npy   (N, M) item-KNN neighbour lists (CF candidate source)
  item_embeddings.npy / item_bias.npy         (N, d) / (N,) tied output embeddings (diversity re-ranking)
  popular.npy / popular_counts.npy            most popular item indices (training counts), best first
  metrics.json                   offline metrics at training time
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_export.config import ModelConfig, config_from_dict
from model_export.dataset import EVENT_TYPES, Vocab, event_type_index
from model_export.onnx_io import (
    INT8_FILE,
    MODEL_FILE,
    OUTPUT_NAMES,
    TOPK_FILE,
    TOPK_INT8_FILE,
    TOPK_OUTPUT_NAMES,
    OnnxScorer,
    graph_hash,
    model_hashes,
    weights_hash,
)

FORMAT = 1  # bump when the layout changes incompatibly


class ArtifactError(ValueError):
    """A model directory that is missing files or does not match its own description."""


@dataclass(frozen=True)
class ModelArtifact:
    """Everything the stream needs to score with a trained model; numpy arrays, no torch."""

    path: Path  # the directory
    version: str  # "sasrec-" + the full fp32 graph's hash: weights and computation (`onnx_io.graph_hash`)
    config: ModelConfig  # hyperparameters it was trained with
    vocab: Vocab  # item id <-> index
    max_len: int  # longest input sequence the graph accepts
    top_k: int  # K of the topk outputs
    event_types: tuple[str, ...]  # event type names; index i+1 in `event_type` inputs (0 = pad)
    inputs: tuple[dict[str, Any], ...]  # name / dtype / shape of each graph input
    outputs: tuple[dict[str, Any], ...]  # name / dtype / shape of each output of the full graph (model.onnx)
    blend: dict[str, Any]  # in-graph blend settings (weight, eps, knn window, decay)
    fingerprint: str  # sha256 of the training event stream
    item_categories: tuple[tuple[str, ...], ...] | None  # per index, when known
    knn_neighbours: np.ndarray  # (N, M) int64 neighbour indices, best first
    knn_similarities: np.ndarray  # (N, M) float32 cosine similarities
    item_embeddings: np.ndarray  # (N, d) float32
    item_bias: np.ndarray  # (N,) float32 (zeros if the model has none)
    popular: np.ndarray  # (P,) int64 item indices by training count, best first
    popular_counts: np.ndarray  # (P,) float64 their training counts
    metrics: dict[str, Any]  # offline metrics at training time
    topk_outputs: tuple[dict[str, Any], ...] | None = None  # outputs of the fast graph; None: the artefact has none
    # The item-KNN tables as the graphs hold them, (N+2, M): + the pad and unknown rows (zeros, as
    # model_export.sasrec.KNNScorer builds them). knn_neighbours / knn_similarities are views of their first N rows,
    # so a scorer that hands these to onnxruntime (operators.scorer) keeps one copy of the tables in memory.
    knn_graph_tables: tuple[np.ndarray, ...] = ()

    @property
    def n_items(self) -> int:
        return self.vocab.n_items

    @property
    def pad_index(self) -> int:
        return self.vocab.pad

    @property
    def unknown_index(self) -> int:
        return self.vocab.unk

    @property
    def model_path(self) -> Path:
        """The full graph (with next-item log-probs), fp32."""
        return self.path / MODEL_FILE

    @property
    def int8_path(self) -> Path:
        """The full graph, dynamic int8."""
        return self.path / INT8_FILE

    @property
    def topk_path(self) -> Path | None:
        """The fast graph (last position only, no next-item log-probs), fp32; None for artefacts without one."""
        return self.path / TOPK_FILE if self.topk_outputs is not None else None

    @property
    def topk_int8_path(self) -> Path | None:
        """The fast graph, dynamic int8; None for artefacts without one."""
        return self.path / TOPK_INT8_FILE if self.topk_outputs is not None else None

    def item_index(self, item_id: object) -> int:
        """Index of an external item id; the unknown index if the model has never seen it."""
        return self._imap().get(str(item_id), self.vocab.unk)

    def item_id(self, index: int) -> str:
        if not 0 <= index < self.vocab.n_items:
            raise IndexError(f"item index {index} outside 0..{self.vocab.n_items - 1}")
        return self.vocab.item_ids[index]

    def _imap(self) -> dict[str, int]:
        cache = self.__dict__.get("_imap_cache")
        if cache is None:
            cache = self.vocab.index_map()
            object.__setattr__(self, "_imap_cache", cache)
        return cache

    def event_type_index(self, event_type: str) -> int:
        return event_type_index(event_type)

    def make_inputs(
        self, histories: Sequence[Sequence[tuple[object, str, int]]], exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Graph inputs for a batch of users from their (item_id, event_type, ts_ms) events, oldest first.

        Keeps the last `max_len` events, left-pads, maps unseen items to the unknown index; `exclude` marks the
        items in the given history (what the user has already interacted with).
        """
        b, n = len(histories), self.vocab.n_items
        items = np.full((b, self.max_len), self.vocab.pad, dtype=np.int64)
        types = np.zeros((b, self.max_len), dtype=np.int64)
        ts = np.zeros((b, self.max_len), dtype=np.int64)
        exclude = np.zeros((b, n), dtype=bool)
        for r, hist in enumerate(histories):
            idx = [self.item_index(i) for i, _, _ in hist]
            if exclude_seen:
                exclude[r, [i for i in idx if i < n]] = True
            tail = list(hist)[-self.max_len :]
            k = len(tail)
            if k:
                items[r, -k:] = idx[-k:]
                types[r, -k:] = [event_type_index(t) for _, t, _ in tail]
                ts[r, -k:] = [int(t) for _, _, t in tail]
        return items, types, ts, exclude

    def scorer(self, int8: bool = False, threads: int = 1, topk: bool = False) -> OnnxScorer:
        """An onnxruntime session over model.onnx (or model.int8.onnx); with `topk` over the fast graph
        model.topk.onnx (or model.topk.int8.onnx), which the artefact must have."""
        if not topk:
            return OnnxScorer(self.int8_path if int8 else self.model_path, threads=threads)
        path = self.topk_int8_path if int8 else self.topk_path
        if path is None:
            raise ArtifactError(f"{self.path}: no fast graph ({TOPK_FILE}; written before it existed)")
        return OnnxScorer(path, threads=threads)


def _io_spec(n_items: int, dim: int, top_k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs (both graphs) and outputs of the full graph; the fast graph's are those named TOPK_OUTPUT_NAMES."""
    ins: list[dict[str, Any]] = [
        {
            "name": "item_idx",
            "dtype": "int64",
            "shape": ["batch", "seq"],
            "doc": "recent item indices, oldest first, left-padded with pad_index; seq <= max_len",
        },
        {
            "name": "event_type",
            "dtype": "int64",
            "shape": ["batch", "seq"],
            "doc": "1 + index in event_types; 0 at padding",
        },
        {
            "name": "ts_ms",
            "dtype": "int64",
            "shape": ["batch", "seq"],
            "doc": "event time (ms); 0 at padding",
        },
        {"name": "exclude", "dtype": "bool", "shape": ["batch", n_items], "doc": "items never to recommend"},
    ]
    outs: list[dict[str, Any]] = [
        {"name": "topk_items", "dtype": "int64", "shape": ["batch", top_k], "doc": "best first"},
        {
            "name": "topk_scores",
            "dtype": "float32",
            "shape": ["batch", top_k],
            "doc": "blended log-scores; -inf only if fewer than K items are allowed",
        },
        {
            "name": "user_vector",
            "dtype": "float32",
            "shape": ["batch", dim],
            "doc": "last position's hidden state; logits = user_vector @ item_embeddings.T + item_bias",
        },
        {
            "name": "next_item_logprob",
            "dtype": "float32",
            "shape": ["batch", "seq-1"],
            "doc": "SASRec log P(item[t+1] | items[..t]); 0 where undefined (no earlier event, unknown item); "
            "full graph (model.onnx) only",
        },
        {
            "name": "scores",
            "dtype": "float32",
            "shape": ["batch", n_items],
            "doc": "full blended scores, excluded items at -inf",
        },
    ]
    return ins, outs


def _graphs_doc(topk_weights: str) -> dict[str, Any]:
    """config.json `graphs`: the files and output names of the full and the fast graph."""
    return {
        "full": {
            "fp32": MODEL_FILE,
            "int8": INT8_FILE,
            "outputs": list(OUTPUT_NAMES),
            "doc": "every output; next_item_logprob scores every position against the catalogue (B, L, N)",
        },
        "topk": {
            "fp32": TOPK_FILE,
            "int8": TOPK_INT8_FILE,
            "outputs": list(TOPK_OUTPUT_NAMES),
            "weights_sha256": topk_weights,
            "doc": "the same model scoring the last position only (B, N): the same topk_items / topk_scores / "
            "user_vector / scores, no next_item_logprob; what serves every list that needs no log-probs",
        },
    }


def write_artifact(
    out: Path,
    *,
    config: ModelConfig,
    config_dict: dict[str, Any],
    vocab: Vocab,
    dim: int,
    blend: dict[str, Any],
    fingerprint: str,
    data_stats: dict[str, Any],
    item_categories: list[tuple[str, ...]] | None,
    knn_idx: np.ndarray,
    knn_sim: np.ndarray,
    item_embeddings: np.ndarray,
    item_bias: np.ndarray,
    popularity: np.ndarray,
    metrics: dict[str, Any],
) -> str:
    """Write everything except the .onnx files (already in `out`, see `export.export_graphs`); returns the version
    string."""
    missing = [f for f in (MODEL_FILE, INT8_FILE, TOPK_FILE, TOPK_INT8_FILE) if not (out / f).exists()]
    if missing:
        raise ArtifactError(f"{out}: export {', '.join(missing)} first (model_export.export.export_graphs)")
    version = "sasrec-" + graph_hash(out / MODEL_FILE)[:16]
    top_k = min(config.export.top_k, vocab.n_items)
    ins, outs = _io_spec(vocab.n_items, dim, top_k)
    order = np.argsort(-popularity, kind="stable")[: config.export.popular]
    doc = {
        "format": FORMAT,
        "version": version,
        "model_config": config_dict,
        "n_items": vocab.n_items,
        "pad_index": vocab.pad,
        "unknown_index": vocab.unk,
        "max_len": config.sasrec.max_len,
        "top_k": top_k,
        "dim": dim,
        "event_types": list(EVENT_TYPES),
        "inputs": ins,
        "outputs": outs,
        "graphs": _graphs_doc(weights_hash(out / TOPK_FILE)),
        "blend": blend,
        "training_data": {"sha256": fingerprint, **data_stats},
        "time_gap_thresholds_ms": [1000 * (2**k - 1) for k in range(1, max(config.sasrec.time_buckets - 1, 1))],
    }
    (out / "config.json").write_text(json.dumps(doc, indent=2))
    (out / "vocab.json").write_text(json.dumps(vocab.to_json()))
    if item_categories is not None:
        (out / "item_categories.json").write_text(json.dumps([list(c) for c in item_categories]))
    np.save(out / "knn_neighbours.npy", knn_idx.astype(np.int64))
    np.save(out / "knn_similarities.npy", knn_sim.astype(np.float32))
    np.save(out / "item_embeddings.npy", item_embeddings.astype(np.float32))
    np.save(out / "item_bias.npy", item_bias.astype(np.float32))
    np.save(out / "popular.npy", order.astype(np.int64))
    np.save(out / "popular_counts.npy", popularity[order].astype(np.float64))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "version").write_text(version + "\n")
    return version


def _need(d: Path, name: str) -> Path:
    p = d / name
    if not p.exists():
        raise ArtifactError(f"{d}: missing {name} (not a model directory written by `streamrec train`?)")
    return p


def checksum(path: str | Path) -> str:
    """sha256 over every file of an artefact directory (sorted names, then contents): what a `model` control record
    carries, so a worker can tell the directory it reads is the one that was published."""
    d = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in d.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\x00" + str(f.stat().st_size).encode() + b"\x00")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_artifact(path: str | Path, verify: bool = True) -> ModelArtifact:
    """Load and check a model directory; `verify` recomputes the graph's hash and checks the version."""
    d = Path(path)
    if not d.is_dir():
        raise ArtifactError(f"model directory not found: {d}")
    try:
        doc = json.loads(_need(d, "config.json").read_text())
        vocab = Vocab.from_json(json.loads(_need(d, "vocab.json").read_text()))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{d}: invalid JSON: {e}") from e
    if doc.get("format") != FORMAT:
        raise ArtifactError(f"{d}: artefact format {doc.get('format')!r}, this code reads {FORMAT}")
    if doc["n_items"] != vocab.n_items:
        raise ArtifactError(f"{d}: config.json says {doc['n_items']} items, vocab.json has {vocab.n_items}")
    _need(d, MODEL_FILE)
    _need(d, INT8_FILE)
    topk = doc.get("graphs", {}).get("topk")  # absent in artefacts written before the fast graph existed
    topk_outputs: tuple[dict[str, Any], ...] | None = None
    if topk is not None:
        _need(d, topk["fp32"])
        _need(d, topk["int8"])
        if (topk["fp32"], topk["int8"]) != (TOPK_FILE, TOPK_INT8_FILE):
            raise ArtifactError(f"{d}: fast graph files {topk['fp32']}, {topk['int8']} (this code reads {TOPK_FILE})")
        by_name = {o["name"]: o for o in doc["outputs"]}
        if tuple(topk["outputs"]) != TOPK_OUTPUT_NAMES or not set(TOPK_OUTPUT_NAMES) <= set(by_name):
            raise ArtifactError(f"{d}: fast graph outputs {topk['outputs']}, expected {TOPK_OUTPUT_NAMES}")
        topk_outputs = tuple(by_name[n] for n in TOPK_OUTPUT_NAMES)
    if verify:
        weights, graph = model_hashes(d / MODEL_FILE)
        got = "sasrec-" + graph[:16]
        # artefacts written before 2026-12-03 carry the hash of the weights alone
        if doc["version"] not in (got, "sasrec-" + weights[:16]):
            raise ArtifactError(f"{d}: {MODEL_FILE} graph hash {got} does not match version {doc['version']}")
        if topk is not None and weights_hash(d / TOPK_FILE) != topk.get("weights_sha256"):
            raise ArtifactError(f"{d}: {TOPK_FILE} weights do not match config.json (not this model's fast graph)")
    cats = None
    if (d / "item_categories.json").exists():
        cats = tuple(tuple(c) for c in json.loads((d / "item_categories.json").read_text()))
        if len(cats) != vocab.n_items:
            raise ArtifactError(f"{d}: item_categories.json has {len(cats)} rows for {vocab.n_items} items")
    arrays = {
        n: np.load(_need(d, f"{n}.npy"))
        for n in (
            "knn_neighbours",
            "knn_similarities",
            "item_embeddings",
            "item_bias",
            "popular",
            "popular_counts",
        )
    }
    for n in ("knn_neighbours", "knn_similarities", "item_embeddings", "item_bias"):
        if arrays[n].shape[0] != vocab.n_items:
            raise ArtifactError(f"{d}: {n}.npy has {arrays[n].shape[0]} rows for {vocab.n_items} items")
    graph_tables = []
    for n in ("knn_neighbours", "knn_similarities"):
        a = arrays[n]
        padded = np.zeros((a.shape[0] + 2, *a.shape[1:]), dtype=a.dtype)
        padded[: a.shape[0]] = a
        arrays[n] = padded[: a.shape[0]]
        graph_tables.append(padded)
        del a
    metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() else {}
    return ModelArtifact(
        path=d,
        version=doc["version"],
        config=config_from_dict(doc["model_config"]),
        vocab=vocab,
        max_len=int(doc["max_len"]),
        top_k=int(doc["top_k"]),
        event_types=tuple(doc["event_types"]),
        inputs=tuple(doc["inputs"]),
        outputs=tuple(doc["outputs"]),
        blend=dict(doc["blend"]),
        fingerprint=doc["training_data"]["sha256"],
        item_categories=cats,
        knn_neighbours=arrays["knn_neighbours"],
        knn_similarities=arrays["knn_similarities"],
        item_embeddings=arrays["item_embeddings"],
        item_bias=arrays["item_bias"],
        popular=arrays["popular"],
        popular_counts=arrays["popular_counts"],
        metrics=metrics,
        topk_outputs=topk_outputs,
        knn_graph_tables=tuple(graph_tables),
    )
