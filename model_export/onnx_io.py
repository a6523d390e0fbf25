"""Torch-free helpers over exported ONNX files, safe to import on the serving path (Flink workers)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

# The serving graphs' signatures (model_export.sasrec.ServingGraph); fixed, whatever the config. The full graph
# (model.onnx) also gives the next-item log-probs of every position; the fast one (model.topk.onnx) scores only the
# last position (what every recommendation needs) and has no next_item_logprob.
INPUT_NAMES = ("item_idx", "event_type", "ts_ms", "exclude")
OUTPUT_NAMES = ("topk_items", "topk_scores", "user_vector", "next_item_logprob", "scores")
TOPK_OUTPUT_NAMES = ("topk_items", "topk_scores", "user_vector", "scores")

# Files of the graphs in an artefact directory: full fp32 / int8, fast (top-K) fp32 / int8.
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TOPK_FILE = "model.topk.onnx"
TOPK_INT8_FILE = "model.topk.int8.onnx"


def weights_hash(path: str | Path) -> str:
    """sha256 over the initializers (name, dtype, shape, bytes) in name order; changes iff weights do."""
    return model_hashes(path)[0]


def graph_hash(path: str | Path) -> str:
    """sha256 over the initializers (as `weights_hash`) and the computation: each node's op, domain, inputs, outputs
    and attributes, in graph order (node names left out). Constants folded into nodes count: the same weights with
    another blend (KNN window, decay, weight: constant nodes, not initializers) give another hash."""
    return model_hashes(path)[1]


def model_hashes(path: str | Path) -> tuple[str, str]:
    """(`weights_hash`, `graph_hash`) of one ONNX file, read and hashed once."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    h = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(init)
        h.update(f"{init.name}|{arr.dtype}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    weights = h.hexdigest()
    for node in model.graph.node:
        h.update(f"{node.domain}|{node.op_type}|{','.join(node.input)}|{','.join(node.output)}|".encode())
        for attr in sorted(node.attribute, key=lambda a: a.name):
            h.update(attr.SerializeToString(deterministic=True))
    return weights, h.hexdigest()


class OnnxScorer:
    """An onnxruntime session over a serving graph (full or fast): numpy in, dict of named numpy outputs out."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.with_logprob = self.output_names == OUTPUT_NAMES
        if self.input_names != INPUT_NAMES or self.output_names not in (OUTPUT_NAMES, TOPK_OUTPUT_NAMES):
            raise ValueError(f"{path}: unexpected graph signature {self.input_names} -> {self.output_names}")

    def run(
        self,
        item_idx: np.ndarray,
        event_type: np.ndarray,
        ts_ms: np.ndarray,
        exclude: np.ndarray,
        outputs: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        feeds = {
            "item_idx": np.ascontiguousarray(item_idx, dtype=np.int64),
            "event_type": np.ascontiguousarray(event_type, dtype=np.int64),
            "ts_ms": np.ascontiguousarray(ts_ms, dtype=np.int64),
            "exclude": np.ascontiguousarray(exclude, dtype=bool),
        }
        names = list(outputs or self.output_names)
        return dict(zip(names, self.session.run(names, feeds), strict=True))
