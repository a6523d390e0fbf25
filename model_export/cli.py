"""`streamrec train` and `streamrec evaluate` (torch / onnxruntime are imported only when a command runs)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train SASRec + baselines on events, export the ONNX graphs (+ int8)")
    p.add_argument("--data", required=True, help="ML-100K / ML-1M / ml-latest dir or an events JSONL file")
    p.add_argument("--out", required=True, help="artefact directory to write")
    p.add_argument("--conf", default="model.yaml", help="model config YAML (default conf/model.yaml)")
    p.add_argument("--seed", type=int, default=None, help="override train.seed")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("evaluate", help="HR@k / NDCG@k of model, model_int8 (onnxruntime), mostpop, itemknn")
    e.add_argument("--model", required=True, help="artefact directory written by `streamrec train`")
    e.add_argument("--data", required=True, help="the events to split and evaluate on")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--bench", action="store_true", help="also measure file sizes and µs/event (batch 1 / 64)")
    e.set_defaults(func=cmd_evaluate)


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _load_events(path: str) -> Any:
    try:
        from streamrec.data import load_events
    except ImportError as e:
        raise RuntimeError(f"streamrec.data.load_events is not available yet: {e}") from e
    if not Path(path).exists():
        raise FileNotFoundError(f"data path not found: {path}")
    return load_events(path)


def cmd_train(args: argparse.Namespace) -> int:
    from model_export.config import load_model_config, with_overrides
    from model_export.dataset import DataError
    from model_export.pipeline import run_training

    try:
        cfg = with_overrides(load_model_config(args.conf), seed=args.seed, epochs=args.epochs)
        events = _load_events(args.data)
        summary = run_training(
            events,
            cfg,
            Path(args.out),
            data_path=args.data,
            progress=not args.no_progress,
            log=lambda s: print(s, file=sys.stderr),
        )
    except (ValueError, DataError, FileNotFoundError, RuntimeError, OSError) as e:
        return _err(str(e))
    t = summary["metrics"]["test"]
    print(f"wrote {summary['out']} version {summary['version']} in {summary['seconds']:.0f}s")
    for m, r in t.items():
        print(f"  {m:<11} full ndcg@10 {r['full']['ndcg@10']:.4f}  sampled ndcg@10 {r['sampled']['ndcg@10']:.4f}")
    if not summary["item_categories"]:
        print("  (no item metadata found: item_categories.json not written)", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model_export.artifact import ArtifactError, load_artifact
    from model_export.dataset import DataError
    from model_export.pipeline import bench_artifact, evaluate_artifact

    try:
        art = load_artifact(args.model)
        res = evaluate_artifact(art, _load_events(args.data))
        if args.bench:
            res["_bench"] = bench_artifact(art)
    except (ArtifactError, ValueError, DataError, FileNotFoundError, RuntimeError, OSError) as e:
        return _err(str(e))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    k = art.config.eval.k
    print(f"model {art.version} on {res['_meta']['users']} users (test targets)")
    print(f"{'method':<12}{'full hr':>10}{'full ndcg':>11}{'smp hr':>10}{'smp ndcg':>10}")
    for m in ("model", "model_int8", "mostpop", "itemknn"):
        f, s = res[m]["full"], res[m]["sampled"]
        print(f"{m:<12}{f[f'hr@{k}']:>10.4f}{f[f'ndcg@{k}']:>11.4f}{s[f'hr@{k}']:>10.4f}{s[f'ndcg@{k}']:>10.4f}")
    return 0
