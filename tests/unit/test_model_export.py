"""torch eager vs onnxruntime parity of the serving graphs (full and fast), and a one-epoch smoke training into an
artefact."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.nn import functional as F

from model_export.artifact import ArtifactError, load_artifact
from model_export.baselines import knn_scores
from model_export.config import ModelConfig, SASRecConfig, TrainConfig
from model_export.export import OnnxScorer, example_inputs, export_graphs, export_onnx, quantize_int8, weights_hash
from model_export.onnx_io import OUTPUT_NAMES, TOPK_OUTPUT_NAMES, graph_hash
from model_export.pipeline import evaluate_artifact, pick_blend, run_training
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


# graph -> (file, with_logprob, output names); both exported from the same ServingGraph by `export_graphs`
GRAPHS = {
    "full": ("model.onnx", True, OUTPUT_NAMES),
    "topk": ("model.topk.onnx", False, TOPK_OUTPUT_NAMES),
    "full_int8": ("model.int8.onnx", True, OUTPUT_NAMES),
    "topk_int8": ("model.topk.int8.onnx", False, TOPK_OUTPUT_NAMES),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServingGraph, Path]:
    """The full graph and the directory `export_graphs` wrote every graph of it into."""
    g = _graph(0)
    d = tmp_path_factory.mktemp("onnx")
    export_graphs(g, d, opset=17)
    return g, d


def _torch(graph: ServingGraph, with_logprob: bool, *inputs: np.ndarray) -> dict[str, torch.Tensor]:
    g = graph.variant(with_logprob)
    with torch.no_grad():
        return dict(zip(g.output_names, g(*(torch.from_numpy(a) for a in inputs)), strict=True))


@pytest.mark.parametrize("which", ["full", "topk"])
@pytest.mark.parametrize("batch,length", [(1, 12), (3, 7), (8, 2), (5, 12), (2, 1)])
def test_onnx_matches_torch(exported: tuple[ServingGraph, Path], which: str, batch: int, length: int) -> None:
    graph, d = exported
    file, with_logprob, names = GRAPHS[which]
    sc = OnnxScorer(d / file)
    assert sc.output_names == names and sc.with_logprob == with_logprob
    it, ty, ts, ex = example_inputs(N_ITEMS, N_ITEMS, batch, length, seed=batch * 100 + length)
    it[0, -1] = N_ITEMS + 1  # an unknown item in the newest position
    ref = _torch(graph, with_logprob, it, ty, ts, ex)
    assert tuple(ref) == names
    got = sc.run(it, ty, ts, ex)
    for name in ("user_vector", "next_item_logprob", "topk_scores"):
        if name not in names:
            continue
        assert got[name].shape == ref[name].shape, name
        assert np.abs(got[name] - ref[name].numpy()).max(initial=0.0) < 1e-4, name
    s_ref, s_got = ref["scores"].numpy(), got["scores"]
    assert np.array_equal(np.isinf(s_ref), ex) and np.array_equal(np.isinf(s_got), ex)
    assert np.max(np.abs(s_got[~ex] - s_ref[~ex])) < 1e-4
    # identical top-K up to ties: same sets of scores, and every ONNX pick is a valid top-K item
    for r in range(batch):
        kth = s_ref[r, ref["topk_items"][r].numpy()].min()
        assert set(got["topk_items"][r].tolist()) <= set(np.flatnonzero(s_ref[r] >= kth - 1e-4).tolist())
        assert not ex[r, got["topk_items"][r]].any()
    if with_logprob:
        assert got["next_item_logprob"].shape == (batch, length - 1)


@pytest.mark.parametrize("batch,length", [(1, 12), (4, 5), (8, 2)])
def test_fast_graph_recommends_what_the_full_graph_does(
    exported: tuple[ServingGraph, Path], batch: int, length: int
) -> None:
    """Same top-K, scores and user vector from both graphs: torch, onnxruntime fp32 and int8."""
    graph, d = exported
    it, ty, ts, ex = example_inputs(N_ITEMS, N_ITEMS, batch, length, seed=batch + length)
    full, fast = _torch(graph, True, it, ty, ts, ex), _torch(graph, False, it, ty, ts, ex)
    for name in TOPK_OUTPUT_NAMES:
        assert torch.equal(full[name], fast[name]), name  # the same ops on the same hidden state
    for prec in ("", "_int8"):
        a = OnnxScorer(d / GRAPHS["full" + prec][0]).run(it, ty, ts, ex)
        b = OnnxScorer(d / GRAPHS["topk" + prec][0]).run(it, ty, ts, ex)
        assert np.array_equal(a["topk_items"], b["topk_items"]), prec
        for name in ("topk_scores", "user_vector"):
            assert np.max(np.abs(a[name] - b[name])) < 1e-5, (prec, name)
        assert np.array_equal(np.isinf(a["scores"]), np.isinf(b["scores"]))
        assert np.max(np.abs(a["scores"][~ex] - b["scores"][~ex])) < 1e-5, prec


@pytest.mark.parametrize("batch,length", [(1, 12), (4, 9), (3, 5), (2, 4), (2, 3)])
def test_fast_graph_matches_the_whole_model(exported: tuple[ServingGraph, Path], batch: int, length: int) -> None:
    """The serving graphs' shortcuts (item-KNN over the newest `window` positions only, the last block for the newest
    position only) change nothing: every graph, torch and fp32 onnxruntime, gives what the whole model gives, here
    every position through every block (`SASRec.encode`) and the numpy item-KNN weighting every position (zero
    beyond the window), for histories longer than, as long as and shorter than the KNN window."""
    graph, d = exported
    model, knn = graph.model, graph.knn
    assert knn is not None and knn.window == 4
    it, ty, ts, ex = example_inputs(N_ITEMS, N_ITEMS, batch, length, seed=7 * batch + length)
    it[0], ty[0] = np.random.default_rng(length).integers(0, N_ITEMS, length), 1  # one history without padding
    with torch.no_grad():
        u = model.encode(*(torch.from_numpy(a) for a in (it, ty, ts)))[:, -1]  # (B, d)
        logp = F.log_softmax(model.logits(u), dim=-1).numpy()  # (B, N)
    k = knn_scores(it, knn.nbr_idx[:N_ITEMS].numpy(), knn.nbr_sim[:N_ITEMS].numpy(), N_ITEMS, knn.window, knn.decay)
    k = k / (k.max(1, keepdims=True) + 1e-12)
    ref = np.where(ex, -np.inf, logp + graph.blend_w * np.log(k + graph.blend_eps))  # (B, N)
    ref_top = np.argsort(-ref, axis=1, kind="stable")[:, : graph.top_k]
    runs = {"torch " + w: {n: t.numpy() for n, t in _torch(graph, w == "full", it, ty, ts, ex).items()}
            for w in ("full", "topk")}  # fmt: skip
    runs.update({"onnx " + w: OnnxScorer(d / GRAPHS[w][0]).run(it, ty, ts, ex) for w in ("full", "topk")})
    for name, got in runs.items():
        assert np.max(np.abs(got["user_vector"] - u.numpy())) < 1e-5, name
        assert np.array_equal(np.isinf(got["scores"]), ex), name
        assert np.max(np.abs(got["scores"][~ex] - ref[~ex])) < 1e-4, name
        assert np.array_equal(got["topk_items"], ref_top), name
        assert np.max(np.abs(got["topk_scores"] - np.take_along_axis(ref, ref_top, 1))) < 1e-4, name


def test_knn_scorer_needs_a_window() -> None:
    with pytest.raises(ValueError, match="window"):
        KNNScorer(np.zeros((3, 2), np.int64), np.zeros((3, 2), np.float32), 3, 0, 0.5)


def test_blend_choice_prefers_a_smaller_knn_window_only_within_the_tolerance() -> None:
    """(validation NDCG, window, decay, w, eps) in grid order: a smaller window within the tolerance of the best wins
    (the graph's KNN work grows with the window); beyond it the best wins; ties keep the earlier; none beats plain."""
    grid = [(0.300, 5, 0.9, 0.5, 0.1), (0.305, 5, 0.8, 1.0, 0.1), (0.3055, 20, 0.9, 0.5, 0.1),
            (0.3060, 50, 0.9, 0.5, 0.1), (0.3060, 50, 0.8, 1.0, 0.1)]  # fmt: skip
    assert pick_blend(grid, plain=0.29, tolerance=0.0) == grid[3]  # the best; the first of a tie
    assert pick_blend(grid, plain=0.29, tolerance=0.0005) == grid[2]  # window 20 is 0.0005 short of 50
    assert pick_blend(grid, plain=0.29, tolerance=0.001) == grid[1]  # window 5's best is 0.001 short
    assert pick_blend(grid, plain=0.29, tolerance=0.1) == grid[1]  # the best of the smallest window, not its first
    assert pick_blend(grid, plain=0.3058, tolerance=0.1) == grid[3]  # only blends that beat SASRec alone count
    assert pick_blend(grid, plain=0.31, tolerance=0.1) is None


@pytest.mark.parametrize("which", ["full", "topk"])
def test_int8_stays_close_to_torch(exported: tuple[ServingGraph, Path], which: str) -> None:
    """Dynamic int8 (weights of MatMul / Gemm) of either graph: user vector and scores within a loose tolerance of
    fp32 torch, and its top-K mostly the same items."""
    graph, d = exported
    file, with_logprob, names = GRAPHS[which + "_int8"]
    sc = OnnxScorer(d / file)
    assert sc.output_names == names
    ops = {n.op_type for n in onnx.load(str(d / file)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    it, ty, ts, ex = example_inputs(N_ITEMS, N_ITEMS, 6, 10, seed=11)
    ref, got = _torch(graph, with_logprob, it, ty, ts, ex), sc.run(it, ty, ts, ex)
    assert np.max(np.abs(got["user_vector"] - ref["user_vector"].numpy())) < 0.25
    s_ref, s_got = ref["scores"].numpy(), got["scores"]
    assert np.array_equal(np.isinf(s_got), ex)
    assert np.mean(np.abs(s_got[~ex] - s_ref[~ex])) < 0.1
    if with_logprob:
        assert np.mean(np.abs(got["next_item_logprob"] - ref["next_item_logprob"].numpy())) < 0.1
    overlap = [len(set(got["topk_items"][r].tolist()) & set(ref["topk_items"][r].tolist())) for r in range(6)]
    assert np.mean(overlap) >= 0.7 * graph.top_k


def test_surprise_is_zero_only_where_undefined(exported: tuple[ServingGraph, Path]) -> None:
    _, d = exported
    it, ty, ts, ex = example_inputs(N_ITEMS, N_ITEMS, 2, 6, seed=3)
    it[:] = [[N_ITEMS, N_ITEMS, 3, 4, N_ITEMS + 1, 5], [1, 2, 3, 4, 5, 6]]
    lp = OnnxScorer(d / "model.onnx").run(it, ty, ts, ex)["next_item_logprob"]
    assert lp[0, :2].tolist() == [0.0, 0.0] and lp[0, 3] == 0.0  # no context / unknown next item
    assert (lp[0, [2, 4]] < 0).all() and (lp[1] < 0).all()


def test_disabled_inputs_keep_the_graph_signature(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, use_event_type=False, use_time_gap=False)
    g = ServingGraph(SASRec(cfg, N_ITEMS), top_k=5).eval()
    it, ty, ts, ex = example_inputs(N_ITEMS, N_ITEMS, 3, 9)
    for with_logprob in (True, False):
        export_onnx(g.variant(with_logprob), tmp_path / "m.onnx")
        got = OnnxScorer(tmp_path / "m.onnx").run(it, ty, ts, ex)  # raises on a different signature
        with torch.no_grad():
            ref = g.variant(with_logprob)(*(torch.from_numpy(a) for a in (it, ty, ts, ex)))
        assert np.max(np.abs(got["user_vector"] - ref[2].numpy())) < 1e-4


def test_version_hash_follows_weights(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(_graph(1), a)
    export_onnx(_graph(2), b)
    assert weights_hash(a) != weights_hash(b)
    c = tmp_path / "c.onnx"
    export_onnx(_graph(1), c)
    assert weights_hash(a) == weights_hash(c)
    assert graph_hash(a) == graph_hash(c) and graph_hash(a) != graph_hash(b)
    d = tmp_path / "d.onnx"  # the same weights, another blend weight (a constant in the graph, not an initializer)
    export_onnx(_graph(1, blend_w=0.6), d)
    assert weights_hash(a) == weights_hash(d) and graph_hash(a) != graph_hash(d)
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
    assert tuple(o["name"] for o in art.outputs) == OUTPUT_NAMES
    assert art.topk_outputs is not None and tuple(o["name"] for o in art.topk_outputs) == TOPK_OUTPUT_NAMES
    assert art.topk_path == out / "model.topk.onnx" and art.topk_int8_path == out / "model.topk.int8.onnx"
    onnx_files = {"model.onnx", "model.int8.onnx", "model.topk.onnx", "model.topk.int8.onnx"}
    assert {p.name for p in out.glob("*.onnx")} == onnx_files
    graphs = json.loads((out / "config.json").read_text())["graphs"]
    assert {(g["fp32"], g["int8"]) for g in graphs.values()} == {("model.onnx", "model.int8.onnx"),
                                                                  ("model.topk.onnx", "model.topk.int8.onnx")}
    assert tuple(graphs["topk"]["outputs"]) == TOPK_OUTPUT_NAMES
    for int8 in (False, True):
        assert art.scorer(int8=int8, topk=True).output_names == TOPK_OUTPUT_NAMES
        assert art.scorer(int8=int8).output_names == OUTPUT_NAMES
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
    _old_and_tampered_artifacts(out, tmp_path)
    doc = json.loads((out / "config.json").read_text())
    assert doc["version"] == "sasrec-" + graph_hash(out / "model.onnx")[:16]
    doc["version"] = "sasrec-" + weights_hash(out / "model.onnx")[:16]  # as artefacts written before 2026-12-03
    (out / "config.json").write_text(json.dumps(doc))
    assert load_artifact(out).version == doc["version"]
    doc["version"] = "sasrec-0000"
    (out / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="does not match version"):
        load_artifact(out)


def _old_and_tampered_artifacts(out: Path, tmp_path: Path) -> None:
    """An artefact written before the fast graph existed still loads (and scores through the full graph); a fast
    graph that is not the model's, or described but missing, is refused."""
    from operators.scorer import Scorer, ScoreRequest

    old = tmp_path / "old"
    shutil.copytree(out, old)
    doc = json.loads((old / "config.json").read_text())
    del doc["graphs"]
    (old / "config.json").write_text(json.dumps(doc))
    for f in ("model.topk.onnx", "model.topk.int8.onnx"):
        (old / f).unlink()
    art = load_artifact(old)
    assert art.topk_path is None and art.topk_int8_path is None and art.topk_outputs is None
    with pytest.raises(ArtifactError, match="no fast graph"):
        art.scorer(topk=True)
    sc = Scorer(art, threads=1)
    assert sc.topk_session is None
    req = ScoreRequest([1, 2, 3], [1, 2, 3], [1000, 2000, 3000], exclude=[1])
    res = sc.score([req])[0]  # the full graph: log-probs whether asked for or not
    assert res.next_item_logprob.shape == (2,) and res.items.shape == (7,)
    new = Scorer(load_artifact(out), threads=1)
    fast, full = new.score([req])[0], new.score([req], need_logprob=True)[0]
    assert fast.next_item_logprob.shape == (0,) and fast.next_item_logprob.dtype == np.float32
    assert np.array_equal(fast.items, res.items) and np.array_equal(full.next_item_logprob, res.next_item_logprob)

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    shutil.copy(bad / "model.topk.int8.onnx", bad / "model.topk.onnx")  # another graph's weights
    with pytest.raises(ArtifactError, match="model.topk.onnx weights"):
        load_artifact(bad)
    (bad / "model.topk.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing model.topk.onnx"):
        load_artifact(bad, verify=False)


def test_load_artifact_rejects_a_non_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="missing config.json"):
        load_artifact(tmp_path)
