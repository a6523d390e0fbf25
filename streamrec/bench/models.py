"""Synthetic model artefacts of any catalogue size, for timing only: random (untrained) weights, exported through
`model_export`'s own export code (`export_graphs`, `write_artifact`), so the graphs (full and fast, fp32 and int8),
their inputs and outputs and the artefact layout are exactly what `streamrec train` ships. Only the numbers in them
are random.

Item ids are `i000000`, `i000001`, ... like the simulator's, so a simulated stream over a catalogue of at most
`n_items` items hits known items (the model path, not the cold-start fallback).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.config import REPO_ROOT

CACHE_DIR = REPO_ROOT / ".state" / "bench" / "models"
SYNTHETIC_NOTE = "random untrained weights (benchmark timing only; recommendation quality is meaningless)"
_LAYOUT = 2  # bump when what `synthetic_artifact` writes changes (2: + the fast graph model.topk[.int8].onnx)


def item_id(i: int) -> str:
    return f"i{i:06d}"


def _key(n_items: int, cfg_dict: dict[str, Any], blend: dict[str, Any], seed: int, cats: Sequence[str],
         item_categories: dict[str, tuple[str, ...]] | None) -> str:
    given = sorted((k, list(v)) for k, v in (item_categories or {}).items())
    doc = json.dumps({"n": n_items, "cfg": cfg_dict, "blend": blend, "seed": seed, "cats": list(cats),
                      "given": given, "layout": _LAYOUT}, sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


def reference_blend(model_dir: Path | None) -> dict[str, Any]:
    """The in-graph blend of a trained artefact (so the synthetic graph has the same ops), or a default."""
    if model_dir is not None and (model_dir / "config.json").exists():
        doc = json.loads((model_dir / "config.json").read_text())
        return dict(doc["blend"])
    return {"weight": 1.0, "eps": 0.1, "knn_window": 20, "knn_decay": 0.8}


def synthetic_artifact(
    n_items: int,
    *,
    model_conf: str | Path | None = None,
    reference_model: Path | None = None,
    categories: Sequence[str] = (),
    item_categories: dict[str, tuple[str, ...]] | None = None,
    seed: int = 0,
    cache_dir: Path = CACHE_DIR,
    log: Any = None,
) -> Path:
    """Directory of a random-weight artefact with `n_items` items (built once, then reused from `cache_dir`).

    Shape from `conf/model.yaml` (or `model_conf`); blend settings from `reference_model` (the trained artefact) so
    the KNN half of the graph is there too. `item_categories` (item id → categories, e.g. the simulator's) is used
    for the items it names; the others get a random category from `categories`."""
    import torch

    from model_export.artifact import write_artifact
    from model_export.config import config_to_dict, load_model_config
    from model_export.dataset import Vocab
    from model_export.export import export_graphs
    from model_export.sasrec import KNNScorer, SASRec, ServingGraph

    cfg = load_model_config(model_conf)
    cfg_dict = config_to_dict(cfg)
    blend = reference_blend(reference_model)
    cats = tuple(categories) or ("Action", "Comedy", "Drama")
    out = cache_dir / f"n{n_items}-{_key(n_items, cfg_dict, blend, seed, cats, item_categories)}"
    if (out / "version").exists():
        return out
    if log:
        log(f"exporting a random-weight artefact with {n_items:,} items → {out}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = SASRec(cfg.sasrec, n_items)
    with torch.no_grad():
        if model.item_bias is not None:
            model.item_bias.normal_(0.0, 0.1)
    m = max(1, min(cfg.knn.neighbours, n_items - 1))
    # Random neighbour lists (self excluded by shifting), similarities descending in (0, 1].
    nbr = (np.arange(n_items)[:, None] + 1 + rng.integers(0, max(n_items - 1, 1), size=(n_items, m))) % n_items
    sim = np.sort(rng.random((n_items, m), dtype=np.float32), axis=1)[:, ::-1].copy()
    knn = KNNScorer(nbr.astype(np.int64), sim, n_items, int(blend.get("knn_window", 20)),
                    float(blend.get("knn_decay", 0.8)))  # fmt: skip
    graph = ServingGraph(model, cfg.export.top_k, knn, float(blend.get("weight", 0.0)),
                         float(blend.get("eps", 0.1))).eval()  # fmt: skip
    export_graphs(graph, tmp, cfg.export.opset, cfg.export.quantize_ops)

    ids = [item_id(i) for i in range(n_items)]
    given = item_categories or {}
    pick = rng.integers(0, len(cats), size=n_items)
    item_cats = [tuple(given[i]) if i in given else (cats[int(pick[k])],) for k, i in enumerate(ids)]
    popularity = (1.0 / np.arange(1, n_items + 1) ** 1.1)[rng.permutation(n_items)] * 1e5
    with torch.no_grad():
        emb = model.item_emb.weight[:n_items].numpy().copy()
        bias = model.item_bias.numpy().copy() if model.item_bias is not None else np.zeros(n_items, np.float32)
    write_artifact(
        tmp, config=cfg, config_dict=cfg_dict, vocab=Vocab(tuple(ids)), dim=cfg.sasrec.dim,
        blend={**blend, "note": SYNTHETIC_NOTE}, fingerprint="synthetic-seed-" + str(seed),
        data_stats={"events": 0, "users": 0, "items": n_items, "eval_users": 0, "synthetic": True},
        item_categories=item_cats, knn_idx=nbr, knn_sim=sim, item_embeddings=emb, item_bias=bias,
        popularity=popularity, metrics={"note": SYNTHETIC_NOTE},
    )  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def model_size(model_dir: Path) -> dict[str, Any]:
    """Parameters and file sizes of an artefact's ONNX graphs (what the figures state as "model size"): the full
    graph's (the fast graph has the same weights), and the fast graph's file sizes (None without one)."""
    import onnx

    from model_export.onnx_io import INT8_FILE, MODEL_FILE, TOPK_FILE, TOPK_INT8_FILE

    m = onnx.load(str(model_dir / MODEL_FILE), load_external_data=False)
    params = 0
    knn_params = 0
    for init in m.graph.initializer:
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        params += n
        if "nbr" in init.name or init.data_type == onnx.TensorProto.INT64:
            knn_params += n
    doc = json.loads((model_dir / "config.json").read_text())
    fp32 = (model_dir / MODEL_FILE).stat().st_size
    int8 = (model_dir / INT8_FILE).stat().st_size
    topk_fp32, topk_int8 = model_dir / TOPK_FILE, model_dir / TOPK_INT8_FILE
    return {
        "n_items": int(doc["n_items"]),
        "dim": int(doc["dim"]),
        "max_len": int(doc["max_len"]),
        "blocks": int(doc["model_config"]["sasrec"]["blocks"]),
        "params": params,
        "params_excluding_knn_tables": params - knn_params,
        "fp32_mb": round(fp32 / 2**20, 1),
        "int8_mb": round(int8 / 2**20, 1),
        "topk_fp32_mb": round(topk_fp32.stat().st_size / 2**20, 1) if topk_fp32.exists() else None,
        "topk_int8_mb": round(topk_int8.stat().st_size / 2**20, 1) if topk_int8.exists() else None,
        "version": doc["version"],
        "synthetic": bool(doc.get("training_data", {}).get("synthetic", False)),
    }


def describe(size: dict[str, Any]) -> str:
    """One-line model size for captions."""
    knn = size["params"] - size["params_excluding_knn_tables"]
    return (f"SASRec d={size['dim']} L={size['max_len']} {size['blocks']} blocks, {size['n_items']:,} items: "
            f"{size['params_excluding_knn_tables'] / 1e6:.2f} M weights + {knn / 1e6:.1f} M item-KNN table entries, "
            f"{size['fp32_mb']} MB fp32 / {size['int8_mb']} MB int8")
