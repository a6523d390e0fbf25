"""Rescaling from savepoints on the standalone cluster (#16): the job at parallelism 1, stopped with a savepoint,
started from it at 2, stopped with a savepoint again, started at 1. Every user's state must come through: the lists
(a function of each user's history) and the flags equal those of one uninterrupted run at parallelism 1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from streamrec.config import REPO_ROOT
from streamrec.services.clients import kafka_kwargs
from tests.integration.test_control_plane import read_topic, train, wait_for
from tests.integration.test_job_e2e import OUTPUTS, deterministic_flags, job_env

PHASE = 250  # events per phase


def fresh_topics(kafka_bootstrap: str, tag: str) -> tuple[str, dict[str, str]]:
    from kafka.admin import KafkaAdminClient, NewTopic

    run_id = f"{tag}-{uuid.uuid4().hex[:10]}"
    topics = {name: f"{run_id}-{name}" for name in ("events", "items", "control", *OUTPUTS)}
    admin = KafkaAdminClient(**kafka_kwargs(kafka_bootstrap))
    admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics.values()])
    admin.close()
    return run_id, topics


def send_events(kafka_bootstrap: str, topic: str, batch: list[Any]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(**kafka_kwargs(kafka_bootstrap), acks="all")
    for e in batch:
        producer.send(topic, value=e.to_json().encode(), timestamp_ms=e.ts)
    producer.flush()
    producer.close()


def outputs(kafka_bootstrap: str, topics: dict[str, str], name: str) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in read_topic(kafka_bootstrap, topics[name]) if v is not None]


def uninterrupted_run(kafka_bootstrap: str, events: list[Any], model: Path, connector_jars: list[Path],
                      tmp: Path) -> tuple[dict[str, tuple[list[str], list[float], list[str]]], Any]:
    """One bounded run at parallelism 1 on the minicluster over `events` (one list per event): lists by event id,
    and the deterministic flags."""
    run_id, topics = fresh_topics(kafka_bootstrap, "ref")
    send_events(kafka_bootstrap, topics["events"], events)
    env = job_env(topics, model, "streamrec", tmp / "ref", run_id)
    env.update({"STREAMREC_DEBOUNCE_INTERVAL_MS": "0", "STREAMREC_JOB_CASSANDRA_SINK_ENABLED": "false"})
    argv = [sys.executable, "-m", "jobs.recommend"] + [a for j in connector_jars for a in ("--jar", str(j))]
    ref = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, timeout=600)
    assert ref.returncode == 0, ref.stderr.decode(errors="replace")[-3000:]
    lists = {r["event_id"]: (r["items"], r["scores"], r["sources"])
             for r in outputs(kafka_bootstrap, topics, "recommendations")}  # fmt: skip
    assert len(lists) == len(events)
    return lists, deterministic_flags(outputs(kafka_bootstrap, topics, "fraud-flags"))


def differing_lists(reference: dict[str, tuple[list[str], list[float], list[str]]],
                    got: list[dict[str, Any]]) -> list[str]:  # fmt: skip
    """Event ids whose list is not the reference's: items exactly; scores to float noise (onnxruntime's sums depend
    on how many lists share a call: ±1e-6 after the records' rounding to 6 decimals).

    Lists with a `cf` item in either run are left out: streaming CF neighbours reach the user operators through the
    job's CF topic, so which of them a list sees depends on when they arrive (a bounded run reads none), not only on
    the user's events. At least half of the lists must remain to compare."""
    pairs = [(r, reference[r["event_id"]]) for r in got]
    same_basis = [(r, ref) for r, ref in pairs if "cf" not in r["sources"] and "cf" not in ref[2]]
    assert len(same_basis) >= len(pairs) / 2, f"only {len(same_basis)} of {len(pairs)} lists without cf items"
    return [r["event_id"] for r, ref in same_basis if ref[0] != r["items"]
            or max(abs(a - b) for a, b in zip(ref[1], r["scores"], strict=True)) > 5e-6]


def _cli(*args: str, env: dict[str, str], timeout_s: float = 600) -> str:
    proc = subprocess.run([sys.executable, "-m", "streamrec.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_savepoint_p1_to_p2_and_back_keeps_every_users_state(kafka_bootstrap: str, flink_cluster: Any,
                                                             connector_jars: list[Path], tmp_path: Path) -> None:
    from streamrec.data import simulator

    sim = simulator.simulate(simulator.with_overrides(simulator.load_conf(), events=3 * PHASE, users=60, seed=21))
    events = sim.events[: 3 * PHASE]
    assert len(events) == 3 * PHASE
    clean = tmp_path / "events.jsonl"
    clean.write_text("".join(e.to_json() + "\n" for e in sim.events))
    model = train(tmp_path, clean, "model", 0)
    reference, reference_flags = uninterrupted_run(kafka_bootstrap, events, model, connector_jars, tmp_path)

    # p=1 → savepoint → p=2 → savepoint → p=1, on the cluster
    run_id, topics = fresh_topics(kafka_bootstrap, "scale")
    env = job_env(topics, model, "streamrec", tmp_path / "scale", run_id)
    env.update({"STREAMREC_JOB_BOUNDED": "false", "STREAMREC_DEBOUNCE_INTERVAL_MS": "0",
                "STREAMREC_JOB_CASSANDRA_SINK_ENABLED": "false"})

    def lists_at_least(k: int) -> Any:
        return lambda: len(outputs(kafka_bootstrap, topics, "recommendations")) >= k

    savepoint = ""
    for n, parallelism in enumerate((1, 2, 1)):
        send_events(kafka_bootstrap, topics["events"], events[n * PHASE:(n + 1) * PHASE])
        args = ["submit", "--detached", "--parallelism", str(parallelism)]
        _cli(*args, *(["--from-savepoint", savepoint] if savepoint else []), env=env)
        wait_for(f"phase {n + 1} at parallelism {parallelism}", lists_at_least((n + 1) * PHASE), timeout_s=300)
        job_id = flink_cluster.running_job("streamrec")
        vertices = flink_cluster.rest(f"/jobs/{job_id}")["vertices"]
        assert {v["parallelism"] for v in vertices if v["name"].startswith("user-operator")} == {parallelism}
        savepoint = _cli("savepoint", job_id, "--stop", "--dir", str(tmp_path / "savepoints"), env=env).strip()
        assert savepoint.startswith("file:"), savepoint
        deadline = time.monotonic() + 60
        while flink_cluster.job_state(job_id) != "FINISHED" and time.monotonic() < deadline:
            time.sleep(0.5)

    got = outputs(kafka_bootstrap, topics, "recommendations")
    assert len(got) == len(events) and len({r["rec_id"] for r in got}) == len(got), "lost or repeated lists"
    changed = differing_lists(reference, got)
    assert not changed, f"{len(changed)} lists differ from the run without rescaling, e.g. {changed[:3]}"
    assert deterministic_flags(outputs(kafka_bootstrap, topics, "fraud-flags")) == reference_flags
