"""Poison input at the edges, through the real job (minicluster, real Kafka and Cassandra): a record at the broker's
size limit, JSON nested far past any parser's depth, invalid UTF-8, an unparseable control record and a model record
naming a path outside the job's model store. Each becomes one dead letter with its reason, and the job goes on:
every valid event sent after the poison gets its recommendation, and the bounded job ends cleanly (#16)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from streamrec.config import REPO_ROOT
from streamrec.services.clients import kafka_kwargs
from tests.integration.test_control_plane import read_topic, train
from tests.integration.test_job_e2e import OUTPUTS, job_env

BROKER_LIMIT = 1_048_588  # Kafka's default message.max.bytes (record batch included): the local broker keeps it


def _big_event(user: str, ts: int, size: int) -> bytes:
    """A well-formed event whose context is padded to `size` bytes in all."""
    head = json.dumps({"event_id": f"big-{uuid.uuid4().hex[:8]}", "user_id": user, "item_id": "i1",
                       "event_type": "view", "ts": ts, "context": {"pad": ""}}).encode()  # fmt: skip
    pad = size - len(head)
    return head.replace(b'"pad": ""', b'"pad": "' + b"x" * pad + b'"')


def test_poison_records_become_dead_letters_and_the_job_goes_on(kafka_bootstrap: str, connector_jars: list[Path],
                                                                tmp_path: Path) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from operators.schema import ModelUpdate
    from streamrec.data import simulator

    sim = simulator.simulate(simulator.with_overrides(simulator.load_conf(), events=600, users=60, seed=3))
    events = sim.events
    clean = tmp_path / "events.jsonl"
    clean.write_text("".join(e.to_json() + "\n" for e in events))
    model = train(tmp_path, clean, "model", 0)

    run_id = f"poison-{uuid.uuid4().hex[:10]}"
    topics = {name: f"{run_id}-{name}" for name in ("events", "items", "control", *OUTPUTS)}
    KafkaAdminClient(**kafka_kwargs(kafka_bootstrap)).create_topics(
        [NewTopic(t, num_partitions=1, replication_factor=1) for t in topics.values()])
    before, after = events[:300], events[300:]
    user, ts = before[-1].user_id, before[-1].ts
    big = _big_event(user, ts, BROKER_LIMIT - 200)
    deep = b'{"user_id": "' + user.encode() + b'", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    not_utf8 = b'{"event_id": "bad-utf8", "user_id": "' + user.encode() + b'\xff\xfe", "item_id": "i1"}'
    poison = {"too_large": big, "not_json": deep, "not_utf8": not_utf8}

    producer = KafkaProducer(**kafka_kwargs(kafka_bootstrap), acks="all", max_request_size=2 * BROKER_LIMIT)
    for e in before:
        producer.send(topics["events"], value=e.to_json().encode(), timestamp_ms=e.ts)
    for value in poison.values():
        producer.send(topics["events"], value=value, timestamp_ms=ts).get(timeout=30)  # the broker took each
    for e in after:
        producer.send(topics["events"], value=e.to_json().encode(), timestamp_ms=e.ts)
    outside = ModelUpdate("sasrec-elsewhere", str(model), "0" * 64, int(time.time() * 1000))  # a sound artefact
    producer.send(topics["control"], value=json.dumps(outside.to_dict()).encode())
    producer.send(topics["control"], value=b"\x00\x01 not a control record")
    producer.flush()

    env = job_env(topics, model, "streamrec", tmp_path, run_id)
    env.update({"STREAMREC_DEBOUNCE_INTERVAL_MS": "0",  # one list per valid event
                "STREAMREC_JOB_CASSANDRA_SINK_ENABLED": "false",  # the rows are not what this test is about
                "STREAMREC_JOB_MODEL_STORE": str(tmp_path / "store")})
    argv = [sys.executable, "-m", "jobs.recommend"] + [a for j in connector_jars for a in ("--jar", str(j))]
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]

    dead = [json.loads(v) for _, v in read_topic(kafka_bootstrap, topics["dead-letters"]) if v is not None]
    said = [(d["source"], d["reason"], d["message"]) for d in dead]
    from_events = sorted(d["reason"] for d in dead if d["source"] == topics["events"])
    assert from_events == sorted(poison), said  # one each, nothing else
    from_control = {d["reason"]: d for d in dead if d["source"] != topics["events"]}
    assert len(dead) == len(poison) + 2 and len(from_control) == 2, said
    assert "outside the model store" in from_control["model_rejected"]["message"], said
    assert from_control.keys() - {"model_rejected"} <= {"not_json", "not_utf8", "bad_control"}, said
    by_reason = {d["reason"]: d for d in dead if d["source"] == topics["events"]}
    assert by_reason["too_large"]["raw_truncated"] and by_reason["too_large"]["raw_size"] == len(big)
    assert "nested too deeply" in by_reason["not_json"]["message"]
    assert max(len(json.dumps(d)) for d in dead) < 16_384, "a dead letter carries a preview, not the message"

    recs = [json.loads(v) for _, v in read_topic(kafka_bootstrap, topics["recommendations"]) if v is not None]
    got = {r["event_id"] for r in recs}
    assert {e.event_id for e in after} <= got, "valid events after the poison were not all served"
    assert {e.event_id for e in before} <= got
