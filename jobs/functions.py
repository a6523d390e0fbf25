"""Flink functions: each loads state, calls the operators (`operators/batch.py` drives them a batch at a time),
stores state, emits. No logic here.

Records between operators are batches: the JVM groups raw events by user shard (`jobs/java/ShardBatcher.java`), the
user function keeps each user's state in a MapState under its shard's key, and every output kind leaves a function
as one string per batch (records joined by U+001E, split again in the JVM by `BatchSplitter.java`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pyflink.common import Row, Types
from pyflink.common.time import Time
from pyflink.datastream import (
    KeyedBroadcastProcessFunction,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
)
from pyflink.datastream.state import (
    ListStateDescriptor,
    MapStateDescriptor,
    StateTtlConfig,
    ValueStateDescriptor,
)

from jobs import batching, heap
from jobs.config import JobConf
from jobs.embedded import on_python_thread, preload_native_modules, subtask_index

preload_native_modules()  # thread mode: before anything imports them on a task thread (jobs/embedded.py)

from operators.batch import Outputs, item_chunk, to_json  # noqa: E402

# Keyed records, as PyFlink's keyed Python operators read them: Row(shard key, value), keyed in the JVM by field 0.
USER_BATCH = Types.ROW([Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])  # (user shard key, frame)
ITEM_BATCH = Types.ROW([Types.INT(), Types.PICKLED_BYTE_ARRAY()])  # (item shard key, batch.item_chunk(events))
ITEM_META = Types.ROW([Types.INT(), Types.PICKLED_BYTE_ARRAY()])  # (item shard key, ItemMeta), to the encoder
# Side outputs (output kind → one joined string per batch, except ITEM_EVENTS: ITEM_BATCH records).
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())
FRAUD_FLAGS = OutputTag("fraud-flags", Types.STRING())
DELETIONS = OutputTag("deletions", Types.STRING())
ITEM_EVENTS = OutputTag("item-events", ITEM_BATCH)
BROADCAST = OutputTag("broadcast", Types.PICKLED_BYTE_ARRAY())  # model records, to every user-operator instance
CF_UPDATES = OutputTag("cf-updates", Types.STRING())  # published CF neighbours, "KEY\nVALUE" joined per batch

__all__ = ["to_json"]


def _ttl(ttl_days: float) -> Any:
    # NOTE: the default "cleanup in background" makes PyFlink build a RocksDB compaction-filter strategy whose
    # Duration needs a Py4J gateway, which a thread-mode worker does not have: open() then hangs (measured).
    # So: explicit incremental + full-snapshot cleanup instead.
    # NOTE: visibility NeverReturnExpired makes PyFlink's process-mode worker disable its state cache: every
    # read and write becomes its own gRPC round trip to the JVM (measured: ~100 events/s for the job).
    # ReturnExpiredIfNotCleanedUp keeps the cache; this TTL is only a storage backstop for users gone quiet,
    # and the operators already treat state older than `state.ttl_ms` of event time as absent.
    # NOTE: incremental cleanup visits whole state entries, and an entry here is a shard's map (every user or item
    # of the shard): Flink's TtlMapState.getUnexpiredOrNull copies each of its values into a new map. It runs at
    # every access, so one entry per access (1, not 10: with <= 10 shards, 10 meant every shard's map, i.e. a
    # copy of all the state, at every get and put; in thread mode on the operator's thread, ~58 % of the Java
    # samples JFR took there). Every shard is still visited once per `batching.shards` accesses.
    return (StateTtlConfig.new_builder(Time.milliseconds(int(ttl_days * 86_400_000)))
            .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
            .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
            .disable_cleanup_in_background()
            .cleanup_incrementally(1, False)
            .cleanup_full_snapshot()
            .build())  # fmt: skip


def _map_state(ctx: RuntimeContext, name: str, ttl_days: float) -> MapStore:
    """id → state bytes, under the shard's key: PyFlink writes a shard's changed entries back to the JVM in one
    request per bundle (a ValueState per user would take one round trip per user)."""
    desc = MapStateDescriptor(name, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
    if ttl_days > 0:
        desc.enable_time_to_live(_ttl(ttl_days))
    return MapStore(ctx.get_map_state(desc))


class MapStore:
    """A shard's MapState as an `operators.batch.Store`. `get_many` reads the keys PyFlink has not cached yet with
    one wait for all of them (`jobs.worker_patches.prefetch`; without the patches, one round trip per key)."""

    __slots__ = ("state",)

    def __init__(self, state: Any) -> None:
        self.state = state

    def get(self, key: str) -> bytes | None:
        return self.state.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.state.put(key, value)

    def remove(self, key: str) -> None:
        self.state.remove(key)

    def get_many(self, keys: list[str]) -> dict[str, bytes | None]:
        from jobs.worker_patches import prefetch

        prefetch(self.state, keys)
        return {k: self.state.get(k) for k in keys}


def _emit(out: Outputs, item_keys: Sequence[int]) -> Iterator[Any]:
    """A batch's outputs: one joined string per kind; item events grouped by item shard."""
    if out.recommendations:
        yield batching.join_records(out.recommendations)
    if out.fraud_flags:
        yield FRAUD_FLAGS, batching.join_records(out.fraud_flags)
    if out.deletions:
        yield DELETIONS, batching.join_records(out.deletions)
    if out.dead_letters:
        yield DEAD_LETTERS, batching.join_records(out.dead_letters)
    if out.item_events:
        by_shard: dict[int, list[dict[str, Any]]] = {}
        for e in out.item_events:
            by_shard.setdefault(batching.shard_key(str(e.get("item_id")), item_keys), []).append(e)
        for key, evs in by_shard.items():
            yield ITEM_EVENTS, Row(key, item_chunk(evs))


def _worker_setup(patches: bool) -> None:
    """Process-wide settings of the Python worker this function runs in (before its first bundle ends)."""
    if patches:
        from jobs import worker_patches

        worker_patches.install()


class ParseControl(ProcessFunction):
    """Raw `control` message → an erase request (main output: a USER_BATCH record holding an erase frame, keyed by the
    user's shard: it travels with the event batches), a `ModelUpdate` (side output, broadcast to every user-operator
    instance) or a dead letter."""

    def __init__(self, source: str, user_keys: Sequence[int], patches: bool = True) -> None:
        self.source = source
        self.user_keys = list(user_keys)
        self.patches = patches

    def open(self, ctx: RuntimeContext) -> None:
        _worker_setup(self.patches)

    def process_element(self, value: bytes, ctx: ProcessFunction.Context) -> Iterator[Any]:
        from operators.dead_letter import dead_letter
        from operators.schema import ModelUpdate, Rejection, parse_control

        parsed = parse_control(value)
        if isinstance(parsed, Rejection):
            yield DEAD_LETTERS, to_json(dead_letter(parsed, self.source))
        elif isinstance(parsed, ModelUpdate):
            yield BROADCAST, parsed
        else:
            key = batching.shard_key(parsed.user_id, self.user_keys)
            yield Row(key, batching.encode_erase(key, parsed.to_dict()))


class ParseItems(ProcessFunction):
    """Raw `items` message → `ItemMeta` (to be broadcast; with `item_keys`: Row(item shard key, meta), for the
    embedding operator) or a dead letter."""

    def __init__(self, source: str, patches: bool = True, item_keys: Sequence[int] | None = None) -> None:
        self.source = source
        self.patches = patches
        self.item_keys = None if item_keys is None else list(item_keys)

    def open(self, ctx: RuntimeContext) -> None:
        _worker_setup(self.patches)

    def process_element(self, value: bytes, ctx: ProcessFunction.Context) -> Iterator[Any]:
        from operators.dead_letter import dead_letter
        from operators.schema import Rejection, parse_item

        parsed = parse_item(value)
        if isinstance(parsed, Rejection):
            yield DEAD_LETTERS, to_json(dead_letter(parsed, self.source))
        elif self.item_keys is None:
            yield parsed
        else:
            yield Row(batching.shard_key(parsed.item_id, self.item_keys), parsed)


class ParseCf(ProcessFunction):
    """A batch of raw records of the job's CF topic (Row(key, batch frame): `recommend.batch_cf`) → one tuple of
    `CfUpdate`s (to be broadcast: one record per batch for every user-operator instance) and a dead letter for each
    record that is not one."""

    def __init__(self, source: str, patches: bool = True) -> None:
        self.source = source
        self.patches = patches

    def open(self, ctx: RuntimeContext) -> None:
        _worker_setup(self.patches)

    def process_element(self, value: Any, ctx: ProcessFunction.Context) -> Iterator[Any]:
        from operators.cf import parse_records

        updates, dead = parse_records(batching.decode_batch(value[1]), self.source)
        if updates:
            yield updates
        if dead:
            yield DEAD_LETTERS, batching.join_records(dead)


class _MapDigests:
    """`operators.embed.Digests` over a MapState."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def get(self, key: str) -> str | None:
        got: str | None = self.state.get(key)
        return got

    def __setitem__(self, key: str, value: str) -> None:
        self.state.put(key, value)


class EmbedItems(KeyedProcessFunction):
    """Keyed by item shard: `items` records → themselves at once, and their text embedded (`operators.embed`) when
    the shard's processing-time timer fires, `batch_delay_ms` after the first text queued; both go to the
    broadcast. An encoder failure gives each queued item a dead letter (the records themselves went on already)."""

    def __init__(self, job: JobConf, encoder_dir: str, onnx_cache: str, max_tokens: int, weights_sha256: str) -> None:
        self.job = job
        self.encoder_dir = encoder_dir
        self.onnx_cache = onnx_cache
        self.max_tokens = max_tokens
        self.weights_sha256 = weights_sha256
        self.op: Any = None
        self.pending: Any = None
        self.digests: Any = None

    def open(self, ctx: RuntimeContext) -> None:
        from pathlib import Path

        from model_export.content import exported_encoder
        from operators.embed import ItemEmbedder

        _worker_setup(self.job.patch_workers())
        def load() -> Any:
            ex = exported_encoder(Path(self.encoder_dir), Path(self.onnx_cache), self.max_tokens)
            if ex.weights_sha256 != self.weights_sha256:
                raise RuntimeError(f"encoder {self.encoder_dir} changed since the job was submitted "
                                   f"(weights sha256 {ex.weights_sha256[:12]}…, expected {self.weights_sha256[:12]}…)")
            return ex, ex.encoder(int8=self.job.content.int8)

        ex, enc = on_python_thread(load)
        enc.embed(["warm-up"])  # onnxruntime's first run allocates and plans: not on the first published item's time
        self.op = ItemEmbedder(enc.embed, ex.weights_sha256, self.job.content.max_batch)
        self.pending = ctx.get_state(ValueStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY()))
        self.digests = ctx.get_map_state(MapStateDescriptor("digests", Types.STRING(), Types.STRING()))

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        from operators.embed import EmbedState

        pending: dict[str, str] = self.pending.value() or {}
        was_empty = not pending
        state, out = self.op.step(EmbedState(pending, _MapDigests(self.digests)), value)
        if state.pending:
            self.pending.update(state.pending)
        else:
            self.pending.clear()
        if was_empty and state.pending:
            now = ctx.timer_service().current_processing_time()
            ctx.timer_service().register_processing_time_timer(now + self.job.content.batch_delay_ms)
        yield from out

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        from operators.dead_letter import OPERATOR_ERROR, operator_dead_letter
        from operators.embed import EmbedState

        pending: dict[str, str] = self.pending.value() or {}
        if not pending:
            return
        self.pending.clear()
        try:
            _, out = self.op.flush(EmbedState(pending, _MapDigests(self.digests)))
        except Exception as e:  # noqa: BLE001 - the items stay known by their records; the dead letters say why
            for item in pending:
                yield DEAD_LETTERS, to_json(operator_dead_letter(
                    OPERATOR_ERROR, f"embedding failed: {type(e).__name__}: {e}", "embed_items", {"item_id": item}))
            return
        yield from out


def control_state_descriptor() -> Any:
    """Broadcast state: "model" → the accepted `model` record; "item:<id>" → {"seq", "item"} of the latest update;
    "emb:<id>" → the item's latest stream embedding (`ItemEmbedding.to_dict`); "cf:<id>" → its latest published CF
    neighbours (`CfUpdate.to_dict`)."""
    return MapStateDescriptor("control", Types.STRING(), Types.STRING())


class UserFunction(KeyedBroadcastProcessFunction):
    """Keyed by user shard: batches of raw events and erase requests → `operators.batch` over the users' states
    (MapState user_id → state bytes) and event-time debounce timers, plus the broadcast control plane (model
    hot-swap, catalogue updates).

    Timers: a shard's pending debounce timers are indexed in a ValueState (time → user ids), and the shard keeps a
    Flink timer at the earliest of them only (`operators.batch.due_add`): when it fires, every timer of the shard the
    watermark has passed is served in one batch (their own times are kept) and the next earliest gets the timer.
    One Flink timer per distinct time, as before 2026-12-02, made every watermark at a backlog fire thousands of
    Python timer calls, one synchronous bundle end every `bundle_size` of them.

    The model in force and the catalogue updates live in broadcast state, so a restored job serves the model it
    had switched to: each instance re-reads that state before its first element after (re)start.

    NOTE: the pseudonymiser (with its key) is built on the client and shipped inside the job graph, so workers need
    no secret in their environment; whoever can read the job's blobs on the cluster can read the key."""

    def __init__(self, job: JobConf, operators_conf: Any, pseudonymizer: Any, source: str,
                 user_keys: Sequence[int], item_keys: Sequence[int]) -> None:
        self.job = job
        self.operators_conf = operators_conf
        self.pseudonymizer = pseudonymizer
        self.source = source
        self.user_keys = list(user_keys)
        self.item_keys = list(item_keys)
        self.op: Any = None
        self.users: Any = None
        self.due: Any = None
        self.rates: Any = None
        self.alarms: Any = None
        self.subtask = 0
        self.synced = False

    def open(self, ctx: RuntimeContext) -> None:
        from model_export.artifact import load_artifact

        _worker_setup(self.job.patch_workers())
        self.subtask = subtask_index(ctx)
        self.op = on_python_thread(lambda: self._operator(load_artifact(self.job.path(self.job.model_dir))))
        self.users = _map_state(ctx, "users", self.job.state.ttl_days)
        self.due = ctx.get_state(ValueStateDescriptor("due", Types.PICKLED_BYTE_ARRAY()))
        self.rates = ctx.get_state(ValueStateDescriptor("rates", Types.PICKLED_BYTE_ARRAY()))  # the shard's base rates
        if self.job.python_metrics:  # a miscalibrated detector (operators/baserates.py), beside its alarm record
            self.alarms = ctx.get_metrics_group().counter("detector_alarms")
        heap.freeze(self.job.gc_freeze, self.job.gc_young_threshold)

    def _operator(self, artifact: Any) -> Any:
        from operators.scorer import Scorer
        from operators.user import UserOperator

        scorer = Scorer.from_conf(artifact, self.operators_conf.scorer, self.job.use_int8, self.job.scorer_threads)
        return UserOperator(artifact, self.operators_conf, self.pseudonymizer, scorer)

    # ------------------------------------------------------------------ broadcast side (control plane)

    def _sync(self, ctx: Any) -> Iterator[Any]:
        """Once per (re)start: adopt the model and catalogue recorded in broadcast state (restored with the job)."""
        if self.synced:
            return
        import json

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
        from operators.embed import ItemEmbedding

        for k, v in sorted(recorded.items()):
            if k.startswith("emb:"):
                self.op.apply_embedding(ItemEmbedding.from_dict(v))
        from operators.cf import CfUpdate

        for k, v in sorted(recorded.items()):
            if k.startswith("cf:"):
                self.op.apply_cf(CfUpdate.from_dict(v))

    def _switch(self, record: dict[str, Any], ctx: Any) -> Iterator[Any]:
        from operators.control import ModelRejected, model_rejection, verify_model
        from operators.schema import ModelUpdate

        update = ModelUpdate(record["version"], record["path"], record["sha256"], record["ts"])
        if update.version == self.op.version:
            if ctx is not None:
                ctx.get_broadcast_state(control_state_descriptor()).put("model", to_json(update.to_dict()))
            return
        try:
            new = on_python_thread(lambda: self._operator(
                verify_model(update, self.op.art, self.job.path(self.job.model_store))))
        except (ModelRejected, OSError, ValueError) as e:
            if self.subtask == 0:  # every instance verifies; one dead letter is enough
                yield DEAD_LETTERS, to_json(model_rejection(update, str(e)))
            return
        new.adopt_catalog(self.op)
        self.op = new  # atomic: the next batch is scored by the new model
        heap.refreeze(self.job.gc_freeze)  # the old operator's cycles collected, once
        if ctx is not None:
            ctx.get_broadcast_state(control_state_descriptor()).put("model", to_json(update.to_dict()))

    def process_broadcast_element(self, value: Any, ctx: KeyedBroadcastProcessFunction.Context) -> Iterator[Any]:
        from operators.embed import ItemEmbedding
        from operators.schema import ItemMeta, ModelUpdate

        yield from self._sync(ctx)
        if isinstance(value, ModelUpdate):
            yield from self._switch(value.to_dict(), ctx)
        elif isinstance(value, ItemMeta):
            self.op.apply_item(value)
            ctx.get_broadcast_state(control_state_descriptor()).put(
                f"item:{value.item_id}", to_json({"seq": self.op.catalog_version, "item": value.to_dict()}))
        elif isinstance(value, ItemEmbedding):
            self.op.apply_embedding(value)
            ctx.get_broadcast_state(control_state_descriptor()).put(f"emb:{value.item_id}", to_json(value.to_dict()))
        elif isinstance(value, tuple):  # a batch of the CF topic's records (ParseCf)
            state = ctx.get_broadcast_state(control_state_descriptor())
            for update in value:
                self.op.apply_cf(update)
                state.put(f"cf:{update.item_id}", to_json(update.to_dict()))

    # ------------------------------------------------------------------ keyed side (one shard)

    def _finish(self, out: Outputs, ctx: Any) -> Iterator[Any]:
        if out.timers:
            from operators import batch

            due: dict[int, list[str]] = self.due.value() or {}
            timer = batch.due_add(due, out.timers)
            if timer is not None:
                ctx.timer_service().register_event_time_timer(timer)
            self.due.update(due)
        if out.alarms and self.alarms is not None:
            self.alarms.inc(out.alarms)
        yield from _emit(out, self.item_keys)

    def process_element(self, value: bytes, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext) -> Iterator[Any]:
        from operators import batch
        from operators.schema import EraseRequest

        yield from self._sync(ctx)
        if batching.is_erase(value):
            req = batching.decode_erase(value)
            out = batch.user_erase(self.op, self.users, EraseRequest(
                str(req["user_id"]), str(req["request_id"]), int(req["ts"])))  # type: ignore[call-overload]
        else:
            key = ctx.get_current_key()
            out = batch.user_events(self.op, self.users, batching.decode_batch(value), self.source,
                                    lambda user: batching.shard_key(user, self.user_keys) == key,
                                    self.rates)  # fmt: skip
        yield from self._finish(out, ctx)

    def on_timer(self, timestamp: int, ctx: KeyedBroadcastProcessFunction.OnTimerContext) -> Iterator[Any]:
        from operators import batch

        yield from self._sync(ctx)
        due: dict[int, list[str]] = self.due.value() or {}
        fired, timer = batch.due_take(due, max(timestamp, ctx.timer_service().current_watermark()))
        if not fired:
            return  # a timer at a time already served (kept when it was the earliest; or a job restored from before)
        if due:
            self.due.update(due)
        else:
            self.due.clear()
        if timer is not None:
            ctx.timer_service().register_event_time_timer(timer)
        yield from self._finish(batch.user_timers(self.op, self.users, fired), ctx)


class ItemFunction(KeyedProcessFunction):
    """Keyed by item shard: lists of item events → `operators.item.ItemOperator` over the items' states
    (MapState item_id → state bytes): shilling / click-farm detection. Flags go to Kafka and Cassandra.

    Item events arrive in an order batching and parallelism shuffle; they wait in a ListState until the watermark
    passes them and are then run in event-time order (`operators.batch.event_time_order`), so the detectors see
    the same sequence whatever the arrival order."""

    def __init__(self, job: JobConf, operators_conf: Any) -> None:
        self.job = job
        self.operators_conf = operators_conf
        self.op: Any = None
        self.items: Any = None
        self.waiting: Any = None
        self.first: Any = None
        self.legacy: Any = None
        self.rates: Any = None
        self.cf: Any = None
        self.cf_states: Any = None

    def open(self, ctx: RuntimeContext) -> None:
        from operators.cf import CfOperator
        from operators.item import ItemOperator

        _worker_setup(self.job.patch_workers())
        self.op = ItemOperator(self.operators_conf)
        self.items = _map_state(ctx, "items", self.job.state.ttl_days)
        if self.operators_conf.cf.enabled:  # streaming CF: each item's predecessors (operators/cf.py)
            self.cf = CfOperator(self.operators_conf.cf)
            self.cf_states = _map_state(ctx, "cf", self.job.state.ttl_days)
        # Waiting item events (operators.batch.wait_chunk): appended chunks and their earliest event time. "waiting"
        # is the layout before 2026-12-02 (every chunk in one value), read once by a timer of a restored job.
        self.waiting = ctx.get_list_state(ListStateDescriptor("waiting-chunks", Types.PICKLED_BYTE_ARRAY()))
        self.first = ctx.get_state(ValueStateDescriptor("waiting-first", Types.LONG()))
        self.legacy = ctx.get_state(ValueStateDescriptor("waiting", Types.PICKLED_BYTE_ARRAY()))
        self.rates = ctx.get_state(ValueStateDescriptor("rates", Types.PICKLED_BYTE_ARRAY()))  # the shard's base rate
        heap.freeze(self.job.gc_freeze, self.job.gc_young_threshold)

    def process_element(self, events: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        from operators import batch

        chunk, timer = batch.wait_chunk_of(self.first.value(), events)
        if chunk is not None:
            self.waiting.add(chunk)
        if timer is not None:
            self.first.update(timer)
            ctx.timer_service().register_event_time_timer(timer)
        return iter(())

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        from operators import batch

        chunks = list(self.waiting.get() or ())
        old = self.legacy.value()
        if old is not None:
            chunks = batch.legacy_chunks(old) + chunks
            self.legacy.clear()
        if not chunks:
            return
        due, rest, first = batch.buffer_take(chunks, max(timestamp, ctx.timer_service().current_watermark()))
        if not due and old is None:
            return
        if rest and first is not None:
            self.waiting.update(rest)  # the chunks left as they were, then the rest of the others re-cut
            self.first.update(first)
            ctx.timer_service().register_event_time_timer(first)
        else:
            self.waiting.clear()
            self.first.clear()
        out = batch.item_events(self.op, self.items, due, self.rates, self.cf, self.cf_states)
        if out.fraud_flags:
            yield batching.join_records(out.fraud_flags)
        if out.cf_updates:
            yield CF_UPDATES, batching.join_records(out.cf_updates)
        if out.dead_letters:
            yield DEAD_LETTERS, batching.join_records(out.dead_letters)


