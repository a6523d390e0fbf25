"""Session fixtures for the operator tests: a tiny simulated data set and a tiny model trained on it (seconds)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from operators.config import OperatorsConf
from operators.privacy import Pseudonymizer
from operators.schema import Event
from tests.tiny_model import TINY_MODEL_YAML  # noqa: E402

T0 = 1_704_067_200_000  # 2024-01-01


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamrec.data import simulator

    conf = simulator.with_overrides(simulator.load_conf(), events=4000, users=120, seed=7)
    conf = dataclasses.replace(conf, catalogue=dataclasses.replace(conf.catalogue, n_items=300))
    out = tmp_path_factory.mktemp("sim")
    simulator.write_outputs(simulator.simulate(conf), out)
    return out


@pytest.fixture(scope="session")
def model_dir(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamrec.cli import main

    d = tmp_path_factory.mktemp("model")
    conf = d / "tiny.yaml"
    conf.write_text(TINY_MODEL_YAML)
    out = d / "model"
    rc = main(["train", "--data", str(sim_dir / "events.jsonl"), "--out", str(out), "--conf", str(conf),
               "--no-progress"])  # fmt: skip
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def artifact(model_dir: Path) -> Any:
    from model_export.artifact import load_artifact

    return load_artifact(model_dir)


@pytest.fixture(scope="session")
def scorer(artifact: Any) -> Any:
    from operators.scorer import Scorer

    return Scorer(artifact, threads=1)


@pytest.fixture(scope="session")
def pseud() -> Pseudonymizer:
    return Pseudonymizer(b"unit-test-key-0123456789", "test-key")


def conf_with(**sections: dict[str, Any]) -> OperatorsConf:
    """Default conf with some fields of some sections replaced."""
    base = OperatorsConf()
    repl = {name: dataclasses.replace(getattr(base, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(base, **repl)


@pytest.fixture(scope="session")
def make_op(artifact: Any, scorer: Any, pseud: Pseudonymizer) -> Callable[..., Any]:
    from operators.user import UserOperator

    def make(**sections: dict[str, Any]) -> UserOperator:
        return UserOperator(artifact, conf_with(**sections), pseud, scorer)

    return make


def ev(i: int, item: str, ts: int, etype: str = "view", user: str = "u1", rating: float | None = None) -> Event:
    return Event(f"e{i}", user, item, etype, ts, rating=rating if etype == "rating" else None)
