"""torch eager vs onnxruntime parity of the serving graph, and a one-epoch smoke training into an artefact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from model_export.artifact import ArtifactError, load_artifact
from model_export.config import ModelConfig, SASRecConfig, TrainConfig
from model_export.export import OnnxScorer, example_inputs, export_onnx, quantize_int8, weights_hash
from model_export.onnx_io import OUTPUT_NAMES
from model_export.pipeline import evaluate_artifact, run_training
from model_export.sasrec import KNNScorer, SASRec, ServingGraph
from tests.unit.model_fixtures import synthetic_events

N_ITEMS = 57
CFG = SASRecConfig(max_len=12, dim=16, heads=2, blocks=2, ffn_mult=2, dropout=0.2, time_buckets=10)


def _graph(seed: int, blend_w: float = 0.3) -> ServingGraph:
    torch.manual_seed(seed)
    model = SASRec(CFG, N_ITEMS)
    with torch.no_grad():  # non-trivial bias / unknown-item embedding so they are exercised
        assert model.item_bias is not None
        model.item_bias.normal_()
        model.item_emb.weight[N_ITEMS + 1].normal_()
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(N_ITEMS, 8, replace=False) for _ in range(N_ITEMS)]).astype(np.int64)
    sim = rng.random((N_ITEMS, 8)).astype(np.float32)
    return ServingGraph(
        model, top_k=10, knn=KNNScorer(idx, sim, N_ITEMS, 4, 0.7), blend_w=blend_w, blend_eps=1e-3
    ).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServingGraph, Path]:
    g = _graph(0)
    p = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(g, p, opset=17)
    return g, p


@pytest.mark.parametrize("batch,length", [(1, 12), (3, 7), (8, 2), (5, 12)])
def test_onnx_matches_torch(exported: tuple[ServingGraph, Path], batch: int, length: int) -> None:
    graph, path = exported
    sc = OnnxScorer(path)
    it, ty, ts, ex = example_inputs(N_ITEMS, N_ITEMS, batch, length, seed=batch * 100 + length)
    it[0, -1] = N_ITEMS + 1  # an unknown item in the newest position
    with torch.no_grad():
        ref = dict(zip(OUTPUT_NAMES, graph(*(torch.from_numpy(a) for a in (it, ty, ts, ex))), strict=True))
    got = sc.run(it, ty, ts, ex)
    for name in ("user_vector", "next_item_logprob", "topk_scores"):
        assert got[name].shape == ref[name].shape, name
        assert np.max(np.abs(got[name] - ref[name].numpy())) < 1e-4, name
    s_ref, s_got = ref["scores"].numpy(), got["scores"]
    assert np.array_equal(np.isinf(s_ref), ex) and np.array_equal(np.isinf(s_got), ex)
    assert np.max(np.abs(s_got[~ex] - s_ref[~ex])) < 1e-4
    # identical top-K up to ties: same sets of scores, and every ONNX pick is a valid top-K item
    for r in range(batch):
        kth = s_ref[r, ref["topk_items"][r].numpy()].min()
        assert set(got["topk_items"][r].tolist()) <= set(np.flatnonzero(s_ref[r] >= kth - 1e-4).tolist())
        assert not ex[r, got["topk_items"][r]].any()
    assert got["next_item_logprob"].shape == (batch, length - 1)


def test_surprise_is_zero_only_where_undefined(exported: tuple[ServingGraph, Path]) -> None:
    _, path = exported
    it, ty, ts, ex = example_inputs(N_ITEMS, N_ITEMS, 2, 6, seed=3)
    it[:] = [[N_ITEMS, N_ITEMS, 3, 4, N_ITEMS + 1, 5], [1, 2, 3, 4, 5, 6]]
    lp = OnnxScorer(path).run(it, ty, ts, ex)["next_item_logprob"]
    assert lp[0, :2].tolist() == [0.0, 0.0] and lp[0, 3] == 0.0  # no context / unknown next item
    assert (lp[0, [2, 4]] < 0).all() and (lp[1] < 0).all()


def test_disabled_inputs_keep_the_graph_signature(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, use_event_type=False, use_time_gap=False)
    g = ServingGraph(SASRec(cfg, N_ITEMS), top_k=5).eval()
    export_onnx(g, tmp_path / "m.onnx")
    it, ty, ts, ex = example_inputs(N_ITEMS, N_ITEMS, 3, 9)
    got = OnnxScorer(tmp_path / "m.onnx").run(it, ty, ts, ex)  # raises on a different signature
    with torch.no_grad():
        ref = g(*(torch.from_numpy(a) for a in (it, ty, ts, ex)))
    assert np.max(np.abs(got["user_vector"] - ref[2].numpy())) < 1e-4


def test_version_hash_follows_weights(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(_graph(1), a)
    export_onnx(_graph(2), b)
    assert weights_hash(a) != weights_hash(b)
    c = tmp_path / "c.onnx"
    export_onnx(_graph(1), c)
    assert weights_hash(a) == weights_hash(c)
    quantize_int8(a, tmp_path / "a8.onnx")
    ops8 = {n.op_type for n in onnx.load(str(tmp_path / "a8.onnx")).graph.node}
    assert "MatMulInteger" in ops8 and "MatMulInteger" not in {n.op_type for n in onnx.load(str(a)).graph.node}


def test_smoke_train_writes_a_loadable_artifact(tmp_path: Path) -> None:
    events = synthetic_events(users=40, items=80, length=20)
    cfg = ModelConfig(
        sasrec=dataclasses.replace(CFG, max_len=10),
        train=TrainConfig(epochs=1, batch_size=16, patience=1, seed=0, eval_batch_size=64),
    )
    cfg = dataclasses.replace(
        cfg,
        export=dataclasses.replace(cfg.export, top_k=7, popular=5),
        knn=dataclasses.replace(cfg.knn, neighbours=5, windows=(1, 3), decays=(1.0, 0.5)),
        eval=dataclasses.replace(cfg.eval, sampled_negatives=5),
    )
    out = tmp_path / "art"
    summary = run_training(events, cfg, out, progress=False, log=lambda _s: None)
    art = load_artifact(out)
    assert art.version == summary["version"] and art.version.startswith("sasrec-")
    assert art.n_items == 80 and art.pad_index == 80 and art.unknown_index == 81
    assert art.item_index("i3") == art.vocab.item_ids.index("i3") and art.item_index("nope") == 81
    assert art.knn_neighbours.shape == (80, 5) and art.item_embeddings.shape == (80, 16)
    assert art.popular.shape == (5,) and np.all(np.diff(art.popular_counts) <= 0)
    assert {o["name"] for o in art.outputs} == set(OUTPUT_NAMES)
    res = evaluate_artifact(art, events)
    assert res["_meta"]["same_training_data"]
    for m in ("model", "model_int8", "mostpop", "itemknn"):
        for p in ("full", "sampled"):
            assert 0.0 <= res[m][p]["ndcg@10"] <= res[m][p]["hr@10"] <= 1.0
    # the ring walk is learnable from the last item: item-KNN must beat popularity by far
    assert res["itemknn"]["full"]["ndcg@10"] > res["mostpop"]["full"]["ndcg@10"] + 0.3
    hist = [[("i1", "view", 1000), ("i2", "click", 2000), ("zzz", "cart", 2500)], []]
    it, ty, ts, ex = art.make_inputs(hist)
    assert it[0, -3:].tolist() == [art.item_index("i1"), art.item_index("i2"), 81] and (it[1] == 80).all()
    assert ex[0].sum() == 2 and ty[0, -1] == 3 and ts[0, -1] == 2500
    top = art.scorer().run(it, ty, ts, ex, outputs=("topk_items",))["topk_items"]
    assert top.shape == (2, 7) and not set(top[0].tolist()) & {art.item_index("i1"), art.item_index("i2")}
    doc = json.loads((out / "config.json").read_text())
    doc["version"] = "sasrec-0000"
    (out / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="does not match version"):
        load_artifact(out)


def test_load_artifact_rejects_a_non_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="missing config.json"):
        load_artifact(tmp_path)
