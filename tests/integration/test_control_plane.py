"""The running job's control plane against the real services: model hot-swap (with a corrupt artefact rejected in
between), catalogue updates (an item made unavailable), kill + restore after the swap, and erasure — one job, no
restart other than the deliberate kill."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamrec.config import REPO_ROOT
from streamrec.services.clients import kafka_kwargs
from tests.integration.test_job_e2e import job_env, latest_checkpoint
from tests.tiny_model import TINY_MODEL_YAML

OUTPUTS = ("recommendations", "fraud-flags", "dead-letters", "deletions")
BATCH = 400  # events per phase
CONTROL_KEY = "control-test-key-0123456789abcdef"


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every committed record of a one-partition topic, in offset order."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(**kafka_kwargs(bootstrap), enable_auto_commit=False, isolation_level="read_committed",
                      consumer_timeout_ms=1500)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        return [(m.key, m.value) for m in c]
    finally:
        c.close()


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 300.0, proc: Any = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None:
            assert proc.poll() is None, f"job exited while waiting for {what}"
        got = check()
        if got:
            return got
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def train(tmp: Path, events: Path, name: str, seed: int) -> Path:
    from streamrec.cli import main

    conf = tmp / f"{name}.yaml"
    conf.write_text(TINY_MODEL_YAML.replace("seed: 0", f"seed: {seed}"))
    assert main(["train", "--data", str(events), "--out", str(tmp / name), "--conf", str(conf), "--no-progress"]) == 0
    return tmp / name


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_hot_swap_catalogue_restore_and_erasure(kafka_bootstrap: str, cassandra_up, connector_jars: list[Path],
                                               tmp_path: Path, mode: str) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from model_export.artifact import checksum, load_artifact
    from operators.privacy import Pseudonymizer
    from operators.schema import ItemMeta, ModelUpdate
    from streamrec.control import erase_user, publish_items, publish_model
    from streamrec.data import simulator
    from streamrec.services.cassandra import connect

    sim = simulator.simulate(simulator.with_overrides(simulator.load_conf(), events=4 * BATCH + 400, users=150,
                                                      seed=5))
    events = sim.events
    clean = tmp_path / "events.jsonl"
    clean.write_text("".join(e.to_json() + "\n" for e in events))
    model_a, model_b = train(tmp_path, clean, "a", 0), train(tmp_path, clean, "b", 1)
    version_a, version_b = load_artifact(model_a).version, load_artifact(model_b).version
    assert version_a != version_b

    from streamrec.services.cassandra import apply_schema

    run_id = f"ctl-{uuid.uuid4().hex[:10]}"
    # Own keyspace and pseudonym key: this test writes rows with wall-clock times and deletes a user, which must not
    # touch what other tests (sharing the session keyspace and simulated user ids) read back.
    cassandra_keyspace = f"ctl_{uuid.uuid4().hex[:10]}"
    c = cassandra_up.cassandra
    apply_schema(c.contact_points, c.native_port, c, keyspace=cassandra_keyspace)
    topics = {name: f"{run_id}-{name}" for name in ("events", "items", "control", *OUTPUTS)}
    admin = KafkaAdminClient(**kafka_kwargs(kafka_bootstrap))
    # Not compacted here (the product's topic is): the test reads the whole history to check the switch-over.
    admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics.values()])
    env = job_env(topics, model_a, cassandra_keyspace, tmp_path, run_id)
    env.update({"STREAMREC_PSEUDONYM_KEY": CONTROL_KEY, "STREAMREC_PSEUDONYM_KEY_ID": "ctl-k1",
                "STREAMREC_JOB_BOUNDED": "false", "STREAMREC_JOB_CHECKPOINT_INTERVAL_MS": "2000",
                "STREAMREC_DEBOUNCE_INTERVAL_MS": "0",  # one recommendation per event: counts show loss/duplication
                "STREAMREC_JOB_MODEL_STORE": str(tmp_path / "store"),
                "STREAMREC_JOB_EXECUTION_MODE": mode})  # thread: the model is loaded and swapped inside the JVM
    argv = [sys.executable, "-m", "jobs.recommend"] + [a for j in connector_jars for a in ("--jar", str(j))]
    producer = KafkaProducer(**kafka_kwargs(kafka_bootstrap), acks="all")
    pseud = Pseudonymizer(CONTROL_KEY.encode(), "ctl-k1")

    def send(batch: list[Any]) -> None:
        for e in batch:
            producer.send(topics["events"], value=e.to_json().encode(), timestamp_ms=e.ts)
        producer.flush()

    def recs() -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in read_topic(kafka_bootstrap, topics["recommendations"]) if v is not None]

    def start(restore: Path | None = None) -> subprocess.Popen[bytes]:
        extra = ["--from-checkpoint", str(restore)] if restore else []
        return subprocess.Popen(argv + extra, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    proc = start()
    try:
        # 1. model A serves
        send(events[:BATCH])
        wait_for("batch 1", lambda: len(recs()) >= BATCH, proc=proc)
        first = recs()
        assert {r["model_version"] for r in first} == {version_a}
        counts: dict[str, int] = {}
        for r in first:
            for i in r["items"]:
                counts[i] = counts.get(i, 0) + 1
        hot_item = max(counts, key=lambda i: counts[i])

        # 2. a corrupt artefact (files changed after the checksum was taken), a missing one, one outside the model
        # store (a sound artefact: refused for where it is), and an item made unavailable
        bad = tmp_path / "store" / "bad"
        shutil.copytree(model_b, bad)
        digest = checksum(bad)
        with (bad / "model.onnx").open("r+b") as fh:
            fh.seek(200)
            fh.write(b"\x00" * 64)
        producer.send(topics["control"], value=json.dumps(
            ModelUpdate(version_b, str(bad), digest, int(time.time() * 1000)).to_dict()).encode())
        producer.send(topics["control"], value=json.dumps(ModelUpdate(
            version_b, str(tmp_path / "store" / "missing"), "0" * 64, int(time.time() * 1000)).to_dict()).encode())
        producer.send(topics["control"], value=json.dumps(ModelUpdate(
            version_b, str(model_b), checksum(model_b), int(time.time() * 1000)).to_dict()).encode())
        producer.flush()
        items_file = tmp_path / "items.jsonl"
        items_file.write_text(ItemMeta(hot_item, "made unavailable", ("x",), available=False).to_json() + "\n")
        assert publish_items(items_file, kafka_bootstrap, topics["items"]) == (1, [])
        def rejections() -> list[dict[str, Any]]:
            dead = [json.loads(v) for _, v in read_topic(kafka_bootstrap, topics["dead-letters"]) if v is not None]
            return [d for d in dead if d["reason"] == "model_rejected"]

        rejected = wait_for("three model rejections", lambda: r if len(r := rejections()) >= 3 else None, proc=proc)
        assert any("checksum mismatch" in d["message"] for d in rejected)
        assert any("not found" in d["message"] for d in rejected)
        assert any("outside the model store" in d["message"] for d in rejected)
        send(events[BATCH:2 * BATCH])
        wait_for("batch 2", lambda: len(recs()) >= 2 * BATCH, proc=proc)

        # 3. hot-swap to B
        publish_model(model_b, tmp_path / "store", kafka_bootstrap, topics["control"])
        time.sleep(3)
        send(events[2 * BATCH:3 * BATCH])
        wait_for("batch 3", lambda: len(recs()) >= 3 * BATCH, proc=proc)
        time.sleep(3)
        swapped = recs()
        assert len(swapped) == 3 * BATCH, "lost or duplicated recommendations"
        assert len({r["rec_id"] for r in swapped}) == len(swapped)
        versions = [r["model_version"] for r in swapped]
        switch = versions.index(version_b)
        assert set(versions[:switch]) == {version_a} and set(versions[switch:]) == {version_b}, \
            "outputs must switch from A to B once, with nothing else in between"
        assert switch >= 2 * BATCH  # the corrupt artefacts were not adopted
        # the unavailable item: present before the update, never after it
        updated = [r for r in swapped if r["catalog_version"] >= 1]
        assert updated and all(hot_item not in r["items"] for r in updated)
        assert any(hot_item in r["items"] for r in swapped if r["catalog_version"] == 0)

        # 4. kill -9 after the swap, restore from the latest checkpoint: B still serves
        swap_chk = latest_checkpoint(tmp_path / "checkpoints")
        wait_for("a checkpoint after the swap",
                 lambda: (c := latest_checkpoint(tmp_path / "checkpoints")) is not None and c != swap_chk, proc=proc)
        time.sleep(2.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        restore = latest_checkpoint(tmp_path / "checkpoints")
        assert restore is not None
        proc = start(restore)
        batch4 = events[3 * BATCH:4 * BATCH]
        send(batch4)
        ids4 = {e.event_id for e in batch4}
        after = wait_for("batch 4 after restore", lambda: (got := [r for r in recs() if r["event_id"] in ids4])
                         and len(got) >= BATCH and got, proc=proc)
        assert {r["model_version"] for r in after} == {version_b}
        assert all(hot_item not in r["items"] for r in after)  # the catalogue update survived the restore too

        # 5. erasure
        user = events[3 * BATCH].user_id
        key = pseud.pseudonym(user)
        session = connect(cassandra_up.cassandra.contact_points, cassandra_up.cassandra.native_port,
                          keyspace=cassandra_keyspace)
        try:
            def rows() -> list[Any]:
                return list(session.execute("SELECT user_key FROM recommendations_by_user WHERE user_key = %s",
                                            (key,)))

            wait_for("the user's row in Cassandra", rows)
            req = erase_user(user, kafka_bootstrap, topics["control"], request_id=f"req-{run_id}")
            wait_for("the tombstone", lambda: any(k == key.encode() and v is None for k, v in
                                                  read_topic(kafka_bootstrap, topics["recommendations"])), proc=proc)
            audit = wait_for("the erasure records", lambda: [
                d for d in map(json.loads, (v for _, v in read_topic(kafka_bootstrap, topics["deletions"]) if v))
                if d.get("request_id") == req["request_id"]], proc=proc)
            assert {d["user_key"] for d in audit} == {key} and user not in json.dumps(audit)
            wait_for("the user's Cassandra row to go", lambda: not rows(), timeout_s=60)
            # the next event (after the request, in event time) starts a fresh state
            last = events[3 * BATCH]
            fresh = dataclasses.replace(last, event_id=f"{last.event_id}-again", ts=req["ts"] + 1000)
            send([fresh])
            nxt = wait_for("a recommendation after erasure", lambda: [
                r for r in recs() if r["event_id"] == fresh.event_id], proc=proc)
            assert nxt[0]["source"] == "cold_start" and nxt[0]["user_key"] == key
            wait_for("the user's new Cassandra row", rows, timeout_s=60)
        finally:
            session.cluster.shutdown()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        producer.close()
        admin.delete_topics(list(topics.values()))
        admin.close()
        drop = connect(c.contact_points, c.native_port)
        try:
            drop.execute(f"DROP KEYSPACE IF EXISTS {cassandra_keyspace}")
        finally:
            drop.cluster.shutdown()


@pytest.fixture(autouse=True)
def _needs_javac() -> None:
    """The job's keyed Kafka serializer is compiled from jobs/java on first use (a JDK is part of set-up)."""
    assert shutil.which("javac") or os.environ.get("JAVA_HOME"), "no javac: the Makefile's set-up installs a JDK"
