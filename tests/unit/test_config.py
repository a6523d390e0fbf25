"""The config loader: YAML into frozen dataclasses, env overrides, clear errors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streamrec import config


@dataclass(frozen=True)
class Inner:
    port: int = 1
    ratio: float = 0.5
    on: bool = False


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    tags: tuple[str, ...] = ()
    inner: Inner = field(default_factory=Inner)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_env_override(tmp_path: Path) -> None:
    p = write(tmp_path, "name: a\ntags: [t1, t2]\ninner:\n  port: 5\n")
    c = config.load(Outer, p, env={"STREAMREC_INNER_PORT": "7", "STREAMREC_INNER_ON": "true"})
    assert c == Outer(name="a", tags=("t1", "t2"), inner=Inner(port=7, ratio=0.5, on=True))


def test_env_override_of_section_absent_from_yaml(tmp_path: Path) -> None:
    c = config.load(Outer, write(tmp_path, "name: a\n"), env={"STREAMREC_INNER_RATIO": "0.25"})
    assert c.inner == Inner(ratio=0.25)


@pytest.mark.parametrize(("text", "env", "match"), [
    ("nmae: a\n", {}, "unknown key"),
    ("inner:\n  port: five\n", {}, "expected an integer"),
    ("inner: 3\n", {}, "expected a mapping"),
    ("name: a\n", {"STREAMREC_INNER_ON": "maybe"}, "not a boolean"),
    ("- a\n", {}, "top level must be a mapping"),
    ("name: [\n", {}, "invalid YAML"),
])
def test_errors_name_the_problem(tmp_path: Path, text: str, env: dict[str, str], match: str) -> None:
    with pytest.raises(config.ConfigError, match=match):
        config.load(Outer, write(tmp_path, text), env=env)


def test_missing_file() -> None:
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(Outer, "/nonexistent/c.yaml", env={})


def test_shipped_services_config_loads() -> None:
    from streamrec.services.settings import ServicesConf

    c = config.load(ServicesConf, config.CONF_DIR / "services.yaml", env={})
    assert c.kafka.bootstrap == f"{c.kafka.host}:{c.kafka.port}"
    assert "events" in c.kafka.topics


@pytest.mark.parametrize(("workers", "parallelism", "mode"), [
    ("auto", 1, "loopback"), ("auto", 2, "process"), ("loopback", 2, "loopback"), ("process", 1, "process")])
def test_python_worker_mode(monkeypatch: pytest.MonkeyPatch, workers: str, parallelism: int, mode: str) -> None:
    from jobs.config import load_job_conf

    monkeypatch.setenv("STREAMREC_JOB_PYTHON_WORKERS", workers)
    monkeypatch.setenv("STREAMREC_JOB_PARALLELISM", str(parallelism))
    assert load_job_conf("local.yaml").worker_mode() == mode



def test_base_file_is_read_first_and_overridden(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\ntags: [x]\ninner: {port: 1, ratio: 0.25}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ninner: {port: 2}\n")
    got = config.load(Outer, tmp_path / "b.yaml", env={})
    assert (got.name, got.tags, got.inner.port, got.inner.ratio) == ("a", ("x",), 2, 0.25)


def test_base_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(config.ConfigError, match="includes itself"):
        config.load(Outer, tmp_path / "a.yaml", env={})


def test_low_latency_profile_overrides_local() -> None:
    from jobs.config import load_job_conf

    local, low = load_job_conf("local.yaml"), load_job_conf("low-latency.yaml")
    assert low.kafka_sink.delivery == "AT_LEAST_ONCE" != local.kafka_sink.delivery
    assert low.bundle_time_ms < local.bundle_time_ms
    assert (low.execution_mode, local.execution_mode) == ("thread", "process")
    assert low.batching.max_delay_ms < local.batching.max_delay_ms
    assert low.batching.max_events == local.batching.max_events  # the nested section is merged, not replaced
    assert (low.topics, low.model_dir, low.state) == (local.topics, local.model_dir, local.state)
    # what the demo summary and the bench report say of each profile comes from the profile itself
    def with_shards(n: int) -> str:
        return dataclasses.replace(low, batching=dataclasses.replace(low.batching, shards=n)).describe()

    bounds = f"batches of <= {low.batching.max_events} events or {low.batching.max_delay_ms} ms"
    assert with_shards(1) == f"thread mode, Kafka sink AT_LEAST_ONCE, 1 shard, {bounds}"
    assert with_shards(4) == f"thread mode, Kafka sink AT_LEAST_ONCE, 4 shards, {bounds}"
    assert low.describe() == with_shards(low.batching.shards)
    assert local.describe().startswith(f"process mode, Python bundles {local.bundle_time_ms} ms, Kafka sink "
                                       "EXACTLY_ONCE, ")


def test_shipped_model_keeps_the_candidates_the_lists_use() -> None:
    """The export's in-graph top-K (conf/model.yaml) holds at least the candidates the re-rank takes from it
    (conf/operators.yaml): a smaller K would silently shorten every list's candidates."""
    from model_export.config import ModelConfig, load_model_config
    from operators.config import load_operators_conf

    k = load_model_config().export.top_k
    assert k >= load_operators_conf("operators.yaml").recs.candidates
    assert k == ModelConfig().export.top_k  # the dataclass default is the shipped value
