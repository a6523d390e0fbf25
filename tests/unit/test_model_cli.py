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


def test_cold_items_train_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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
