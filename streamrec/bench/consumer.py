"""The alternative a team would write instead of the Flink job: a plain Python Kafka consumer service.

One process = a kafka-python consumer (N processes share the topic's partitions: in the bench a fixed share each,
`--partitions`, as Flink's source assigns them; run by hand, a consumer group), per-user and per-item state in dicts
(user id → state bytes, item id → state bytes), one onnxruntime call per scored event, the same outputs to Kafka
(kafka-python producer) and Cassandra (`streamrec.sinks.CassandraWriter`, the job's own sink).

The per-message logic is the job's, call for call (`jobs/functions.py`): `parse_event` (rejections → dead letters
with the source topic), `UserOperator.step` per event and `on_timer` for debounce timers (event time: a watermark of
max timestamp − out-of-orderness − 1, as Flink's bounded-out-of-orderness strategy), `ItemOperator.step` on every
item event, records serialised with the same `to_json`, recommendations keyed by user (tombstones on erasure).
Recommendations, fraud flags and deletions meant for Cassandra go there as in the job. Not mirrored: the job's
control plane (model hot-swap, catalogue updates and erase requests from the `control` / `items` topics).

Delivery: at least once — Kafka outputs and Cassandra writes are flushed before offsets are committed (every
`--commit-interval-ms` and at shutdown). What it does not have, unlike the job: state survives nothing
(a restart or a rebalance starts every moved user afresh), outputs are not exactly once (a crash between flush and
commit repeats them), no event-time alignment across partitions (each process has its own watermark), and with N
processes the item operator of each process sees only the item events of its own users (the job re-keys them by
item, so its click-farm / shilling detectors see every account; here each sees 1/N of them).

Run one process: `python -m streamrec.bench.consumer --conf local.yaml` with the job's env overrides
(STREAMREC_JOB_TOPICS_*, STREAMREC_JOB_CONSUMER_GROUP, STREAMREC_CASSANDRA_KEYSPACE, STREAMREC_PSEUDONYM_KEY, ...).
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT_NAMES = ("recommendations", "fraud-flags", "dead-letters", "deletions")


def to_json(record: dict[str, Any]) -> str:
    """The job's record serialisation (`jobs.functions.to_json`; not imported: that module imports pyflink)."""
    return json.dumps(record, separators=(",", ":"), sort_keys=True, default=str)


class Stopwatch:
    """Accumulated wall time per stage (`with sw("parse"): ...`); a disabled one costs one branch."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0
            self.calls[stage] += 1

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds
        self.calls[stage] += 1


@dataclass
class Outputs:
    """What one message (or timer) produced: Kafka records per output topic name, and records for Cassandra."""

    # (output name, key, value) in emission order; value JSON, or None for a tombstone
    kafka: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    cassandra: list[dict[str, Any]] = field(default_factory=list)  # recommendations, flags, deletions

    def extend(self, other: Outputs) -> None:
        self.kafka += other.kafka
        self.cassandra += other.cassandra


class EventHandler:
    """Per-message logic of one consumer process: parse → user operator → item operator, plus event-time timers.

    Mirrors `ParseEvents`, `UserFunction` (`_apply`: state update/clear, timer, outputs), `ItemFunction` and the
    Cassandra union of `jobs/recommend.py`; state lives in `user_states` / `item_states`."""

    def __init__(self, user_op: Any, item_op: Any, source: str, out_of_orderness_ms: int,
                 stopwatch: Stopwatch | None = None) -> None:  # fmt: skip
        self.user_op = user_op
        self.item_op = item_op
        self.source = source
        self.ooo = int(out_of_orderness_ms)
        self.sw = stopwatch or Stopwatch(enabled=False)
        self.user_states: dict[str, bytes] = {}
        self.item_states: dict[str, bytes] = {}
        self._timers: list[tuple[int, int, str]] = []
        self._timer_set: set[tuple[int, str]] = set()
        self._seq = 0
        self.max_ts: int | None = None
        self.watermark = -(2**63)
        self.events = 0  # messages handled
        self.timers_fired = 0

    def handle(self, raw: bytes, record_ts: int | None = None) -> Outputs:
        """One Kafka message: its raw value (as the job's source reads it) and record timestamp (the job's event
        time; producers set it to the event's `ts`, which is used when `record_ts` is None)."""
        from operators.dead_letter import dead_letter
        from operators.schema import Rejection, parse_event

        self.events += 1
        out = Outputs()
        with self.sw("parse"):
            ev = parse_event(raw)
        if isinstance(ev, Rejection):
            with self.sw("json"):
                out.kafka.append(("dead-letters", None, to_json(dead_letter(ev, self.source))))
        else:
            user = ev.user_id
            with self.sw("user_operator"):
                res = self.user_op.step(self.user_states.get(user), ev)
            self._apply(user, res, out)
            if record_ts is None:
                record_ts = ev.ts
        # The watermark follows record timestamps (also of records that turn out invalid, as at Flink's source).
        if record_ts is not None and (self.max_ts is None or record_ts > self.max_ts):
            self.max_ts = record_ts
            self.advance(record_ts - self.ooo - 1, out)
        return out

    def advance(self, watermark: int, out: Outputs | None = None) -> Outputs:
        """Move event time to `watermark` and fire every timer at or below it, oldest first."""
        out = out if out is not None else Outputs()
        if watermark <= self.watermark:
            return out
        self.watermark = watermark
        while self._timers and self._timers[0][0] <= watermark:
            ts, _, user = heapq.heappop(self._timers)
            self._timer_set.discard((ts, user))
            self.timers_fired += 1
            with self.sw("user_timer"):
                res = self.user_op.on_timer(self.user_states.get(user), ts)
            self._apply(user, res, out)
        return out

    def _apply(self, user: str, res: Any, out: Outputs) -> None:
        """`UserFunction._apply` + `ItemFunction.process_element` + the sinks' routing."""
        if res.state is None:
            self.user_states.pop(user, None)
        else:
            self.user_states[user] = res.state
        if res.timer_ts is not None and (res.timer_ts, user) not in self._timer_set:
            self._timer_set.add((res.timer_ts, user))
            self._seq += 1
            heapq.heappush(self._timers, (res.timer_ts, self._seq, user))
        with self.sw("json"):
            for r in res.recommendations:  # keyed by user: the recommendations topic is compacted
                out.kafka.append(("recommendations", r["user_key"], to_json(r)))
                _to_cassandra(out, r)
            for f in res.fraud_flags:
                out.kafka.append(("fraud-flags", None, to_json(f)))
                _to_cassandra(out, f)
            for d in res.deletions:
                if d.get("kind") == "tombstone":  # erases the user's key from the compacted topic
                    out.kafka.append(("recommendations", d["key"], None))
                out.kafka.append(("deletions", None, to_json(d)))
                _to_cassandra(out, d)
            for d in res.dead_letters:
                out.kafka.append(("dead-letters", None, to_json(d)))
        for ie in res.item_events:
            item = ie["item_id"]
            with self.sw("item_operator"):
                ir = self.item_op.step(self.item_states.get(item), ie)
            if ir.state is None:
                self.item_states.pop(item, None)
            else:
                self.item_states[item] = ir.state
            with self.sw("json"):
                for f in ir.fraud_flags:
                    out.kafka.append(("fraud-flags", None, to_json(f)))
                    _to_cassandra(out, f)
                for d in ir.dead_letters:
                    out.kafka.append(("dead-letters", None, to_json(d)))


def _to_cassandra(out: Outputs, record: dict[str, Any]) -> None:
    """What `CassandraWrite` writes: records meant for Cassandra (not, e.g., a Kafka tombstone's description)."""
    if record.get("target", "cassandra") == "cassandra":
        out.cassandra.append(record)


class Sinks:
    """Kafka (kafka-python producer, acks=all) and Cassandra (`CassandraWriter`) outputs of one process."""

    def __init__(self, bootstrap: str, topics: dict[str, str], writer: Any | None, stopwatch: Stopwatch) -> None:
        from kafka import KafkaProducer

        from streamrec.services.clients import kafka_kwargs

        self.topics = topics
        self.producer = KafkaProducer(**kafka_kwargs(bootstrap), acks="all", linger_ms=5,
                                      batch_size=262144, max_request_size=2 * 1024 * 1024)  # fmt: skip
        self.writer = writer
        self.sw = stopwatch
        self.sent: dict[str, int] = defaultdict(int)
        self.cassandra_writes = 0

    def emit(self, out: Outputs) -> None:
        if out.kafka:
            with self.sw("kafka_send"):
                for name, key, value in out.kafka:
                    self.producer.send(self.topics[name], key=None if key is None else key.encode("utf-8"),
                                       value=None if value is None else value.encode("utf-8"))  # fmt: skip
                    self.sent[name] += 1
        if out.cassandra and self.writer is not None:
            with self.sw("cassandra_write"):
                for rec in out.cassandra:
                    self.writer.write(rec)
                    self.cassandra_writes += 1

    def flush(self) -> None:
        with self.sw("flush_kafka"):
            self.producer.flush(timeout=60)
        if self.writer is not None:
            with self.sw("flush_cassandra"):
                self.writer.flush()

    def close(self) -> None:
        self.flush()
        self.producer.close(timeout=10)
        if self.writer is not None:
            self.writer.close()


def build_handler(conf_path: str, operators_conf_path: str, stopwatch: Stopwatch | None = None) -> tuple[Any, Any]:
    """(EventHandler, JobConf) from the job's own config and env overrides: same model, scorer settings,
    pseudonymiser and operators as `UserFunction.open` / `ItemFunction.open`."""
    from jobs.config import load_job_conf
    from model_export.artifact import load_artifact
    from operators.config import load_operators_conf
    from operators.item import ItemOperator
    from operators.privacy import Pseudonymizer
    from operators.scorer import Scorer
    from operators.user import UserOperator

    job = load_job_conf(conf_path)
    ops = load_operators_conf(operators_conf_path)
    pseud = Pseudonymizer.from_env(allow_dev_key=ops.privacy.allow_dev_key)
    artifact = load_artifact(job.path(job.model_dir))
    scorer = Scorer.from_conf(artifact, ops.scorer, job.use_int8, job.scorer_threads)
    handler = EventHandler(UserOperator(artifact, ops, pseud, scorer), ItemOperator(ops), job.topics.events,
                           job.watermark.out_of_orderness_ms, stopwatch)  # fmt: skip
    return handler, job


def run(args: argparse.Namespace) -> int:
    """The consumer service loop (one process)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import CommitFailedError, RebalanceInProgressError

    from streamrec.services.clients import kafka_kwargs
    from streamrec.services.settings import services
    from streamrec.sinks import CassandraWriter, WriterConf

    sw = Stopwatch(enabled=not args.no_timers)
    # the group coordinator's joins, rebalances and heartbeat errors go to this process's log (stderr)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka.coordinator").setLevel(logging.INFO)
    handler, job = build_handler(args.conf, args.operators_conf, sw)
    svc = services()
    t = job.topics
    topics = {"recommendations": t.recommendations, "fraud-flags": t.fraud_flags, "dead-letters": t.dead_letters,
              "deletions": t.deletions}  # fmt: skip
    writer = None
    if job.cassandra_sink.enabled:
        c = job.cassandra_sink
        writer = CassandraWriter(svc.cassandra.contact_points, svc.cassandra.native_port, WriterConf(
            keyspace=svc.cassandra.keyspace, max_in_flight=c.max_in_flight, retries=c.retries,
            backoff_ms=c.backoff_ms, max_backoff_ms=c.max_backoff_ms, consistency=c.consistency,
            request_timeout_s=c.request_timeout_s), security=svc.cassandra.security)
        writer.open()
    sinks = Sinks(svc.kafka.bootstrap, topics, writer, sw)
    consumer = KafkaConsumer(**kafka_kwargs(svc.kafka.bootstrap), group_id=job.consumer_group,
                             enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=500,
                             isolation_level="read_committed")  # fmt: skip

    def commit() -> None:
        sinks.flush()
        with sw("commit"):
            try:
                consumer.commit()
            except (RebalanceInProgressError, CommitFailedError) as e:
                # a group member joined or left: this commit is refused, the next one (after the rebalance) commits
                # what this process then owns; what it processed of a partition that moved is processed again by
                # the new owner (at least once, as below). Seen as a crash of one of two processes joining at once.
                print(f"commit skipped: {type(e).__name__}", file=sys.stderr, flush=True)

    # NOTE: no rebalance listener: kafka-python 3 runs listeners on its IO thread, where a synchronous commit is
    # refused. Events processed but not committed when a partition moves are processed again by its new owner
    # (at least once), without the state the old owner built for their users.
    if args.partitions:
        # A fixed share, no group membership (the bench's way; offsets are still committed under the group).
        # kafka-python 3.0.12, as a group member, can be left stuck in its join: seen 2026-12-05 in 2 of ~22 runs
        # of tests/integration/test_bench_consumer.py, the group leader logged its SyncGroup response (partition 1)
        # but never applied it, re-polling its join for minutes while the other member took both partitions.
        consumer.assign([TopicPartition(t.events, int(p)) for p in args.partitions.split(",")])
    else:
        consumer.subscribe([t.events])
    stop = {"now": False}

    def on_signal(_sig: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    first_msg: float | None = None
    last_commit = time.monotonic()
    interval = args.commit_interval_ms / 1000.0
    assigned: set[Any] = set()
    try:
        while not stop["now"]:
            t0 = time.perf_counter()
            batch = consumer.poll(timeout_ms=100)
            sw.add("poll", time.perf_counter() - t0)
            now_assigned = set(consumer.assignment())
            if now_assigned != assigned:
                assigned = now_assigned
                print(f"assignment: {sorted(tp.partition for tp in assigned)}", file=sys.stderr, flush=True)
            for records in batch.values():
                if first_msg is None:
                    first_msg = time.monotonic()
                for r in records:
                    sinks.emit(handler.handle(r.value, r.timestamp))
            if time.monotonic() - last_commit >= interval:
                commit()
                last_commit = time.monotonic()
        commit()
    finally:
        stats = {
            "events": handler.events,
            "timers_fired": handler.timers_fired,
            "users": len(handler.user_states),
            "items": len(handler.item_states),
            "state_bytes": sum(map(len, handler.user_states.values())),
            "sent": dict(sinks.sent),
            "cassandra_writes": sinks.cassandra_writes,
            "seconds_running": time.monotonic() - started,
            "seconds_since_first_message": None if first_msg is None else time.monotonic() - first_msg,
            "stage_seconds": dict(sw.seconds),
            "stage_calls": dict(sw.calls),
        }
        try:
            sinks.close()
        finally:
            consumer.close(autocommit=False)
        if args.stats:
            Path(args.stats).write_text(json.dumps(stats, indent=1))
    return 0


def main(argv: list[str] | None = None, runner: Callable[[argparse.Namespace], int] = run) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conf", default="local.yaml", help="the job's config (topics, model, sinks, group)")
    ap.add_argument("--operators-conf", default="operators.yaml")
    ap.add_argument("--commit-interval-ms", type=int, default=1000, help="flush outputs + commit offsets this often")
    ap.add_argument("--stats", default="", help="write per-stage timings and counts here (JSON) on exit")
    ap.add_argument("--no-timers", action="store_true", help="do not time stages")
    ap.add_argument("--partitions", default="", help="read these partitions of the events topic (comma-separated: "
                    "a fixed share, no group membership; offsets still committed under the group) instead of "
                    "joining the consumer group")
    return runner(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
