"""`streamrec train` / `streamrec evaluate` wiring and their error paths (no tracebacks on bad input)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.cli import main


def test_evaluate_on_a_missing_model_dir_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["evaluate", "--model", str(tmp_path / "nope"), "--data", str(tmp_path), "--json"])
    assert rc == 2
    assert "model directory not found" in capsys.readouterr().err


def test_train_on_missing_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--epochs", "1"])
    assert rc == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_rejects_an_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "m.yaml"
    conf.write_text("train:\n  epoch: 3\n")
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--conf", str(conf)])
    assert rc == 2
    assert "unknown key(s) ['epoch']" in capsys.readouterr().err


def test_cold_items_train_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --cold-items` withholds the newest items and attaches the content path; `evaluate --cold --json` reports
    each path under a top-level `cold` key (the simulator's catalogue has titles and categories)."""
    import json

    from model_export.encoder_fetch import fetch, load_encoder_conf
    from streamrec.data import simulator
    from tests.tiny_model import TINY_MODEL_YAML

    fetch(load_encoder_conf())
    sim = simulator.simulate(simulator.with_overrides(simulator.load_conf(), events=3000, users=120, seed=3))
    simulator.write_outputs(sim, tmp_path / "data")
    data = tmp_path / "data"
    (tmp_path / "tiny.yaml").write_text(TINY_MODEL_YAML)
    out = tmp_path / "m"
    assert main(["train", "--data", str(data), "--out", str(out), "--conf", str(tmp_path / "tiny.yaml"),
                 "--cold-items", "0.1", "--no-progress"]) == 0
    meta = json.loads((out / "content.json").read_text())
    assert len(meta["cold"]) > 0 and set(meta["cold"]) <= set(meta["items"])
    vocab = json.loads((out / "vocab.json").read_text())
    assert not set(meta["cold"]) & set(map(str, vocab["item_ids"]))  # withheld from training
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--cold", "--json"]) == 0
    cold = json.loads(capsys.readouterr().out)["cold"]
    assert cold["cases"] > 0
    for path in ("content", "content_int8", "category", "popularity", "content+popularity"):
        lo, hi = cold[path]["ndcg@10_ci95"]
        assert 0.0 <= lo <= cold[path]["ndcg@10"] <= hi <= 1.0
    assert sum(r["cases"] for r in cold["by_target_age"].values()) == cold["cases"]
    # the content path as the job scores content items (conf/operators.yaml recs.content_evidence), and without it
    lo, hi = cold["content+evidence"]["ndcg@10_ci95"]
    assert 0.0 <= lo <= cold["content+evidence"]["ndcg@10"] <= hi <= 1.0
    assert {"content+evidence - popularity", "content+evidence - category"} <= set(cold["paired"])
    monkeypatch.setenv("STREAMREC_RECS_CONTENT_EVIDENCE", "0")
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--cold", "--json"]) == 0
    off = json.loads(capsys.readouterr().out)["cold"]
    assert "content+evidence" not in off and off["content"] == cold["content"]
    monkeypatch.delenv("STREAMREC_RECS_CONTENT_EVIDENCE")
    # the reference path: an artefact trained with the withheld items scores them with its learned vectors
    ref = tmp_path / "ref"
    assert main(["train", "--data", str(data), "--out", str(ref), "--conf", str(tmp_path / "tiny.yaml"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--cold", "--cold-reference", str(ref),
                 "--json"]) == 0
    with_ref = json.loads(capsys.readouterr().out)["cold"]
    assert with_ref["reference"]["cases"] == cold["cases"]
    assert "reference - popularity" in with_ref["paired"]
    assert all("reference" in r for r in with_ref["by_target_age"].values() if r["cases"])
    # a reference that never saw the withheld items (the cold model itself) is a clear error
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--cold", "--cold-reference", str(out)]) == 2
    assert "does not know" in capsys.readouterr().err


def test_reference_scores_are_the_reference_models_logits(tmp_path: Path) -> None:
    """`reference_scores` gives, per history and withheld item, the reference's SASRec logit u · e + b for that
    item: checked against the full graph's user vector and each item's own index."""
    import numpy as np

    from model_export.artifact import load_artifact
    from model_export.content import reference_scores
    from streamrec.data import simulator
    from tests.tiny_model import TINY_MODEL_YAML

    sim = simulator.simulate(simulator.with_overrides(simulator.load_conf(), events=1500, users=60, seed=5))
    simulator.write_outputs(sim, tmp_path / "data")
    (tmp_path / "tiny.yaml").write_text(TINY_MODEL_YAML)
    ref = tmp_path / "ref"
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(ref), "--conf", str(tmp_path / "tiny.yaml"),
                 "--no-progress"]) == 0
    art = load_artifact(ref)
    ids = [str(i) for i in art.vocab.item_ids]
    picked = [ids[7], ids[2], ids[11]]  # not in index order
    hists = [[(ids[1], "view", 1000), (ids[3], "click", 2000)], [(ids[5], "purchase", 1500)]]
    got = reference_scores(ref, hists, picked)
    uv = art.scorer().run(*art.make_inputs(hists))["user_vector"]  # the full graph
    want = np.array([[float(uv[r] @ art.item_embeddings[art.item_index(i)]) + float(art.item_bias[art.item_index(i)])
                      for i in picked] for r in range(len(hists))])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="does not know 1 of the 2"):
        reference_scores(ref, hists, [ids[0], "no-such-item"])
