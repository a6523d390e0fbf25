"""The streamrec job end to end on the real services: simulated events with planted bots, farms, shilling
campaigns, malformed messages and duplicates → Kafka → the PyFlink job (minicluster) → Kafka + Cassandra."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamrec.config import REPO_ROOT
from streamrec.services.clients import kafka_kwargs
from tests.integration.test_kafka import consume_all
from tests.tiny_model import TINY_MODEL_YAML

N_EVENTS = 20_000
KEY = "e2e-test-key-0123456789abcdef"
OUTPUTS = ("recommendations", "fraud-flags", "dead-letters", "deletions")
# User detectors: each a pure function of one user's event sequence (model surprise is judged on a fixed schedule of
# the user's own events, never on timer-emitted lists), so the job and the offline replay must agree exactly.
DETERMINISTIC = {"velocity_burst", "regular_gaps", "rating_anomaly", "model_surprise"}


def dead_letter_keys(dead: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """What a dead letter says about its message (its id also hashes the source topic, which differs per run)."""
    assert len({d["id"] for d in dead}) == len(dead), "duplicate dead letters"
    return sorted((d["reason"], d["raw_encoding"], d["raw"]) for d in dead)


def deterministic_flags(flags: list[dict[str, Any]]) -> list[str]:
    return sorted(f["flag_id"] for f in flags if f.get("detector") in DETERMINISTIC)


@dataclasses.dataclass
class Run:
    sim: Any
    outputs: dict[str, list[dict[str, Any]]]
    replay: dict[str, list[dict[str, Any]]]  # the same operators run offline (`streamrec replay`) on the same stream
    pseudonym: Any
    keyspace: str
    model_dir: str
    log: str


def simulate() -> Any:
    from streamrec.data import simulator

    conf = simulator.with_overrides(simulator.load_conf(), events=N_EVENTS, users=500, seed=11)
    return simulator.simulate(dataclasses.replace(
        conf, noise=dataclasses.replace(conf.noise, malformed_rate=0.005, duplicate_rate=0.005)))


def train_tiny(tmp: Path, events: Path) -> Path:
    from streamrec.cli import main

    (tmp / "tiny.yaml").write_text(TINY_MODEL_YAML)
    rc = main(["train", "--data", str(events), "--out", str(tmp / "model"), "--conf", str(tmp / "tiny.yaml"),
               "--no-progress"])
    assert rc == 0
    return tmp / "model"


def job_env(topics: dict[str, str], model: Path, keyspace: str, tmp: Path, run_id: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({f"STREAMREC_JOB_TOPICS_{k.upper().replace('-', '_')}": v for k, v in topics.items()})
    env.update({
        "STREAMREC_JOB_BOUNDED": "true", "STREAMREC_JOB_MODEL_DIR": str(model),
        "STREAMREC_JOB_CONSUMER_GROUP": f"g-{run_id}", "STREAMREC_JOB_KAFKA_SINK_TRANSACTIONAL_ID_PREFIX": run_id,
        "STREAMREC_JOB_CHECKPOINT_DIR": str(tmp / "checkpoints"), "STREAMREC_CASSANDRA_KEYSPACE": keyspace,
        "STREAMREC_PSEUDONYM_KEY": KEY, "STREAMREC_PSEUDONYM_KEY_ID": "test-k1",
    })
    return env


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, cassandra_keyspace: str, connector_jars: list[Path],
        tmp_path_factory: pytest.TempPathFactory) -> Run:
    from kafka.admin import KafkaAdminClient, NewTopic

    from operators.privacy import Pseudonymizer
    from streamrec.data.produce import produce

    tmp = tmp_path_factory.mktemp("e2e")
    run_id = f"e2e-{uuid.uuid4().hex[:10]}"
    topics = {name: f"{run_id}-{name}" for name in ("events", "items", "control", *OUTPUTS)}
    admin = KafkaAdminClient(**kafka_kwargs(kafka_bootstrap))
    # One partition: the job sees the stream in file order, as the offline replay does, so their outputs compare.
    admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics.values()])

    sim = simulate()
    clean = tmp / "valid-events.jsonl"  # train on the valid events only (the stream also carries planted garbage)
    clean.write_text("".join(e.to_json() + "\n" for e in sim.events))
    model = train_tiny(tmp, clean)
    stream = tmp / "stream.jsonl"
    stream.write_bytes(b"".join(payload + b"\n" for payload, _, _ in sim.stream))
    from streamrec.data.simulator import load_conf

    res = produce(sim, topics["events"], topics["items"], rate=0, conf=load_conf().producer,
                  bootstrap=kafka_bootstrap, progress=False)
    assert res.sent == len(sim.stream) and res.failed == 0

    argv = [sys.executable, "-m", "jobs.recommend"] + [a for j in connector_jars for a in ("--jar", str(j))]
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=job_env(topics, model, cassandra_keyspace, tmp, run_id),
                          capture_output=True, text=True, timeout=1200)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    outputs = {name: [json.loads(v) for v in consume_all(kafka_bootstrap, topics[name], expected=1,
                                                         isolation_level="read_committed", timeout_s=20)]
               for name in OUTPUTS}
    replay = subprocess.run([sys.executable, "-m", "streamrec.cli", "replay", "--model", str(model), "--events",
                             str(stream), "--out", str(tmp / "replay")], cwd=REPO_ROOT,
                            env=job_env(topics, model, cassandra_keyspace, tmp, run_id), capture_output=True,
                            text=True, timeout=600)
    assert replay.returncode == 0, replay.stderr[-3000:]
    offline = {name: [json.loads(line) for line in (tmp / "replay" / f"{name}.jsonl").read_text().splitlines()]
               for name in ("fraud_flags", "dead_letters", "cf_neighbours")}
    outputs["cf"] = [json.loads(v) for v in consume_all(kafka_bootstrap, f"g-{run_id}-cf", expected=1,
                                                        isolation_level="read_committed", timeout_s=20)]
    yield Run(sim, outputs, offline, Pseudonymizer(KEY.encode(), "test-k1"), cassandra_keyspace, str(model), log)
    admin.delete_topics([*topics.values(), f"g-{run_id}-cf"])
    admin.close()


def test_the_python_operators_got_their_input_streamed(run: Run) -> None:
    """The default profile (process mode, `input_flush_ms: 20`) ran with every Python operator replaced by its
    streamed-input subclass (jobs/java/StreamedInput.java); every other test here checks that this changed nothing
    in what the job outputs."""
    found = re.search(r"Python operators with streamed input: (\d+)", run.log)
    assert found is not None, run.log
    assert int(found.group(1)) >= 4  # parse-control, parse-items, parse-cf, user, item (+ embed-items)


def test_one_dead_letter_per_malformed_message(run: Run) -> None:
    dead = run.outputs["dead-letters"]
    planted = run.sim.labels["malformed"]
    assert len(dead) == len(planted)
    assert collections.Counter(d["reason"] for d in dead) == collections.Counter(m["reason"] for m in planted)


def test_every_active_user_gets_recommendations_in_kafka_and_cassandra(run: Run, cassandra_session) -> None:
    recs = run.outputs["recommendations"]
    assert all(r["model_version"].startswith("sasrec-") for r in recs)
    assert len({r["rec_id"] for r in recs}) == len(recs), "duplicate recommendation records"
    per_user = collections.Counter(e.user_id for e in run.sim.events)
    labelled = set(run.sim.labels["users"])
    expected = {run.pseudonym.pseudonym(u) for u, n in per_user.items() if n >= 3 and u not in labelled}
    got = {r["user_key"] for r in recs}
    missing = expected - got
    assert not missing, f"{len(missing)} of {len(expected)} users with history got no recommendation"

    last: dict[str, dict[str, Any]] = {}
    for r in recs:  # the row Cassandra keeps is the one with the latest event time
        if r["user_key"] not in last or r["event_ts"] >= last[r["user_key"]]["event_ts"]:
            last[r["user_key"]] = r
    rows = {row.user_key: row for row in cassandra_session.execute(
        "SELECT user_key, items, model_version, event_id FROM recommendations_by_user")}
    assert expected <= set(rows)
    for key in expected:
        assert list(rows[key].items) == last[key]["items"], key
        assert rows[key].event_id == last[key]["event_id"]


def test_streaming_cf_neighbours_equal_the_offline_operators(run: Run) -> None:
    """Streaming item-item CF (operators/cf.py): the neighbours the job's item operator published to its CF topic
    are, item by item, those the offline replay's operator published last (the same item events in the same
    event-time order, whatever batching did), and each list is bounded."""
    def latest(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in records:
            if r["item_id"] not in out or r["ts"] >= out[r["item_id"]]["ts"]:
                out[r["item_id"]] = r
        return out

    job, offline = latest(run.outputs["cf"]), latest(run.replay["cf_neighbours"])
    assert len(job) >= 100, f"only {len(job)} items got CF neighbours"
    assert job == offline
    assert max(len(r["preds"]) for r in job.values()) <= 20


def test_fraud_flags_match_the_offline_operators_and_catch_the_bots(run: Run, cassandra_session) -> None:
    """The job hosts the operators faithfully (its user flags are exactly those of `streamrec replay` on the same
    stream) and flags the planted abuse: bots, click farms, shilling campaigns and their target items."""
    flags = run.outputs["fraud-flags"]
    assert len({f["flag_id"] for f in flags}) == len(flags), "duplicate flag records"
    assert deterministic_flags(flags) == deterministic_flags(run.replay["fraud_flags"])
    assert deterministic_flags(flags), "no deterministic flags at all"
    flagged_users = {f["subject"] for f in flags if f["subject_kind"] == "user"}
    flagged_items = {f["subject"] for f in flags if f["subject_kind"] == "item"}
    users = {run.pseudonym.pseudonym(u): lab["kind"] for u, lab in run.sim.labels["users"].items()}
    items = set(run.sim.labels["items"])
    detectors = collections.Counter(f.get("detector") for f in flags)
    for flagged, truth in ((flagged_users, set(users)), (flagged_items, items)):
        assert truth, "the simulation planted nothing"
        precision, recall = len(flagged & truth) / max(len(flagged), 1), len(flagged & truth) / len(truth)
        assert precision >= 0.95 and recall >= 0.9, (precision, recall, detectors)
    for kind in set(users.values()):  # bots, farm accounts, shilling accounts: each caught
        members = {u for u, k in users.items() if k == kind}
        assert len(members & flagged_users) >= 0.9 * len(members), (kind, detectors)
    ours = {(f["subject_kind"], f["subject"], f["flag_id"]) for f in flags}
    subjects = {k[:2] for k in ours}  # the keyspace is shared with other tests: look at this run's subjects only
    rows = {(r.subject_kind, r.subject, r.flag_id) for r in cassandra_session.execute(
        "SELECT subject_kind, subject, flag_id FROM fraud_flags") if (r.subject_kind, r.subject) in subjects}
    assert rows == ours


def settle_committed(bootstrap: str, topic: str, quiet_s: float, timeout_s: float) -> None:
    """Wait until the topic's last stable offset (what read_committed readers can reach) has not moved for
    `quiet_s`, at most `timeout_s`."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(**kafka_kwargs(bootstrap), isolation_level="read_committed", enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or {0})]
        last, since, deadline = None, time.monotonic(), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = c.end_offsets(parts)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.5)
    finally:
        c.close()


def latest_checkpoint(root: Path) -> Path | None:
    done = [p.parent for p in root.glob("*/chk-*/_metadata")]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def test_recovery_after_two_kills_loses_nothing_and_duplicates_nothing(
        run: Run, kafka_bootstrap: str, connector_jars: list[Path], cassandra_up, tmp_path: Path) -> None:
    """Kill -9 the job twice mid-stream, resume each time from its latest checkpoint, then let it catch up.

    Deterministic outputs (sequence-determined fraud flags, dead letters) equal the failure-free run's; no record
    is duplicated under read_committed; every user still gets recommendations; Cassandra holds exactly each user's
    latest list.
    NOTE: the restored job runs unbounded (a KafkaSource restored from a checkpoint did not end at its stopping
    offsets here), so it is stopped once it has committed all input; end-of-input debounce flushes then do not fire,
    which is why recommendation *lists* are compared per user within this run rather than against the bounded run.
    """
    import signal
    import time

    from kafka.admin import KafkaAdminClient, NewTopic

    from streamrec.data.produce import produce
    from streamrec.data.simulator import load_conf
    from streamrec.demo import job_lag
    from streamrec.services.cassandra import apply_schema, connect

    run_id = f"rec-{uuid.uuid4().hex[:10]}"
    topics = {name: f"{run_id}-{name}" for name in ("events", "items", "control", *OUTPUTS)}
    admin = KafkaAdminClient(**kafka_kwargs(kafka_bootstrap))
    admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics.values()])
    keyspace = f"rec_{uuid.uuid4().hex[:10]}"
    c = cassandra_up.cassandra
    apply_schema(c.contact_points, c.native_port, c, keyspace=keyspace)
    produce(run.sim, topics["events"], topics["items"], rate=0, conf=load_conf().producer,
            bootstrap=kafka_bootstrap, progress=False)
    env = job_env(topics, Path(run.model_dir), keyspace, tmp_path, run_id)
    env["STREAMREC_JOB_CHECKPOINT_INTERVAL_MS"] = "1000"
    env["STREAMREC_JOB_BOUNDED"] = "false"
    # Little in flight (small batches, one-batch Python bundles), so the source is still mid-stream at the first
    # checkpoints: with the defaults the pipeline takes in the whole 20k-event stream before a checkpoint completes.
    env["STREAMREC_JOB_BATCHING_MAX_EVENTS"] = "16"
    env["STREAMREC_JOB_BUNDLE_SIZE"] = "1"
    argv = [sys.executable, "-m", "jobs.recommend"] + [a for j in connector_jars for a in ("--jar", str(j))]
    chk_root = tmp_path / "checkpoints"
    restore: Path | None = None
    total = len(run.sim.stream)
    committed = 0  # input offsets committed by the checkpoint the last kill came after
    try:
        for attempt in range(3):  # two runs killed mid-stream, then one that catches up
            extra = ["--from-checkpoint", str(restore)] if restore else []
            proc = subprocess.Popen(argv + extra, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                assert proc.poll() is None, f"job exited early (attempt {attempt})"
                latest = latest_checkpoint(chk_root)
                n = int(latest.name.split("-")[1]) if latest is not None else 0
                if attempt < 2 and latest is not None and latest != restore and n >= attempt + 1:
                    # mid-stream: kill it once a new checkpoint has committed input beyond the last kill's, and
                    # before all of it: a restored job's watermark advances only with records it reads, so a job
                    # killed after reading everything would leave the debounce timers it fired (and their Cassandra
                    # rows) with nothing to fire them again. (Each checkpoint commits what the source read while the
                    # previous barrier drained the data in flight: 4,000-4,700 events a step here, so fixed fractions
                    # of the input, as before, could be jumped over.)
                    lag = job_lag(kafka_bootstrap, f"g-{run_id}", topics["events"])
                    done = total - lag if lag is not None else 0
                    if done > committed:
                        assert done < total, f"attempt {attempt} read all the input before a mid-stream checkpoint"
                        committed = done
                        break
                if attempt == 2 and job_lag(kafka_bootstrap, f"g-{run_id}", topics["events"]) == 0:
                    # All input is consumed; the debounce timers the last watermark fires, and the transactions
                    # holding their lists, commit over the next checkpoints: wait until the committed end of the
                    # recommendations topic has not moved for four checkpoint intervals.
                    settle_committed(kafka_bootstrap, topics["recommendations"], quiet_s=8.0, timeout_s=120.0)
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"attempt {attempt} did not get there in time")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            restore = latest_checkpoint(chk_root)
            assert restore is not None

        got = {name: [json.loads(v) for v in consume_all(kafka_bootstrap, topics[name], expected=1,
                                                         isolation_level="read_committed", timeout_s=20)]
               for name in OUTPUTS}
        recs, flags = got["recommendations"], got["fraud-flags"]
        assert len({r["rec_id"] for r in recs}) == len(recs), "duplicate recommendations after recovery"
        assert len({f["flag_id"] for f in flags}) == len(flags), "duplicate flags after recovery"
        assert deterministic_flags(flags) == deterministic_flags(run.outputs["fraud-flags"])
        assert dead_letter_keys(got["dead-letters"]) == dead_letter_keys(run.outputs["dead-letters"])
        assert {r["user_key"] for r in recs} == {r["user_key"] for r in run.outputs["recommendations"]}
        last: dict[str, tuple[int, str, tuple[str, ...]]] = {}
        for r in recs:
            if r["user_key"] not in last or r["event_ts"] >= last[r["user_key"]][0]:
                last[r["user_key"]] = (r["event_ts"], r["event_id"], tuple(r["items"]))
        session = connect(c.contact_points, c.native_port, keyspace=keyspace)
        try:
            rows = {r.user_key: (r.event_id, tuple(r.items)) for r in session.execute(
                "SELECT user_key, event_id, items FROM recommendations_by_user")}
        finally:
            session.cluster.shutdown()
        assert rows == {k: v[1:] for k, v in last.items()}
    finally:
        admin.delete_topics(list(topics.values()))
        admin.close()


def rerun(run: Run, kafka_bootstrap: str, tmp_path: Path, prefix: str, argv: list[str],
          extra_env: dict[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The module's events again, into fresh topics, through the job started by `argv` (bounded): its outputs."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from streamrec.data.produce import produce
    from streamrec.data.simulator import load_conf

    run_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
    topics = {name: f"{run_id}-{name}" for name in ("events", "items", "control", *OUTPUTS)}
    admin = KafkaAdminClient(**kafka_kwargs(kafka_bootstrap))
    admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics.values()])
    try:
        produce(run.sim, topics["events"], topics["items"], rate=0, conf=load_conf().producer,
                bootstrap=kafka_bootstrap, progress=False)
        env = {**job_env(topics, Path(run.model_dir), run.keyspace, tmp_path, run_id), **(extra_env or {})}
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return {name: [json.loads(v) for v in consume_all(kafka_bootstrap, topics[name], expected=1,
                                                          isolation_level="read_committed", timeout_s=20)]
                for name in OUTPUTS}
    finally:
        admin.delete_topics(list(topics.values()))
        admin.close()


def test_submit_to_standalone_cluster_gives_the_same_outputs(
        run: Run, kafka_bootstrap: str, flink_cluster, tmp_path: Path) -> None:
    """`streamrec submit` (`flink run -py` on the local standalone cluster) produces what the minicluster did."""
    got = rerun(run, kafka_bootstrap, tmp_path, "sub", [sys.executable, "-m", "streamrec.cli", "submit"])
    assert deterministic_flags(got["fraud-flags"]) == deterministic_flags(run.outputs["fraud-flags"])
    assert dead_letter_keys(got["dead-letters"]) == dead_letter_keys(run.outputs["dead-letters"])
    assert {r["user_key"] for r in got["recommendations"]} == {r["user_key"] for r in run.outputs["recommendations"]}


def test_thread_mode_gives_the_same_outputs(
        run: Run, kafka_bootstrap: str, connector_jars: list[Path], tmp_path: Path) -> None:
    """`execution_mode: thread` (the Python operators inside the JVM, PEMJA; here with conf/low-latency.yaml, which
    runs in it): the same events give the same lists, flags and dead letters as the default profile in process mode.
    The user detectors learn the feed's base rates per user shard, so this run keeps the default profile's shards
    (the low-latency profile has fewer)."""
    from jobs.config import load_job_conf

    argv = [sys.executable, "-m", "jobs.recommend", "--conf", "low-latency.yaml"]
    got = rerun(run, kafka_bootstrap, tmp_path, "thr", argv + [a for j in connector_jars for a in ("--jar", str(j))],
                {"STREAMREC_JOB_EXECUTION_MODE": "thread",
                 "STREAMREC_JOB_BATCHING_SHARDS": str(load_job_conf("local.yaml").batching.shards)})

    # The lists an event asked for (not debounced) are a function of the events alone: the same ones, to the event
    # (rec_id). A debounced list waits for its timer or the user's next event; an event arriving later than the
    # watermark allows can fall before or after the timer, and the watermark's pace differs between the profiles
    # (200 vs 1000 ms): there, the same users. The items themselves can differ a little between any two runs:
    # streaming CF neighbours come back through Kafka at wall-clock pace.
    def at_once(recs: list[dict[str, Any]]) -> collections.Counter[str]:
        return collections.Counter(r["rec_id"] for r in recs if not r["debounced"])

    assert len(got["recommendations"]) > 1000
    assert at_once(got["recommendations"]) == at_once(run.outputs["recommendations"])
    assert {r["user_key"] for r in got["recommendations"]} == {r["user_key"] for r in run.outputs["recommendations"]}
    debounced = [sum(r["debounced"] for r in recs) for recs in (got["recommendations"], run.outputs["recommendations"])]
    assert abs(debounced[0] - debounced[1]) <= 0.01 * debounced[1], debounced
    assert deterministic_flags(got["fraud-flags"]) == deterministic_flags(run.outputs["fraud-flags"])
    assert dead_letter_keys(got["dead-letters"]) == dead_letter_keys(run.outputs["dead-letters"])
