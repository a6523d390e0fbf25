"""ONNX export of the serving graph (legacy TorchScript exporter, opset >= 17, dynamic batch and length),
int8 dynamic quantisation, and the onnxruntime wrapper every consumer (evaluation, stream operators) uses."""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch

from model_export.onnx_io import INPUT_NAMES, INT8_FILE, MODEL_FILE, TOPK_FILE, TOPK_INT8_FILE, OnnxScorer, weights_hash  # noqa: F401  (re-exported; torch-free home)
from model_export.sasrec import ServingGraph


def example_inputs(n_items: int, pad: int, batch: int, length: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Random but valid inputs (some left padding, increasing timestamps, a few exclusions)."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, size=(batch, length)).astype(np.int64)
    types = rng.integers(1, 6, size=(batch, length)).astype(np.int64)
    ts = np.cumsum(rng.integers(0, 10**7, size=(batch, length)), axis=1).astype(np.int64) + 10**12
    for r in range(batch):
        p = int(rng.integers(0, length))  # r-th row gets p pads on the left
        items[r, :p] = pad
        types[r, :p] = 0
        ts[r, :p] = 0
    exclude = rng.random((batch, n_items)) < 0.05
    return items, types, ts, exclude


def export_onnx(graph: ServingGraph, path: str | Path, opset: int = 17) -> None:
    """Trace `graph` and write ONNX with dynamic batch / sequence axes (outputs as `graph.output_names`)."""
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    graph.eval()
    m = graph.model
    ex = tuple(torch.from_numpy(a) for a in example_inputs(m.n_items, m.pad, 2, m.cfg.max_len))
    dyn: dict[str, dict[int, str]] = {n: {0: "batch", 1: "seq"} for n in INPUT_NAMES[:3]}
    dyn["exclude"] = {0: "batch"}
    names = graph.output_names
    dyn.update({n: {0: "batch"} for n in ("topk_items", "topk_scores", "user_vector", "scores")})
    if "next_item_logprob" in names:
        dyn["next_item_logprob"] = {0: "batch", 1: "seq_minus_1"}
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            ex,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(names),
            dynamic_axes=dyn,
            do_constant_folding=True,
        )


def quantize_int8(src: str | Path, dst: str | Path, op_types: tuple[str, ...] = ("MatMul", "Gemm"),
                  per_channel: bool = False) -> None:  # fmt: skip
    """Dynamic int8 quantisation of the weights of `op_types` (activations quantised on the fly); `per_channel`:
    one scale per output column instead of per tensor."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(op_types), weight_type=QuantType.QInt8,
                         per_channel=per_channel)


def export_graphs(
    graph: ServingGraph, out: str | Path, opset: int = 17, quantize_ops: tuple[str, ...] = ("MatMul", "Gemm")
) -> None:
    """Every graph an artefact ships, into directory `out`: the full graph (model.onnx, with next-item
    log-probs) and the fast one (model.topk.onnx, last position only), each also as dynamic int8."""
    d = Path(out)
    files = ((True, MODEL_FILE, INT8_FILE), (False, TOPK_FILE, TOPK_INT8_FILE))
    for with_logprob, fp32, int8 in files:
        export_onnx(graph.variant(with_logprob), d / fp32, opset)
        quantize_int8(d / fp32, d / int8, quantize_ops)
