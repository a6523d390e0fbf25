"""Fixtures for the bench tests: a small random-weight artefact exported by `streamrec.bench.models` (seconds) and a
small simulated stream over a catalogue it covers, with malformed lines and duplicates."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_model import TINY_MODEL_YAML

N_ITEMS = 300


@pytest.fixture(scope="session")
def bench_sim() -> Any:
    from streamrec.data import simulator

    conf = simulator.with_overrides(simulator.load_conf(), events=3000, users=80, seed=5)
    conf = dataclasses.replace(
        conf, catalogue=dataclasses.replace(conf.catalogue, n_items=N_ITEMS),
        noise=dataclasses.replace(conf.noise, malformed_rate=0.01, duplicate_rate=0.01))  # fmt: skip
    return simulator.simulate(conf)


@pytest.fixture(scope="session")
def bench_model(tmp_path_factory: pytest.TempPathFactory, bench_sim: Any) -> Path:
    from streamrec.bench.models import synthetic_artifact

    d = tmp_path_factory.mktemp("bench-model")
    (d / "tiny.yaml").write_text(TINY_MODEL_YAML)
    cats = {it.item_id: it.categories for it in bench_sim.items}
    return synthetic_artifact(N_ITEMS, model_conf=d / "tiny.yaml", item_categories=cats, cache_dir=d / "cache")
