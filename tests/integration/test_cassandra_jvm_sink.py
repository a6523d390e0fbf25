"""The job's Cassandra sink in the JVM (jobs/java/CassandraSink.java) against the real node, in a Flink job on the
minicluster: the same rows as the Python writer (streamrec/sinks.py) for every record kind, event-time ordered,
deletions of both tables, tombstones and Kafka-only records skipped, and a record it cannot write fails the job
naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamrec.config import REPO_ROOT
from streamrec.services.cassandra import apply_schema, connect
from streamrec.services.settings import ServicesConf
from streamrec.sinks import CassandraWriter, WriterConf

# A bounded Flink job: the records (argv[1], a JSON list of strings) → CassandraSink (keyspace argv[2]).
JOB = r"""
import json, sys
from pyflink.common import Configuration, Types
from pyflink.datastream import StreamExecutionEnvironment
from jobs.config import load_job_conf
from jobs.recommend import cassandra_sink
from streamrec.services.settings import services

records, keyspace, jars = json.loads(open(sys.argv[1]).read()), sys.argv[2], sys.argv[3:]
conf = Configuration()
conf.set_string("restart-strategy.type", "none")
env = StreamExecutionEnvironment.get_execution_environment(conf)
env.set_parallelism(1)
for jar in jars:
    env.add_jars(f"file://{jar}")
c = services().cassandra
env.from_collection(records, type_info=Types.STRING()) \
    .sink_to(cassandra_sink(load_job_conf("local.yaml"), c.contact_points, c.native_port, keyspace, c.security)) \
    .name("cassandra").uid("cassandra")
env.execute("cassandra-sink-test")
"""


def run_sink(records: list[str], keyspace: str, jars: list[Path], tmp_path: Path,
             coalesce_ms: int | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """The sink as conf/local.yaml configures it (`coalesce_ms`: that setting overridden)."""
    f = tmp_path / f"records-{uuid.uuid4().hex[:6]}.json"
    f.write_text(json.dumps(records))
    env = os.environ.copy()
    if coalesce_ms is not None:
        env["STREAMREC_JOB_CASSANDRA_SINK_COALESCE_MS"] = str(coalesce_ms)
    return subprocess.run([sys.executable, "-c", JOB, str(f), keyspace, *map(str, jars)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def table_writes(session: Any, keyspace: str, table: str) -> int:
    """Writes the node applied to a table since it started (Cassandra's own count: system_views)."""
    row = session.execute("SELECT count FROM system_views.local_write_latency WHERE keyspace_name = %s "
                          "AND table_name = %s", (keyspace, table)).one()  # fmt: skip
    return int(row.count) if row is not None else 0


@pytest.fixture
def keyspaces(cassandra_up: ServicesConf) -> Iterator[tuple[str, str]]:
    """Two keyspaces of each test's own: the JVM sink's and the Python writer's."""
    c = cassandra_up.cassandra
    names = (f"test_jvm_{uuid.uuid4().hex[:10]}", f"test_py_{uuid.uuid4().hex[:10]}")
    for ks in names:
        apply_schema(c.contact_points, c.native_port, c, keyspace=ks)
    yield names
    session = connect(c.contact_points, c.native_port)
    try:
        for ks in names:
            session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=60)
    finally:
        session.cluster.shutdown()


def rec(user: str, ts: int, items: list[str], event_id: str) -> dict[str, Any]:
    return {"kind": "recommendation", "user_key": user, "key_id": "k1", "items": items,
            "scores": [round(1.0 / (i + 1), 3) for i in range(len(items))], "model_version": "v1",
            "event_id": event_id, "event_ts": ts, "rec_id": f"r-{event_id}"}  # fmt: skip


def flag(subject: str, flag_id: str, ts: int, kind: str = "fraud_flag", subject_kind: str = "user") -> dict[str, Any]:
    return {"kind": kind, "subject_kind": subject_kind, "subject": subject, "flag_id": flag_id, "score": 0.75,
            "reasons": ["velocity_burst", "night"], "evidence": {"events_per_min": 120, "z": [1, 2]},
            "model_version": "v1", "event_ts": ts}  # fmt: skip


def dumps(r: dict[str, Any]) -> str:
    return json.dumps(r, separators=(",", ":"), sort_keys=True)  # as the job's records (operators.batch.to_json)


def rows(session: Any) -> dict[str, Any]:
    recs = {r.user_key: (r.key_id, list(r.items), [round(x, 3) for x in r.scores], r.model_version, r.event_id,
                         r.event_ts, r.wt)
            for r in session.execute("SELECT user_key, key_id, items, scores, model_version, event_id, event_ts, "
                                     "WRITETIME(items) AS wt FROM recommendations_by_user")}  # fmt: skip
    flags = {(r.subject_kind, r.subject, r.flag_id): (r.score, list(r.reasons), r.evidence, r.model_version,
                                                      r.event_ts, r.wt)
             for r in session.execute("SELECT subject_kind, subject, flag_id, score, reasons, evidence, "
                                      "model_version, event_ts, WRITETIME(score) AS wt FROM fraud_flags")}  # fmt: skip
    return {"recommendations": recs, "fraud_flags": flags}


@pytest.mark.parametrize("coalesce", [True, False])
def test_jvm_sink_writes_what_the_python_writer_writes(cassandra_up: ServicesConf, keyspaces: tuple[str, str],
                                                       connector_jars: list[Path], tmp_path: Path,
                                                       coalesce: bool) -> None:  # fmt: skip
    """The same rows in the end, with list rows coalesced (conf/local.yaml's `coalesce_ms`) or not: a user's lists
    held together leave only the newest (all of them on a tie of event times), so Cassandra applies fewer writes."""
    jvm_ks, py_ks = keyspaces
    erase = {"kind": "deletion", "target": "cassandra", "table": "recommendations_by_user", "user_key": "u-erased",
             "event_ts": 9000, "deletion_id": "d1"}  # fmt: skip
    erase_flags = {"kind": "deletion", "target": "cassandra", "table": "fraud_flags", "subject_kind": "user",
                   "subject": "u-flagged", "user_key": "u-flagged", "event_ts": 3000, "deletion_id": "d2"}  # fmt: skip
    notice = {"kind": "tombstone", "target": "kafka", "topic": "recommendations", "key": "u-erased",
              "user_key": "u-erased", "event_ts": 9000, "deletion_id": "d3"}  # fmt: skip
    records: list[dict[str, Any]] = [
        rec("u-newer-first", 2000, ["a", "b"], "e2"), rec("u-newer-first", 1000, ["c"], "e1"),  # older arrives late
        rec("u-erased", 1000, ["x"], "e3"), erase,  # the erasure deletes the row
        flag("u-flagged", "f-old", 1000), flag("u-flagged", "f-new", 5000), erase_flags,  # deletes f-old only
        flag("velocity", "alarm-1", 4000, kind="detector_alarm", subject_kind="detector"),
        flag("item-9", "f-item", 4000, subject_kind="item"),
        *[rec(f"u{i:03d}", 10_000 + i, [f"i{i}", f"i{i + 1}"], f"e-many-{i}") for i in range(37)],  # many batches
        *[rec("u-lists", 1000 * k, [f"l{k}"], f"e-lists-{k}") for k in (1, 2, 3, 4)],  # coalesced: only the last
        rec("u-tie", 7000, ["t1"], "e-tie-1"), rec("u-tie", 7000, ["t2", "t3"], "e-tie-2"),  # a tie: both sent
    ]
    kafka_form = [dumps(r) if r["kind"] != "recommendation" else f"{r['user_key']}\n{dumps(r)}" for r in records]
    kafka_form.insert(3, "u-tombstoned\n")  # a tombstone on the recommendations topic: no row, no error
    u5 = next(i for i, f in enumerate(kafka_form) if f.startswith("u005\n"))
    kafka_form[u5] = kafka_form[u5].replace("\n", "\n ", 1)  # the JSON after a space: read (and held) all the same
    f9 = next(i for i, f in enumerate(kafka_form) if '"f-item"' in f)
    kafka_form[f9] = " " + kafka_form[f9]  # a flag's JSON after a space: one JSON record all the same
    kafka_form.append(dumps(notice))  # a deletion notice meant for Kafka only: no row

    got = run_sink(kafka_form, jvm_ks, connector_jars, tmp_path, None if coalesce else 0)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]

    c = cassandra_up.cassandra
    w = CassandraWriter(c.contact_points, c.native_port, WriterConf(keyspace=py_ks), security=c.security)
    w.open()
    try:
        w.write_many([r for r in [*records, notice] if r.get("target", "cassandra") == "cassandra"])
        w.flush()
    finally:
        w.close()

    sessions = [connect(c.contact_points, c.native_port, keyspace=ks) for ks in (jvm_ks, py_ks)]
    try:
        jvm, py = (rows(s) for s in sessions)
    finally:
        for s in sessions:
            s.cluster.shutdown()
    assert jvm == py
    recs, flags = jvm["recommendations"], jvm["fraud_flags"]
    assert recs["u-newer-first"][1:2] == (["a", "b"],) and recs["u-newer-first"][4] == "e2"  # event time won
    assert recs["u-newer-first"][6] == 2000 * 1000  # USING TIMESTAMP = event time in µs
    assert "u-erased" not in recs and "u-tombstoned" not in recs
    assert len([u for u in recs if u.startswith("u0")]) == 37
    assert ("user", "u-flagged", "f-old") not in flags and ("user", "u-flagged", "f-new") in flags
    assert flags[("detector", "velocity", "alarm-1")][2] == '{"events_per_min":120,"z":[1,2]}'
    assert ("item", "item-9", "f-item") in flags
    assert recs["u-lists"][1] == ["l4"] and recs["u-lists"][6] == 4000 * 1000


def test_coalescing_sends_only_each_users_newest_list(cassandra_up: ServicesConf, keyspaces: tuple[str, str],
                                                      connector_jars: list[Path], tmp_path: Path) -> None:
    """The same records through the sink with coalescing (conf/local.yaml) and without: the same rows, and Cassandra
    counts exactly the superseded lists fewer writes. A user's rows are spread over different batches here (more than
    `batch_max_rows` others between them), so without coalescing each is a write of its own."""
    on_ks, off_ks = keyspaces
    spread = [rec("u-lists", 1000 * k, [f"l{k}"], f"e-lists-{k}") for k in (1, 2, 3, 4)] + [
        rec("u-late", 5000, ["new"], "e-late-2"), rec("u-late", 4500, ["old"], "e-late-1")]  # older arrives late
    records: list[dict[str, Any]] = []
    for k, r in enumerate(spread):  # each followed by 11 lists of other users
        records += [r, *(rec(f"f{i:02d}", 10_000 + i, [f"i{i}"], f"e-f{i}") for i in range(11 * k, 11 * k + 11))]
    kafka_form = [f"{r['user_key']}\n{dumps(r)}" for r in records]
    # lists under a key that is not their user_key are never held (held lists are coalesced by key): both written,
    # in different batches (11 such lists of other users after the first one fill its batch)
    keyed = [rec("u-keyed", 6000, ["k2"], "e-keyed-2"), rec("u-keyed", 5000, ["k1"], "e-keyed-1")]
    fill = [rec(f"u-fill{i:02d}", 6000, ["x"], f"e-fill-{i}") for i in range(11)]
    kafka_form = [f"another-key\n{dumps(keyed[0])}", *(f"another-key\n{dumps(r)}" for r in fill), *kafka_form,
                  f"another-key\n{dumps(keyed[1])}"]  # fmt: skip
    records += keyed + fill
    for ks, coalesce_ms in ((on_ks, None), (off_ks, 0)):
        got = run_sink(kafka_form, ks, connector_jars, tmp_path, coalesce_ms)
        assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    c = cassandra_up.cassandra
    sessions = [connect(c.contact_points, c.native_port, keyspace=ks) for ks in (on_ks, off_ks)]
    try:
        on, off = (rows(s) for s in sessions)
        writes = [table_writes(sessions[0], ks, "recommendations_by_user") for ks in (on_ks, off_ks)]
    finally:
        for s in sessions:
            s.cluster.shutdown()
    assert on == off
    assert on["recommendations"]["u-lists"][1] == ["l4"] and on["recommendations"]["u-late"][1] == ["new"]
    assert writes == [len(records) - 4, len(records)]  # u-lists' first three lists, u-late's late older one


def test_a_record_the_jvm_sink_cannot_write_fails_the_job_naming_it(cassandra_up: ServicesConf,
                                                                    keyspaces: tuple[str, str],
                                                                    connector_jars: list[Path],
                                                                    tmp_path: Path) -> None:  # fmt: skip
    bad = flag("u-bad", "f-bad", 1000)
    del bad["score"]
    got = run_sink([dumps(flag("u-ok", "f-ok", 1000)), dumps(bad)], keyspaces[0], connector_jars, tmp_path)
    assert got.returncode != 0
    out = got.stdout + got.stderr
    assert "malformed fraud_flag record for Cassandra (score is not a number)" in out and '"flag_id":"f-bad"' in out


def test_a_record_neither_json_nor_a_keyed_list_fails_the_job_naming_it(cassandra_up: ServicesConf,
                                                                        keyspaces: tuple[str, str],
                                                                        connector_jars: list[Path],
                                                                        tmp_path: Path) -> None:  # fmt: skip
    """Without a "{" first or a key line, a record is not taken for a tombstone: it fails as the JSON it is not."""
    got = run_sink([dumps(flag("u-ok", "f-ok", 1000)), "no json here"], keyspaces[0], connector_jars, tmp_path)
    assert got.returncode != 0
    assert "not a JSON record for Cassandra: no json here" in got.stdout + got.stderr


def test_a_held_list_the_jvm_sink_cannot_write_fails_the_job_naming_it(cassandra_up: ServicesConf,
                                                                       keyspaces: tuple[str, str],
                                                                       connector_jars: list[Path],
                                                                       tmp_path: Path) -> None:  # fmt: skip
    """A list is held as its text and bound when it is sent (coalescing on, conf/local.yaml): one that cannot be
    bound still fails the job, naming it, when it leaves the hold (here at the end of input)."""
    bad = rec("u-bad", 1000, [], "e-bad")
    bad["items"] = [{"score": 0.5}]  # an item object without item_id
    got = run_sink([f"u-ok\n{dumps(rec('u-ok', 1000, ['a'], 'e-ok'))}", f"u-bad\n{dumps(bad)}"], keyspaces[0],
                   connector_jars, tmp_path)  # fmt: skip
    assert got.returncode != 0
    out = got.stdout + got.stderr
    assert "malformed recommendation record for Cassandra (no item_id)" in out and '"event_id":"e-bad"' in out
