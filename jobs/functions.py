"""Flink functions: each loads state, calls a plain operator from `operators/`, stores state, emits. No logic here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor

from jobs.config import JobConf

# Side outputs. Records between operators are Python objects (pickled); records to sinks are JSON strings.
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())
FRAUD_FLAGS = OutputTag("fraud-flags", Types.STRING())
DELETIONS = OutputTag("deletions", Types.STRING())
ITEM_EVENTS = OutputTag("item-events", Types.PICKLED_BYTE_ARRAY())


def to_json(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True, default=str)


class ParseEvents(ProcessFunction):
    """Raw Kafka value → `Event` (main output) or a dead-letter record (side output). Never raises."""

    def __init__(self, source: str) -> None:
        self.source = source

    def process_element(self, value: bytes, ctx: ProcessFunction.Context) -> Iterator[Any]:
        from operators.dead_letter import dead_letter
        from operators.schema import Rejection, parse_event

        parsed = parse_event(value)
        if isinstance(parsed, Rejection):
            yield DEAD_LETTERS, to_json(dead_letter(parsed, self.source))
        else:
            yield parsed


def _value_state(ctx: RuntimeContext, name: str, ttl_days: float) -> Any:
    desc = ValueStateDescriptor(name, Types.PICKLED_BYTE_ARRAY())
    if ttl_days > 0:
        # NOTE: the default "cleanup in background" makes PyFlink build a RocksDB compaction-filter strategy whose
        # Duration needs a Py4J gateway, which a thread-mode worker does not have: open() then hangs (measured).
        # So: explicit incremental + full-snapshot cleanup instead.
        # NOTE: visibility NeverReturnExpired makes PyFlink's process-mode worker disable its state cache: every
        # value() and update() becomes its own gRPC round trip to the JVM (measured: ~100 events/s for the job).
        # ReturnExpiredIfNotCleanedUp keeps the cache; this TTL is only a storage backstop for users gone quiet,
        # and the operators already treat state older than `state.ttl_ms` of event time as absent.
        desc.enable_time_to_live(
            StateTtlConfig.new_builder(Time.milliseconds(int(ttl_days * 86_400_000)))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
            .disable_cleanup_in_background()
            .cleanup_incrementally(10, False)
            .cleanup_full_snapshot()
            .build())
    return ctx.get_state(desc)


class UserFunction(KeyedProcessFunction):
    """Keyed by user: `operators.user.UserOperator` over Flink keyed state (bytes) and event-time timers.

    NOTE: the pseudonymiser (with its key) is built on the client and shipped inside the job graph, so workers need
    no secret in their environment; whoever can read the job's blobs on the cluster can read the key."""

    def __init__(self, job: JobConf, operators_conf: Any, pseudonymizer: Any) -> None:
        self.job = job
        self.operators_conf = operators_conf
        self.pseudonymizer = pseudonymizer
        self.op: Any = None
        self.state: Any = None

    def open(self, ctx: RuntimeContext) -> None:
        from model_export.artifact import load_artifact
        from operators.scorer import Scorer
        from operators.user import UserOperator

        artifact = load_artifact(self.job.path(self.job.model_dir))
        scorer = Scorer(artifact, int8=self.job.use_int8, threads=self.job.scorer_threads)
        self.op = UserOperator(artifact, self.operators_conf, self.pseudonymizer, scorer)
        self.state = _value_state(ctx, "user", self.job.state.ttl_days)

    def _apply(self, result: Any, ctx: Any) -> Iterator[Any]:
        if result.state is None:
            self.state.clear()
        else:
            self.state.update(result.state)
        if result.timer_ts is not None:
            ctx.timer_service().register_event_time_timer(result.timer_ts)
        for r in result.recommendations:
            yield to_json(r)
        for f in result.fraud_flags:
            yield FRAUD_FLAGS, to_json(f)
        for d in result.deletions:
            yield DELETIONS, to_json(d)
        for d in result.dead_letters:
            yield DEAD_LETTERS, to_json(d)
        for e in result.item_events:
            yield ITEM_EVENTS, e

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        yield from self._apply(self.op.step(self.state.value(), value), ctx)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        yield from self._apply(self.op.on_timer(self.state.value(), timestamp), ctx)


class ItemFunction(KeyedProcessFunction):
    """Keyed by item: `operators.item.ItemOperator` (shilling / click-farm detection, trending)."""

    def __init__(self, job: JobConf, operators_conf: Any) -> None:
        self.job = job
        self.operators_conf = operators_conf
        self.op: Any = None
        self.state: Any = None

    def open(self, ctx: RuntimeContext) -> None:
        from operators.item import ItemOperator

        self.op = ItemOperator(self.operators_conf)
        self.state = _value_state(ctx, "item", self.job.state.ttl_days)

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        result = self.op.step(self.state.value(), value)
        if result.state is None:
            self.state.clear()
        else:
            self.state.update(result.state)
        for f in result.fraud_flags:
            yield to_json(f)
        for d in result.dead_letters:
            yield DEAD_LETTERS, to_json(d)


class CassandraWrite(ProcessFunction):
    """Writes each JSON record to Cassandra through `streamrec.sinks.CassandraWriter`; emits nothing."""

    def __init__(self, job: JobConf, hosts: list[str], port: int, keyspace: str) -> None:
        self.job, self.hosts, self.port, self.keyspace = job, hosts, port, keyspace
        self.writer: Any = None

    def open(self, ctx: RuntimeContext) -> None:
        from streamrec.sinks import CassandraWriter, WriterConf

        c = self.job.cassandra_sink
        self.writer = CassandraWriter(self.hosts, self.port, WriterConf(
            keyspace=self.keyspace, max_in_flight=c.max_in_flight, retries=c.retries, backoff_ms=c.backoff_ms,
            consistency=c.consistency, request_timeout_s=c.request_timeout_s))
        self.writer.open()

    def process_element(self, value: str, ctx: ProcessFunction.Context) -> Iterator[Any]:
        self.writer.write(json.loads(value))
        return iter(())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
