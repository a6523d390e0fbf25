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
