"""The plain-consumer alternative handles each message exactly as the Flink job's functions do.

The reference is `jobs/functions.py` itself (UserFunction, ItemFunction, fed batches as the JVM groups them) driven
with in-memory keyed state and timers, so a consumer that skips a stage (item operator, timers, dead letters) or
routes / serialises an output differently fails here."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pytest

from operators.config import OperatorsConf
from operators.privacy import Pseudonymizer
from streamrec.bench.consumer import to_json

KEY = Pseudonymizer(b"bench-unit-test-key-0123", "bench-k1")
OOO = 5000
# User detectors are functions of the user's own events; item detectors see the item events in arrival order, which
# batching (and any parallelism) changes.
USER_DETECTORS = {"velocity_burst", "regular_gaps", "rating_anomaly", "model_surprise"}


class _KeyedValue:
    """A ValueState scoped to the current key, as Flink gives a keyed function."""

    def __init__(self) -> None:
        self.store: dict[Any, Any] = {}
        self.key: Any = None

    def value(self) -> Any:
        return self.store.get(self.key)

    def update(self, v: Any) -> None:
        self.store[self.key] = v

    def clear(self) -> None:
        self.store.pop(self.key, None)


class _KeyedList(_KeyedValue):
    """A ListState scoped to the current key."""

    def get(self) -> list[Any]:
        return list(self.store.get(self.key, ()))

    def add(self, v: Any) -> None:
        self.store.setdefault(self.key, []).append(v)


class _MapState(dict):  # type: ignore[type-arg]
    """The functions' MapState (id → state bytes). Ids are unique across shards, so one dict holds every shard's."""

    def put(self, key: str, value: bytes) -> None:
        self[key] = value

    def remove(self, key: str) -> None:
        self.pop(key, None)


class _Ctx:
    """Timer service, current key and watermark (and an empty broadcast state for the control plane)."""

    def __init__(self, timers: list[tuple[int, Any]], key: Any, watermark: int) -> None:
        self.timers, self.key, self.watermark = timers, key, watermark
        self.broadcast: dict[str, str] = {}

    def timer_service(self) -> Any:
        return self

    def register_event_time_timer(self, ts: int) -> None:
        self.timers.append((ts, self.key))

    def current_watermark(self) -> int:
        return self.watermark

    def get_current_key(self) -> Any:
        return self.key

    def get_broadcast_state(self, _descriptor: Any) -> Any:
        return self.broadcast


def _main_output(value: str) -> tuple[str | None, str | None]:
    """A user-operator main-output string as the job's Kafka sink writes it: "KEY\nVALUE" (keyed), "KEY\n"
    (tombstone) or a plain value."""
    key, sep, body = value.partition("\n")
    if not sep:
        return None, value
    return key, body or None


def _operators(model: Path) -> tuple[Any, Any]:
    from model_export.artifact import load_artifact
    from operators.item import ItemOperator
    from operators.scorer import Scorer
    from operators.user import UserOperator

    art = load_artifact(model)
    conf = OperatorsConf()
    return UserOperator(art, conf, KEY, Scorer(art)), ItemOperator(conf)


def _user_of(payload: bytes) -> str | None:
    """The user id the JVM batcher finds (`ShardKeys.userId`): a top-level string "user_id", else None."""
    try:
        d = json.loads(payload)
    except ValueError:
        return None
    u = d.get("user_id") if isinstance(d, dict) else None
    return u if isinstance(u, str) else None


def reference_outputs(
    model: Path, stream: list[tuple[bytes, bytes | None, int]], source: str, batch: int = 1
) -> tuple[list[tuple[str, str | None, str | None]], list[dict[str, Any]], dict[str, bytes], dict[str, bytes]]:
    """The job's functions (`jobs/functions.py`: UserFunction, ItemFunction) over `stream`, as the JVM feeds them:
    raw events grouped by user shard into batches of `batch` (consecutive events of a shard; a batch is sent when
    full, and before the watermark passes its earliest event), watermark = max record ts - OOO - 1, event-time
    timers fired oldest first.
    Returns the Kafka records (output, key, value), the Cassandra rows, and the final user / item keyed state."""
    from jobs import batching
    from jobs.config import JobConf
    from jobs.functions import DEAD_LETTERS, DELETIONS, FRAUD_FLAGS, ITEM_EVENTS, ItemFunction, UserFunction

    keys = list(range(100, 108))
    user_op, item_op = _operators(model)
    uf = UserFunction(JobConf(), OperatorsConf(), KEY, source, keys, keys)
    uf.op, uf.users, uf.due = user_op, _MapState(), _KeyedValue()
    itf = ItemFunction(JobConf(), OperatorsConf())
    itf.op, itf.items = item_op, _MapState()
    itf.waiting, itf.first, itf.legacy = _KeyedList(), _KeyedValue(), _KeyedValue()

    def item_key(k: Any) -> None:
        itf.waiting.key = itf.first.key = itf.legacy.key = k
    names = {id(FRAUD_FLAGS): "fraud-flags", id(DEAD_LETTERS): "dead-letters", id(DELETIONS): "deletions"}
    out: list[tuple[str, str | None, str | None]] = []
    timers: list[tuple[int, Any]] = []
    item_timers: list[tuple[int, Any]] = []
    fired: set[tuple[int, Any]] = set()
    item_fired: set[tuple[int, Any]] = set()
    watermark = -(2**63)

    def split(value: str) -> list[str]:
        return value.split(batching.SEP)

    def route(results: Any) -> None:
        for r in results:
            if isinstance(r, str):
                out.extend(("recommendations", *_main_output(v)) for v in split(r))
            elif r[0] is ITEM_EVENTS:  # Row(item shard key, events): buffered until the watermark passes them
                item_key(r[1][0])
                assert not list(itf.process_element(r[1][1], _Ctx(item_timers, r[1][0], watermark)))
            else:
                out.extend((names[id(r[0])], None, v) for v in split(r[1]))

    pending: dict[int, list[bytes]] = {}
    earliest: dict[int, int] = {}

    def send(key: int) -> None:
        uf.due.key = key
        earliest.pop(key, None)
        route(list(uf.process_element(batching.encode_batch(key, pending.pop(key)), _Ctx(timers, key, watermark))))

    def route_item(results: Any) -> None:
        for ir in results:
            if isinstance(ir, str):
                out.extend(("fraud-flags", None, v) for v in split(ir))
            else:
                out.extend((names[id(ir[0])], None, v) for v in split(ir[1]))

    def fire(upto: int) -> None:
        """The watermark reaches the user function (its timers fire), then the item function downstream."""
        while True:
            due = sorted(t for t in set(timers) if t[0] <= upto and t not in fired)
            if not due:
                break
            t, k = due[0]
            fired.add((t, k))
            uf.due.key = k
            route(list(uf.on_timer(t, _Ctx(timers, k, upto))))
        while True:
            due = sorted(t for t in set(item_timers) if t[0] <= upto and t not in item_fired)
            if not due:
                break
            t, k = due[0]
            item_fired.add((t, k))
            item_key(k)
            route_item(list(itf.on_timer(t, _Ctx(item_timers, k, upto))))

    max_ts = None
    for payload, _key, ts in stream:
        user = _user_of(payload)
        key = keys[0] if user is None else batching.shard_key(user, keys)
        pending.setdefault(key, []).append(payload)
        earliest[key] = min(earliest.get(key, ts), ts)
        if len(pending[key]) >= batch:
            send(key)
        if max_ts is None or ts > max_ts:
            max_ts = ts
            watermark = ts - OOO - 1
            for k in [k for k, t in earliest.items() if t <= watermark]:  # the batcher's event-time timers fire
                send(k)  # before the watermark goes on: no watermark overtakes a buffered event
            fire(watermark)
    for k in list(pending):  # end of input: the batcher's last batches, then the final watermark's timers
        send(k)
    if batch > 1:
        fire(2**63 - 1)
    else:  # only the item function's: the consumer never fires debounce timers past its last record
        timers.clear()
        fire(2**63 - 1)
    return out, _cassandra_rows(out), dict(uf.users), dict(itf.items)


def _cassandra_rows(records: list[tuple[str, str | None, str | None]]) -> list[dict[str, Any]]:
    """The rows the job's Cassandra sink (jobs/java/CassandraSink.java) writes: those of the records its Kafka sinks
    get (lists, flags, deletions meant for Cassandra; no tombstones, no dead letters)."""
    rows = []
    for name, _key, value in records:
        if name in ("recommendations", "fraud-flags", "deletions") and value:
            r = json.loads(value)
            if r.get("target", "cassandra") == "cassandra":
                rows.append(r)
    return rows


@pytest.fixture(scope="module")
def consumer_run(bench_model: Path, bench_sim: Any) -> tuple[list[tuple[str, str | None, str | None]],
                                                              list[dict[str, Any]], Any]:  # fmt: skip
    from streamrec.bench.consumer import EventHandler

    user_op, item_op = _operators(bench_model)
    h = EventHandler(user_op, item_op, "events-topic", OOO)
    kafka: list[tuple[str, str | None, str | None]] = []
    cassandra: list[dict[str, Any]] = []
    for payload, _key, ts in bench_sim.stream:
        o = h.handle(payload, ts)
        kafka += o.kafka
        cassandra += o.cassandra
    return kafka, cassandra, h


def _per_key(records: list[tuple[str, str | None, str | None]]) -> dict[tuple[str, str | None], list[Any]]:
    """Records per (output, Kafka key), in order: what a keyed topic's consumers see (order across keys is free)."""
    got: dict[tuple[str, str | None], list[Any]] = collections.defaultdict(list)
    for name, key, value in records:
        got[(name, key)].append(value)
    return dict(got)


def test_consumer_outputs_equal_the_jobs_functions(bench_model: Path, bench_sim: Any, consumer_run: Any) -> None:
    """Event by event (batches of one), the job's functions give the consumer's records, rows and state."""
    kafka, cassandra, h = consumer_run
    ref, ref_cassandra, users, items = reference_outputs(bench_model, bench_sim.stream, "events-topic")
    kinds = {name for name, _, _ in ref}
    assert {"recommendations", "fraud-flags", "dead-letters"} <= kinds  # the stream exercises every path
    assert h.timers_fired > 0  # and debounce timers
    assert collections.Counter(kafka) == collections.Counter(ref)  # same records, keys and bytes
    assert _per_key(kafka) == _per_key(ref)  # in the same order per key (the job serves due timers per shard)
    assert sorted(map(to_json, cassandra)) == sorted(map(to_json, ref_cassandra))  # the same Cassandra rows
    assert h.user_states == users and h.item_states == items and items  # same keyed state, item operator included


def test_job_batches_keep_every_deterministic_output(bench_model: Path, bench_sim: Any, consumer_run: Any) -> None:
    """Batches of many events (as the JVM sends them) change only which lists debounce timers emit (those follow
    the watermark): dead letters and fraud flags are the same records, and every user gets lists."""
    kafka, _, _ = consumer_run
    ref, _, users, _ = reference_outputs(bench_model, bench_sim.stream, "events-topic", batch=40)

    def of(records: list[Any], name: str) -> collections.Counter[str | None]:
        return collections.Counter(v for n, _, v in records if n == name
                                   and (name != "fraud-flags" or json.loads(v)["detector"] in USER_DETECTORS))

    for name in ("dead-letters", "fraud-flags"):
        assert of(ref, name) == of(kafka, name), name
    assert of(ref, "fraud-flags")
    assert set(users) == set(consumer_run[2].user_states)
    keys = {k for n, k, _ in kafka if n == "recommendations"}
    assert keys == {k for n, k, _ in ref if n == "recommendations"}  # every user who got a list still does


def test_cassandra_gets_recs_and_flags(consumer_run: Any) -> None:
    kafka, cassandra, _ = consumer_run
    want = [json.loads(v) for name, _, v in kafka if name in ("recommendations", "fraud-flags") and v]
    assert [r for r in cassandra if r["kind"] in ("recommendation", "fraud_flag")] == want
    assert not any(r.get("kind") == "dead_letter" for r in cassandra)


def test_dead_letters_one_per_malformed_line(bench_sim: Any, consumer_run: Any) -> None:
    kafka, _, _ = consumer_run
    dead = [json.loads(v) for name, _, v in kafka if name == "dead-letters"]
    assert sorted(d["reason"] for d in dead) == sorted(m["reason"] for m in bench_sim.labels["malformed"])
    assert all(d["source"] == "events-topic" for d in dead)


def test_state_is_a_dict_of_bytes(consumer_run: Any) -> None:
    from operators.state import decode

    _, _, h = consumer_run
    assert h.user_states and all(isinstance(v, bytes) for v in h.user_states.values())
    assert all(decode(v).n_events > 0 for v in h.user_states.values())


def test_timers_fire_once_the_watermark_passes_them(bench_model: Path) -> None:
    """Flink's bounded-out-of-orderness watermark is max ts - OOO - 1: a timer at T fires on a record at
    T + OOO + 1, not at T + OOO."""
    from operators.schema import Event
    from streamrec.bench.consumer import EventHandler

    user_op, item_op = _operators(bench_model)
    h = EventHandler(user_op, item_op, "t", OOO)
    t0 = 1_704_067_200_000
    item = "i000001"

    def send(i: int, user: str, ts: int) -> Any:
        return h.handle(Event(f"e{i}", user, item, "view", ts).to_json().encode(), ts)

    assert send(0, "u1", t0).kafka  # first event: a list at once
    assert not [n for n, _, _ in send(1, "u1", t0 + 1000).kafka if n == "recommendations"]  # debounced: a timer
    timer = OperatorsConf().debounce.interval_ms + t0
    assert [t for t, _, _ in h._timers] == [timer]
    send(2, "u2", timer + OOO)
    assert h.timers_fired == 0
    out = send(3, "u2", timer + OOO + 1)
    assert h.timers_fired == 1
    recs = [json.loads(v) for name, _, v in out.kafka if name == "recommendations" and v]
    debounced = [r for r in recs if r["debounced"]]
    assert len(debounced) == 1 and debounced[0]["event_id"] == "e1"


def test_consumer_share_spreads_every_partition_once() -> None:
    from streamrec.bench.e2e import consumer_share

    for partitions in (1, 2, 3, 8):
        for processes in range(1, partitions + 1):
            shares = [consumer_share(i, processes, partitions) for i in range(processes)]
            assert all(shares), (processes, partitions, shares)  # nobody idle
            assert sorted(p for s in shares for p in s) == list(range(partitions))  # each partition read once
            assert max(map(len, shares)) - min(map(len, shares)) <= 1  # as even as it gets
    assert consumer_share(1, 2, 2) == [1]
    with pytest.raises(ValueError, match="3 consumer processes for 2 partitions"):
        consumer_share(0, 3, 2)
