"""`train` and `evaluate` end to end: split, baselines, SASRec, blend tuning, export, artefact, metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_export.artifact import ModelArtifact, write_artifact
from model_export.baselines import KNNModel, knn_scores, popularity, tune_knn
from model_export.config import ModelConfig, config_to_dict
from model_export.dataset import (
    EventLike,
    Split,
    UserSeq,
    Vocab,
    build_vocab,
    exclusion_mask,
    fingerprint,
    left_pad,
    make_split,
    user_sequences,
)
from model_export.export import OnnxScorer, example_inputs, export_graphs
from model_export.metrics import Result, ScoreFn, evaluate, ranks_full, sample_negatives, summarise
from model_export.onnx_io import TOPK_FILE, TOPK_INT8_FILE
from model_export.sasrec import KNNScorer, SASRec, ServingGraph
from model_export.train import sasrec_logp, train_sasrec

METHODS = ("model", "model_int8", "mostpop", "itemknn")


@dataclass(frozen=True)
class Blend:
    """The tuned in-graph blend: logp + weight * log(knn / max(knn) + eps) with its own KNN window / decay."""

    weight: float
    eps: float
    window: int
    decay: float
    valid_ndcg: float
    plain_valid_ndcg: float  # SASRec alone (w = 0)
    grid: dict[str, float]  # "window=..,decay=..,w=..,eps=.." -> validation NDCG@k


def tune_blend(
    logp: np.ndarray,
    knn: KNNModel,
    hist: Sequence[UserSeq],
    targets: np.ndarray,
    n_items: int,
    cfg: ModelConfig,
) -> Blend:
    """Joint grid over (window, decay, w, eps) by validation full-ranking NDCG@k (`pick_blend`: ties keep the simpler
    blend, a smaller window within `blend.window_tolerance` of the best is preferred)."""
    ex = exclusion_mask(hist, n_items, targets)
    items, _, _ = left_pad(hist, cfg.sasrec.max_len, n_items)
    plain = summarise(ranks_full(logp, targets, ex), cfg.eval.k).ndcg
    grid: dict[str, float] = {}
    alone = Blend(0.0, cfg.blend.eps[0], knn.window, knn.decay, plain, plain, grid)  # SASRec alone (w = 0)
    if not cfg.blend.enabled:
        return alone
    cands: list[tuple[float, int, float, float, float]] = []
    for win in sorted({min(w, cfg.sasrec.max_len) for w in cfg.blend.windows}):
        for dec in cfg.blend.decays:
            k = knn_scores(items, knn.nbr_idx, knn.nbr_sim, n_items, win, dec)
            k = k / (k.max(1, keepdims=True) + 1e-12)
            for eps in cfg.blend.eps:
                lk = np.log(k + eps)
                for w in cfg.blend.weights:
                    if w == 0:
                        continue
                    nd = summarise(ranks_full(logp + w * lk, targets, ex), cfg.eval.k).ndcg
                    grid[f"window={win},decay={dec},w={w},eps={eps}"] = nd
                    cands.append((nd, win, float(dec), float(w), float(eps)))
    got = pick_blend(cands, plain, cfg.blend.window_tolerance)
    if got is None:
        return alone
    nd, win, dec, w, eps = got
    return Blend(w, eps, win, dec, nd, plain, grid)


def pick_blend(cands: Sequence[tuple[float, int, float, float, float]], plain: float,
               tolerance: float) -> tuple[float, int, float, float, float] | None:  # fmt: skip
    """The blend to ship from the grid's (validation NDCG, window, decay, w, eps), in grid order (simpler first):
    the best NDCG, the first in grid order on a tie; but the smallest KNN window whose best comes within `tolerance`
    of it, since the served graph's KNN work grows with the window. None when no blend beats SASRec alone."""
    better = [(i, c) for i, c in enumerate(cands) if c[0] > plain + 1e-12]
    if not better:
        return None
    top = max(c[0] for _, c in better)
    win = min(c[1] for _, c in better if c[0] >= top - tolerance - 1e-12)
    return max(((c[0], -i), c) for i, c in better if c[1] == win)[1]


def _result_dict(res: dict[str, Result], k: int) -> dict[str, dict[str, float]]:
    return {p: {f"hr@{k}": r.hr, f"ndcg@{k}": r.ndcg, "users": r.users} for p, r in res.items()}


def onnx_score_fn(scorer: OnnxScorer, max_len: int, pad: int) -> ScoreFn:
    """Score function for `metrics.evaluate` that goes through onnxruntime (what ships)."""

    def fn(hist: Sequence[UserSeq], exclude: np.ndarray) -> np.ndarray:
        it, ty, ts = left_pad(hist, max_len, pad)
        return np.asarray(scorer.run(it, ty, ts, exclude, outputs=("scores",))["scores"])

    return fn


def _const_scores(pop: np.ndarray) -> ScoreFn:
    """MostPop: the same (training-count) scores for everyone."""

    def fn(hist: Sequence[UserSeq], _exclude: np.ndarray) -> np.ndarray:
        return np.tile(pop, (len(hist), 1))

    return fn


def evaluate_methods(
    split: Split,
    n_items: int,
    max_len: int,
    scorers: dict[str, OnnxScorer],
    knn: KNNModel,
    pop: np.ndarray,
    cfg: ModelConfig,
    phase: str = "test",
) -> dict[str, Any]:
    """All methods on one phase, same negatives for all."""
    hist, tgt = split.inputs(phase)
    negs = sample_negatives(hist, tgt, n_items, cfg.eval.sampled_negatives, cfg.eval.sample_seed)
    out: dict[str, Any] = {}
    for name, sc in scorers.items():
        out[name] = _result_dict(
            evaluate(onnx_score_fn(sc, max_len, n_items), hist, tgt, n_items, cfg.eval, negatives=negs),
            cfg.eval.k,
        )
    out["mostpop"] = _result_dict(
        evaluate(_const_scores(pop), hist, tgt, n_items, cfg.eval, negatives=negs),
        cfg.eval.k,
    )
    out["itemknn"] = _result_dict(
        evaluate(knn.score_fn(n_items), hist, tgt, n_items, cfg.eval, negatives=negs),
        cfg.eval.k,
    )
    return out


def _sasrec_alone(model: SASRec, split: Split, n: int, cfg: ModelConfig) -> dict[str, Result]:
    """Test metrics of the SASRec half alone (torch eager), to show what the blend adds."""
    hist, tgt = split.inputs("test")

    def fn(h: Sequence[UserSeq], _exclude: np.ndarray) -> np.ndarray:
        return sasrec_logp(model, h, cfg.train.eval_batch_size)

    return evaluate(fn, hist, tgt, n, cfg.eval)


def _load_categories(data: str | Path | None, vocab: Vocab) -> list[tuple[str, ...]] | None:
    """Categories per index from `streamrec.data.load_items`, or None when the data has no item metadata."""
    if data is None:
        return None
    try:
        from streamrec.data import load_items

        metas = load_items(data)
    except Exception:  # noqa: BLE001 - metadata is optional; absence is reported by the caller
        return None
    by_id = {str(m.item_id): tuple(m.categories) for m in metas}
    return [by_id.get(i, ()) for i in vocab.item_ids]


def run_training(
    events: Sequence[EventLike],
    cfg: ModelConfig,
    out: Path,
    data_path: str | Path | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Train SASRec + baselines on `events`, tune the blend, export the ONNX graphs (full and fast, fp32 and int8)
    and write the artefact."""
    t_start = time.perf_counter()
    vocab = build_vocab(events)
    split = make_split(user_sequences(events, vocab))
    if not split.eval_users:
        raise ValueError("no user has 3 or more interactions: nothing to validate / test on")
    n = vocab.n_items
    train = [split.train_part(u) for u in range(len(split.users))]
    vh, vt = split.inputs("valid")
    pop = popularity(train, n)
    knn = tune_knn(train, vh, vt, n, cfg.knn, cfg.eval, max_window=cfg.sasrec.max_len)
    log(f"item-KNN: window={knn.window} decay={knn.decay} valid ndcg@{cfg.eval.k}={knn.valid_ndcg:.4f}")
    res = train_sasrec(split, vocab, cfg, progress=progress)
    log(
        f"SASRec: best epoch {res.best_epoch}/{res.epochs_run}, "
        f"valid ndcg@{cfg.eval.k}={res.valid_ndcg:.4f}, "
        f"{res.seconds:.0f}s"
    )
    model = res.model
    logp = sasrec_logp(model, vh, cfg.train.eval_batch_size)
    bl = tune_blend(logp, knn, vh, vt, n, cfg)
    log(
        f"blend: w={bl.weight} eps={bl.eps} window={bl.window} decay={bl.decay} "
        f"valid ndcg@{cfg.eval.k}={bl.valid_ndcg:.4f} (SASRec alone {bl.plain_valid_ndcg:.4f})"
    )
    scorer_knn = KNNScorer(knn.nbr_idx, knn.nbr_sim, n, bl.window, bl.decay)
    graph = ServingGraph(model, cfg.export.top_k, scorer_knn, bl.weight, bl.eps).eval()
    out.mkdir(parents=True, exist_ok=True)
    export_graphs(graph, out, cfg.export.opset, cfg.export.quantize_ops)
    # evaluated through the fast graph: what serves the lists (its `scores` are the full graph's, same formula)
    scorers = {"model": OnnxScorer(out / TOPK_FILE), "model_int8": OnnxScorer(out / TOPK_INT8_FILE)}
    metrics = {
        "test": evaluate_methods(split, n, cfg.sasrec.max_len, scorers, knn, pop, cfg, "test"),
        "valid": evaluate_methods(split, n, cfg.sasrec.max_len, scorers, knn, pop, cfg, "valid"),
        "training": {
            "best_epoch": res.best_epoch,
            "epochs_run": res.epochs_run,
            "train_seconds": res.seconds,
            "valid_ndcg_sasrec": res.valid_ndcg,
            "test_sasrec_alone_torch": _result_dict(_sasrec_alone(model, split, n, cfg), cfg.eval.k),
            "history": res.history,
        },
        "tuning": {"knn_grid": knn.grid, "blend_grid": bl.grid},
    }
    with torch.no_grad():
        emb = model.item_emb.weight[:n].numpy().copy()
        bias = model.item_bias.numpy().copy() if model.item_bias is not None else np.zeros(n, np.float32)
    blend = {
        "weight": bl.weight,
        "eps": bl.eps,
        "knn_window": bl.window,
        "knn_decay": bl.decay,
        "itemknn_window": knn.window,
        "itemknn_decay": knn.decay,
        "valid_ndcg": bl.valid_ndcg,
        "valid_ndcg_sasrec_alone": bl.plain_valid_ndcg,
        "knn_neighbours": int(knn.nbr_idx.shape[1]),
    }
    cats = _load_categories(data_path, vocab)
    stats = {
        "events": len(events),
        "users": len(split.users),
        "items": n,
        "eval_users": len(split.eval_users),
    }
    version = write_artifact(
        out,
        config=cfg,
        config_dict=config_to_dict(cfg),
        vocab=vocab,
        dim=cfg.sasrec.dim,
        blend=blend,
        fingerprint=fingerprint(events),
        data_stats=stats,
        item_categories=cats,
        knn_idx=knn.nbr_idx,
        knn_sim=knn.nbr_sim,
        item_embeddings=emb,
        item_bias=bias,
        popularity=pop,
        metrics=metrics,
    )
    return {
        "version": version,
        "out": str(out),
        "seconds": time.perf_counter() - t_start,
        "metrics": metrics,
        "item_categories": cats is not None,
    }


def evaluate_artifact(art: ModelArtifact, events: Sequence[EventLike]) -> dict[str, Any]:
    """The evaluate table on `events` (split as in training): model / model_int8 through onnxruntime,
    baselines
    re-fitted on the same split with the artefact's tuned KNN settings."""
    cfg = art.config
    n = art.n_items
    split = make_split(user_sequences(events, art.vocab))
    if not split.eval_users:
        raise ValueError("no user has 3 or more interactions: nothing to evaluate")
    train = [split.train_part(u) for u in range(len(split.users))]
    from model_export.baselines import item_neighbours

    idx, sim = item_neighbours(train, n, cfg.knn.neighbours, cfg.knn.shrink)
    knn = KNNModel(idx, sim, int(art.blend["itemknn_window"]), float(art.blend["itemknn_decay"]), 0.0, {})
    fast = art.topk_path is not None  # the graph that serves lists; artefacts without one: the full graph
    scorers = {"model": art.scorer(topk=fast), "model_int8": art.scorer(int8=True, topk=fast)}
    res = evaluate_methods(split, n, art.max_len, scorers, knn, popularity(train, n), cfg, "test")
    res["_meta"] = {
        "version": art.version,
        "users": len(split.eval_users),
        "same_training_data": fingerprint(events) == art.fingerprint,
    }
    return res


def bench_latency(scorer: OnnxScorer, n_items: int, pad: int, max_len: int, batch: int, seconds: float = 3.0) -> float:
    """Microseconds per scored event (one user's request) at `batch`, top-K outputs only."""
    it, ty, ts, ex = example_inputs(n_items, pad, batch, max_len, seed=1)
    outs = ("topk_items", "topk_scores")
    for _ in range(3):
        scorer.run(it, ty, ts, ex, outputs=outs)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        scorer.run(it, ty, ts, ex, outputs=outs)
        reps += 1
    return (time.perf_counter() - t0) / (reps * batch) * 1e6


def bench_artifact(art: ModelArtifact) -> dict[str, Any]:
    """File sizes and µs/event at batch 1 and 64 for fp32 and int8, full graph (model, model_int8) and fast graph
    (model_topk, model_topk_int8; when the artefact has one)."""
    out: dict[str, Any] = {}
    graphs: list[tuple[str, Path, bool, bool]] = [
        ("model", art.model_path, False, False),
        ("model_int8", art.int8_path, True, False),
    ]
    if art.topk_path is not None and art.topk_int8_path is not None:
        graphs += [("model_topk", art.topk_path, False, True), ("model_topk_int8", art.topk_int8_path, True, True)]
    for name, path, int8, topk in graphs:
        sc = art.scorer(int8=int8, topk=topk)
        out[name] = {
            "bytes": path.stat().st_size,
            "us_per_event_b1": bench_latency(sc, art.n_items, art.pad_index, art.max_len, 1),
            "us_per_event_b64": bench_latency(sc, art.n_items, art.pad_index, art.max_len, 64),
        }
    return out


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=float)
