"""Offline measurements: synthetic states follow the operator's codec, the profile's instrumentation times the
operator's stages and leaves the operators as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def test_build_states_are_real_codec_states(bench_model: Path, bench_sim: Any) -> None:
    from operators.privacy import Pseudonymizer
    from operators.state import decode
    from streamrec.bench import micro

    templates, run = micro.state_templates(bench_model, bench_sim.stream, 2000, 60)
    assert run["events"] == 2000 and len(templates) == run["users"] > 10
    states = micro.build_states(templates, 500, verify=500)
    assert len(states) == 500
    pseud = Pseudonymizer(micro.BENCH_PSEUDONYM_KEY, "bench")
    for uid, b in states.items():
        s = decode(b)
        assert s.user_key == pseud.pseudonym(uid) and s.n_events > 0
    assert {len(b) for b in states.values()} <= {len(t) for t in templates}  # sizes drawn from the real states
    stats = micro.size_stats([len(t) for t in templates])
    assert stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]


def test_instrument_times_stages_and_restores(bench_model: Path, bench_sim: Any) -> None:
    import operators.fraud
    import operators.user
    from streamrec.bench import micro
    from streamrec.bench.consumer import Stopwatch

    real = (operators.user.decode, operators.user.encode, operators.fraud.velocity)
    sw = Stopwatch()
    h = micro.make_handler(bench_model, stopwatch=sw)
    real_score = h.user_op.scorer.score
    with micro.instrument(h, sw):
        r = micro.run_handler(h, bench_sim.stream, 500, 60)
    assert (operators.user.decode, operators.user.encode, operators.fraud.velocity) == real
    assert h.user_op.scorer.score == real_score
    s = sw.seconds
    for stage in ("parse", "user_operator", "item_operator", "state_decode", "state_encode", "model_total",
                  "model_onnxruntime_run", "fraud_detectors", "json"):
        assert s[stage] > 0, stage
    assert s["model_onnxruntime_run"] < s["model_total"] < s["user_operator"] + s["user_timer"]
    rows = micro.profile_breakdown(s, r["events"])
    assert sum(x["share"] for x in rows) > 0.99


def test_scorer_grid_times_both_graphs(bench_model: Path, bench_sim: Any) -> None:
    from streamrec.bench import micro, models

    rows = micro.scorer_grid([("tiny", bench_model)], (1, 4), 0.01, 20, 1.0, lambda _s: None)
    assert [(r["precision"], r["graph"], r["batch"]) for r in rows] == [
        (p, g, b) for p in ("fp32", "int8") for g in ("topk", "full") for b in (1, 4)]  # fmt: skip
    assert all(r["us_per_event"] > 0 and r["n_items"] == 300 and "skipped" not in r for r in rows)
    # the first cell of a (model, precision, batch) is the fast graph's: what serves a list
    first = next(r for r in rows if r["precision"] == "fp32" and r["batch"] == 1)
    assert first["graph"] == "topk"
    size = models.model_size(bench_model)
    assert size["topk_fp32_mb"] is not None and size["topk_int8_mb"] is not None
    cat = micro.catalogue_throughput([("tiny", bench_model)], bench_sim.stream, 600, 60, lambda _s: None)[0]
    assert 0 < cat["model_calls_full"] < cat["model_calls"]
    assert cat["model_calls_full_per_event"] < cat["model_calls_per_event"]
    assert cat["new_item_us"] > 0


def test_the_profiled_handler_scores_as_the_job_does(bench_model: Path) -> None:
    """The per-event profile's scorer takes its call shaping from the operators config (as the job's and the
    consumer's do), not the `Scorer` class defaults."""
    from operators.config import load_operators_conf
    from streamrec.bench import micro

    conf = load_operators_conf().scorer
    scorer = micro.make_handler(bench_model).user_op.scorer
    assert conf.call_rows != 0  # the class default: a config equal to it would not tell them apart
    assert (scorer.call_rows, scorer.split_cost, scorer.canonical) == (conf.call_rows, conf.split_cost,
                                                                       conf.canonical_widths)


def test_new_item_cost_adds_stream_items_without_copying_the_item_arrays(bench_model: Path) -> None:
    """`new_item_cost` makes every item it times a stream item of the operator, and they grow the item arrays in
    place (one buffer per growth by an eighth, not a copy per item: `operators.user._appended`)."""
    from streamrec.bench import micro

    h = micro.make_handler(bench_model)
    op = h.user_op
    n0 = len(op.item_ids)
    us = micro.new_item_cost(op, items=300)
    assert us > 0 and len(op.item_ids) == n0 + 300 and op.item_ids[-1] == "bench-new-item-299"
    assert op.unit_emb.shape[0] == n0 + 300 and op.unit_emb.base is not None
    assert op.unit_emb.base.shape[0] >= n0 + 300 and op.content_bias[-1] == -np.inf


def test_scorer_memory_shows_the_shared_tables(tmp_path: Path) -> None:
    """One Scorer's RSS, measured in fresh processes, with the item-KNN tables shared and not: shared, the sessions
    use the artefact's arrays and hold no copy of their own; separate, each of the two holds one (20k items × 200
    neighbours × 12 B ≈ 46 MB each)."""
    from streamrec.bench import micro
    from streamrec.bench.models import synthetic_artifact
    from tests.tiny_model import TINY_MODEL_YAML

    conf = tmp_path / "knn200.yaml"
    conf.write_text(TINY_MODEL_YAML.replace("neighbours: 20,", "neighbours: 200,"))
    model = synthetic_artifact(20_000, model_conf=conf, cache_dir=tmp_path / "cache")
    rows = micro.scorer_memory([("20k", model)], lambda _s: None)
    assert [r["precision"] for r in rows] == ["fp32", "int8"]
    tables_mb = 20_002 * 200 * (8 + 4) / 2**20  # + the pad and unknown rows; int64 indices, float32 similarities
    for r in rows:
        assert not any(k.endswith("_error") for k in r), r
        assert r["files_mb"] > 2 * tables_mb  # both graph files carry the tables
        assert r["shared_rss_mb"] < 0.5 * tables_mb, r  # no copy beyond the artefact's
        assert r["separate_rss_mb"] - r["shared_rss_mb"] > 1.5 * tables_mb, r  # a copy per session
