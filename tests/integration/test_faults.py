"""Faults production brings, against the real services (#16): Cassandra stopped for 30 s while the job runs; the
Kafka broker restarted while it runs; the job's TaskManager killed on the standalone cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamrec.bench import sysinfo
from streamrec.config import REPO_ROOT
from tests.integration.test_control_plane import train, wait_for
from tests.integration.test_job_e2e import job_env
from tests.integration.test_rescale import differing_lists, fresh_topics, outputs, send_events, uninterrupted_run

BATCH = 300  # events per phase
OUTAGE_S = 30.0


def _job(tmp_path: Path, kafka_bootstrap: str, connector_jars: list[Path], keyspace: str, n_events: int,
         seed: int) -> tuple[list[Any], Path, dict[str, str], list[str], dict[str, str]]:
    """A small simulated stream (its first `n_events` valid events), a model trained on it, fresh topics, and the
    job's argv and environment (unbounded, checkpoints every 2 s, one list per event: counts show loss or repeats)."""
    from streamrec.data import simulator

    sim = simulator.simulate(simulator.with_overrides(simulator.load_conf(), events=n_events, users=80, seed=seed))
    events = sim.events[:n_events]
    assert len(events) == n_events
    clean = tmp_path / "events.jsonl"
    clean.write_text("".join(e.to_json() + "\n" for e in sim.events))
    model = train(tmp_path, clean, "model", 0)
    run_id, topics = fresh_topics(kafka_bootstrap, "fault")
    env = job_env(topics, model, keyspace, tmp_path / run_id, run_id)
    env.update({"STREAMREC_JOB_BOUNDED": "false", "STREAMREC_JOB_CHECKPOINT_INTERVAL_MS": "2000",
                "STREAMREC_DEBOUNCE_INTERVAL_MS": "0"})
    argv = [sys.executable, "-m", "jobs.recommend"] + [a for j in connector_jars for a in ("--jar", str(j))]
    return events, model, topics, argv, env


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_kafka_broker_restart_loses_and_repeats_nothing(kafka_bootstrap: str, services_conf: Any,
                                                        connector_jars: list[Path], tmp_path: Path) -> None:
    """Phase 1 lands; the broker is stopped for 10 s and started again (same log dirs); phase 2. Every valid event's
    list is readable under read_committed exactly once."""
    from streamrec.services.kafka import KafkaService

    if not services_conf.kafka.managed:
        pytest.skip("Kafka is not one this state dir started: the test would have to stop someone else's broker")
    events, _, topics, argv, env = _job(tmp_path, kafka_bootstrap, connector_jars, "streamrec", 2 * BATCH, 13)
    env["STREAMREC_JOB_CASSANDRA_SINK_ENABLED"] = "false"  # not what this test is about

    def recs() -> list[dict[str, Any]]:
        return outputs(kafka_bootstrap, topics, "recommendations")

    broker = KafkaService(services_conf)
    proc = _start(argv, env, tmp_path / "job.log")
    try:
        send_events(kafka_bootstrap, topics["events"], events[:BATCH])
        wait_for("phase 1", lambda: len(recs()) >= BATCH, proc=proc)
        broker.down()
        time.sleep(10)
        broker.up()
        send_events(kafka_bootstrap, topics["events"], events[BATCH:])
        wait_for("phase 2", lambda: len(recs()) >= 2 * BATCH, timeout_s=400, proc=proc)
        time.sleep(5)  # a later checkpoint would commit anything extra
        got = recs()
        assert sorted(r["event_id"] for r in got) == sorted(e.event_id for e in events), "lost or repeated lists"
        assert len({r["rec_id"] for r in got}) == len(got)
    finally:
        broker.up()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_cassandra_down_for_30_s_loses_no_row(kafka_bootstrap: str, cassandra_up: Any, connector_jars: list[Path],
                                              tmp_path: Path) -> None:
    """Phase 1 lands; Cassandra is stopped; phase 2 is sent while it is away; it comes back after 30 s; phase 3.
    The job rides it out (backpressure and retries in the sink, no restart needed): every event's list is in Kafka
    once, and afterwards the Cassandra rows are exactly what the Kafka outputs say they must be (each user's row =
    their latest list, every flag a row) — what a run without the fault writes."""
    from streamrec.services.cassandra import CassandraService, apply_schema, connect

    if not cassandra_up.cassandra.managed:
        pytest.skip("Cassandra is not one this state dir started: the test would have to stop someone else's node")
    keyspace = f"fault_{uuid.uuid4().hex[:10]}"  # every row in it is this run's
    c = cassandra_up.cassandra
    apply_schema(c.contact_points, c.native_port, c, keyspace=keyspace)
    events, _, topics, argv, env = _job(tmp_path, kafka_bootstrap, connector_jars, keyspace, 3 * BATCH, 9)

    def lists() -> list[dict[str, Any]]:
        return outputs(kafka_bootstrap, topics, "recommendations")

    service = CassandraService(cassandra_up)
    proc = _start(argv, env, tmp_path / "job.log")
    try:
        send_events(kafka_bootstrap, topics["events"], events[:BATCH])
        wait_for("phase 1", lambda: len(lists()) >= BATCH, proc=proc)
        service.down()
        down_at = time.monotonic()
        send_events(kafka_bootstrap, topics["events"], events[BATCH:2 * BATCH])
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        service.up()
        send_events(kafka_bootstrap, topics["events"], events[2 * BATCH:])
        wait_for("phase 3", lambda: len(lists()) >= 3 * BATCH, timeout_s=400, proc=proc)
        time.sleep(3)  # a later checkpoint would commit anything extra
        recs = lists()
        assert len(recs) == 3 * BATCH and len({r["rec_id"] for r in recs}) == len(recs), "lost or repeated lists"
        latest: dict[str, tuple[str, tuple[str, ...]]] = {}
        for r in recs:
            latest[r["user_key"]] = (r["event_id"], tuple(r["items"]))
        flags = {(f["subject_kind"], f["subject"], f["flag_id"]) for f in outputs(kafka_bootstrap, topics,
                                                                                 "fraud-flags")}

        session = connect(c.contact_points, c.native_port, keyspace)
        try:
            def rows() -> tuple[dict[str, tuple[str, tuple[str, ...]]], set[tuple[str, str, str]]]:
                users = {r.user_key: (r.event_id, tuple(r.items)) for r in session.execute(
                    "SELECT user_key, event_id, items FROM recommendations_by_user")}
                got = {(r.subject_kind, r.subject, r.flag_id) for r in session.execute(
                    "SELECT subject_kind, subject, flag_id FROM fraud_flags")}
                return users, got

            deadline = time.monotonic() + 60  # rows still in flight land within the sink's flush interval
            while (got := rows()) != (latest, flags) and time.monotonic() < deadline:
                time.sleep(2)
            users, got_flags = got
            missing = {u for u in latest if users.get(u) != latest[u]}
            assert not missing and set(users) == set(latest), (len(missing), len(set(users) - set(latest)))
            assert got_flags == flags, (len(flags - got_flags), len(got_flags - flags))
        finally:
            session.cluster.shutdown()
        assert proc.poll() is None, "the job stopped"
    finally:
        service.up()  # whatever happened above, the node is back for the tests after this one
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_taskmanager_killed_on_the_cluster_is_replaced_and_the_job_restores(
        kafka_bootstrap: str, flink_cluster: Any, connector_jars: list[Path], tmp_path: Path) -> None:
    """The job on the standalone cluster; phase 1 lands; its TaskManager is killed with SIGKILL and a new one is
    started (what a supervisor would do); the job restores from its latest checkpoint onto it; phase 2. Every list
    readable once, each equal to that of an uninterrupted run."""
    from streamrec.services.flink import flink_home
    from streamrec.services.proc import cmdline, find_pids

    events, model, topics, _, env = _job(tmp_path, kafka_bootstrap, connector_jars, "streamrec", 2 * BATCH, 17)
    env["STREAMREC_JOB_CASSANDRA_SINK_ENABLED"] = "false"
    reference, _ = uninterrupted_run(kafka_bootstrap, events, model, connector_jars, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "streamrec.cli", "submit", "--detached"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = flink_cluster.running_job("streamrec")

    def lists() -> list[dict[str, Any]]:
        return outputs(kafka_bootstrap, topics, "recommendations")

    def taskmanagers() -> list[int]:
        return [p for p in find_pids(flink_cluster.marker) if "TaskManagerRunner" in cmdline(p)]

    try:
        send_events(kafka_bootstrap, topics["events"], events[:BATCH])
        wait_for("phase 1", lambda: len(lists()) >= BATCH)
        checkpoints = flink_cluster.rest(f"/jobs/{job_id}/checkpoints")["counts"]["completed"]
        wait_for("a checkpoint after phase 1", lambda: flink_cluster.rest(
            f"/jobs/{job_id}/checkpoints")["counts"]["completed"] > checkpoints)
        killed = taskmanagers()
        assert len(killed) == 1, killed
        # the TaskManager and its Python workers, as a host crash takes them (SIGKILL to the JVM alone left its
        # Python worker running, orphaned, after the test)
        for pid in sysinfo.tree(killed[0]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        send_events(kafka_bootstrap, topics["events"], events[BATCH:])
        started = subprocess.run(["bash", str(flink_home() / "bin" / "taskmanager.sh"), "start"],
                                 env=flink_cluster.env(), capture_output=True, text=True, timeout=60)  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        wait_for("phase 2 after the restore", lambda: len(lists()) >= 2 * BATCH, timeout_s=400)
        time.sleep(5)  # a later checkpoint would commit anything extra
        got = lists()
        assert len(got) == 2 * BATCH and len({r["rec_id"] for r in got}) == len(got), "lost or repeated lists"
        changed = differing_lists(reference, got)
        assert not changed, f"{len(changed)} lists differ from the uninterrupted run, e.g. {changed[:3]}"
        assert flink_cluster.rest(f"/jobs/{job_id}")["state"] == "RUNNING"
        assert taskmanagers() and killed[0] not in taskmanagers()
    finally:
        if not taskmanagers():
            subprocess.run(["bash", str(flink_home() / "bin" / "taskmanager.sh"), "start"], env=flink_cluster.env(),
                           capture_output=True, timeout=60)  # fmt: skip
        flink_cluster.cancel_job(job_id, timeout_s=120)


def test_restore_with_another_shard_key_table_stops_and_says_why(kafka_bootstrap: str, connector_jars: list[Path],
                                                                 tmp_path: Path) -> None:
    """State written with one shard key table (`batching.key_table: legacy`, the table before 2026-12-03) and
    restored by a job computing another (the default, balanced): the job stops with the reason instead of finding
    every user's state missing. Restored with the table it was written with, it goes on: every event's list once."""
    from tests.integration.test_job_e2e import latest_checkpoint

    events, _, topics, argv, env = _job(tmp_path, kafka_bootstrap, connector_jars, "streamrec", 2 * BATCH, 17)
    env.update({"STREAMREC_JOB_CASSANDRA_SINK_ENABLED": "false", "STREAMREC_JOB_RESTART_ATTEMPTS": "0"})
    legacy = {**env, "STREAMREC_JOB_BATCHING_KEY_TABLE": "legacy"}
    chk_root = Path(env["STREAMREC_JOB_CHECKPOINT_DIR"])

    def recs() -> list[dict[str, Any]]:
        return outputs(kafka_bootstrap, topics, "recommendations")

    proc = _start(argv, legacy, tmp_path / "job-legacy.log")
    try:
        send_events(kafka_bootstrap, topics["events"], events[:BATCH])
        wait_for("phase 1", lambda: len(recs()) >= BATCH, proc=proc)  # committed: a checkpoint holds it
        chk = latest_checkpoint(chk_root)
        assert chk is not None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    log = tmp_path / "job-balanced.log"
    proc = _start([*argv, "--from-checkpoint", str(chk)], env, log)
    try:
        proc.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert proc.returncode != 0
    assert "the restored state is keyed by shard keys" in text and "batching.key_table: legacy" in text, text[-3000:]

    proc = _start([*argv, "--from-checkpoint", str(chk)], legacy, tmp_path / "job-legacy-2.log")
    try:
        send_events(kafka_bootstrap, topics["events"], events[BATCH:])
        wait_for("phase 2", lambda: len(recs()) >= 2 * BATCH, timeout_s=400, proc=proc)
        time.sleep(5)  # a later checkpoint would commit anything extra
        got = recs()
        assert sorted(r["event_id"] for r in got) == sorted(e.event_id for e in events), "lost or repeated lists"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
