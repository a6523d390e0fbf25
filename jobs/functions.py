"""Flink functions: each loads state, calls a plain operator from `operators/`, stores state, emits. No logic here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pyflink.common import Types
from pyflink.common.time import Time
from pyflink.datastream import (
    KeyedBroadcastProcessFunction,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
)
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig, ValueStateDescriptor

from jobs.config import JobConf

# Side outputs. Records between operators are Python objects (pickled); records to sinks are JSON strings.
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())
FRAUD_FLAGS = OutputTag("fraud-flags", Types.STRING())
DELETIONS = OutputTag("deletions", Types.STRING())
ITEM_EVENTS = OutputTag("item-events", Types.PICKLED_BYTE_ARRAY())
BROADCAST = OutputTag("broadcast", Types.PICKLED_BYTE_ARRAY())  # model records, to every user-operator instance


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


class ParseControl(ProcessFunction):
    """Raw `control` message → an `EraseRequest` (main output: keyed by user with the events), a `ModelUpdate`
    (side output, broadcast to every user-operator instance) or a dead letter."""

    def __init__(self, source: str) -> None:
        self.source = source

    def process_element(self, value: bytes, ctx: ProcessFunction.Context) -> Iterator[Any]:
        from operators.dead_letter import dead_letter
        from operators.schema import ModelUpdate, Rejection, parse_control

        parsed = parse_control(value)
        if isinstance(parsed, Rejection):
            yield DEAD_LETTERS, to_json(dead_letter(parsed, self.source))
        elif isinstance(parsed, ModelUpdate):
            yield BROADCAST, parsed
        else:
            yield parsed


class ParseItems(ProcessFunction):
    """Raw `items` message → `ItemMeta` (to be broadcast) or a dead letter."""

    def __init__(self, source: str) -> None:
        self.source = source

    def process_element(self, value: bytes, ctx: ProcessFunction.Context) -> Iterator[Any]:
        from operators.dead_letter import dead_letter
        from operators.schema import Rejection, parse_item

        parsed = parse_item(value)
        if isinstance(parsed, Rejection):
            yield DEAD_LETTERS, to_json(dead_letter(parsed, self.source))
        else:
            yield parsed


def control_state_descriptor() -> Any:
    """Broadcast state: "model" → the accepted `model` record; "item:<id>" → {"seq", "item"} of the latest update."""
    return MapStateDescriptor("control", Types.STRING(), Types.STRING())


class UserFunction(KeyedBroadcastProcessFunction):
    """Keyed by user: `operators.user.UserOperator` over Flink keyed state (bytes) and event-time timers, plus the
    broadcast control plane (model hot-swap, catalogue updates) and erase requests (keyed side).

    The model in force and the catalogue updates live in broadcast state, so a restored job serves the model it
    had switched to: each instance re-reads that state before its first element after (re)start.

    NOTE: the pseudonymiser (with its key) is built on the client and shipped inside the job graph, so workers need
    no secret in their environment; whoever can read the job's blobs on the cluster can read the key."""

    def __init__(self, job: JobConf, operators_conf: Any, pseudonymizer: Any) -> None:
        self.job = job
        self.operators_conf = operators_conf
        self.pseudonymizer = pseudonymizer
        self.op: Any = None
        self.state: Any = None
        self.subtask = 0
        self.synced = False

    def open(self, ctx: RuntimeContext) -> None:
        from model_export.artifact import load_artifact

        self.subtask = ctx.get_index_of_this_subtask()
        self.op = self._operator(load_artifact(self.job.path(self.job.model_dir)))
        self.state = _value_state(ctx, "user", self.job.state.ttl_days)

    def _operator(self, artifact: Any) -> Any:
        from operators.scorer import Scorer
        from operators.user import UserOperator

        scorer = Scorer(artifact, int8=self.job.use_int8, threads=self.job.scorer_threads)
        return UserOperator(artifact, self.operators_conf, self.pseudonymizer, scorer)

    # ------------------------------------------------------------------ broadcast side (control plane)

    def _sync(self, ctx: Any) -> Iterator[Any]:
        """Once per (re)start: adopt the model and catalogue recorded in broadcast state (restored with the job)."""
        if self.synced:
            return
        self.synced = True
        recorded = {k: json.loads(v) for k, v in ctx.get_broadcast_state(control_state_descriptor()).items()}
        if "model" in recorded:
            yield from self._switch(recorded["model"], ctx=None)
        from operators.schema import item_from_mapping

        for _, rec in sorted((v["seq"], v) for k, v in recorded.items() if k.startswith("item:")):
            meta = item_from_mapping(rec["item"])
            if not hasattr(meta, "reason"):
                self.op.apply_item(meta)
        self.op.catalog_version = max([v["seq"] for k, v in recorded.items() if k.startswith("item:")] or [0])

    def _switch(self, record: dict[str, Any], ctx: Any) -> Iterator[Any]:
        from operators.control import ModelRejected, model_rejection, verify_model
        from operators.schema import ModelUpdate

        update = ModelUpdate(record["version"], record["path"], record["sha256"], record["ts"])
        if update.version == self.op.version:
            if ctx is not None:
                ctx.get_broadcast_state(control_state_descriptor()).put("model", to_json(update.to_dict()))
            return
        try:
            art = verify_model(update, self.op.art)
            new = self._operator(art)
        except (ModelRejected, OSError, ValueError) as e:
            if self.subtask == 0:  # every instance verifies; one dead letter is enough
                yield DEAD_LETTERS, to_json(model_rejection(update, str(e)))
            return
        new.adopt_catalog(self.op)
        self.op = new  # atomic: the next element is scored by the new model
        if ctx is not None:
            ctx.get_broadcast_state(control_state_descriptor()).put("model", to_json(update.to_dict()))

    def process_broadcast_element(self, value: Any, ctx: KeyedBroadcastProcessFunction.Context) -> Iterator[Any]:
        from operators.schema import ItemMeta, ModelUpdate

        yield from self._sync(ctx)
        if isinstance(value, ModelUpdate):
            yield from self._switch(value.to_dict(), ctx)
        elif isinstance(value, ItemMeta):
            self.op.apply_item(value)
            ctx.get_broadcast_state(control_state_descriptor()).put(
                f"item:{value.item_id}", to_json({"seq": self.op.catalog_version, "item": value.to_dict()}))

    # ------------------------------------------------------------------ keyed side

    def _apply(self, result: Any, ctx: Any) -> Iterator[Any]:
        if result.state is None:
            self.state.clear()
        else:
            self.state.update(result.state)
        if result.timer_ts is not None:
            ctx.timer_service().register_event_time_timer(result.timer_ts)
        for r in result.recommendations:
            yield f"{r['user_key']}\n{to_json(r)}"  # keyed by user on the (compacted) recommendations topic
        for f in result.fraud_flags:
            yield FRAUD_FLAGS, to_json(f)
        for d in result.deletions:
            if d.get("kind") == "tombstone":
                yield f"{d['key']}\n"  # null value: erases the user's key from the compacted topic
            yield DELETIONS, to_json(d)
        for d in result.dead_letters:
            yield DEAD_LETTERS, to_json(d)
        for e in result.item_events:
            yield ITEM_EVENTS, e

    def process_element(self, value: Any, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext) -> Iterator[Any]:
        from operators.schema import EraseRequest

        yield from self._sync(ctx)
        if isinstance(value, EraseRequest):
            result = self.op.erase(self.state.value(), value.user_id, value.ts)
            for d in result.deletions:
                d["request_id"] = value.request_id  # the audit trail names the request it served
            yield from self._apply(result, ctx)
        else:
            yield from self._apply(self.op.step(self.state.value(), value), ctx)

    def on_timer(self, timestamp: int, ctx: KeyedBroadcastProcessFunction.OnTimerContext) -> Iterator[Any]:
        yield from self._sync(ctx)
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
        _, keyed, body = value.partition("\n")
        if keyed and not body:
            return iter(())  # a Kafka tombstone; its Cassandra deletions arrive as deletion records
        record = json.loads(body if keyed else value)
        if record.get("target", "cassandra") == "cassandra":
            self.writer.write(record)
        return iter(())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
