"""The plain-consumer alternative handles each message exactly as the Flink job's functions do.

The reference is `jobs/functions.py` itself (ParseEvents, UserFunction, ItemFunction) driven with in-memory keyed
state and timers, so a consumer that skips a stage (item operator, timers, dead letters) or routes / serialises an
output differently fails here."""

from __future__ import annotations

import heapq
import json
from pathlib import Path
from typing import Any

import pytest

from operators.config import OperatorsConf
from operators.privacy import Pseudonymizer

KEY = Pseudonymizer(b"bench-unit-test-key-0123", "bench-k1")
OOO = 5000


class _KeyedValue:
    """A ValueState scoped to the current key, as Flink gives a KeyedProcessFunction."""

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}
        self.key = ""

    def value(self) -> bytes | None:
        return self.store.get(self.key)

    def update(self, v: bytes) -> None:
        self.store[self.key] = v

    def clear(self) -> None:
        self.store.pop(self.key, None)


class _Ctx:
    """Timer service (and an empty broadcast state, for a UserFunction that has a control plane)."""

    def __init__(self, timers: list[tuple[int, str]], key: str) -> None:
        self.timers, self.key = timers, key
        self.broadcast: dict[str, str] = {}

    def timer_service(self) -> Any:
        return self

    def register_event_time_timer(self, ts: int) -> None:
        self.timers.append((ts, self.key))

    def get_broadcast_state(self, _descriptor: Any) -> Any:
        return self.broadcast


class _Writer:
    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.written.append(record)


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


def reference_outputs(
    model: Path, stream: list[tuple[bytes, bytes | None, int]], source: str
) -> tuple[list[tuple[str, str | None, str | None]], list[dict[str, Any]], dict[str, bytes], dict[str, bytes]]:
    """The job's functions over `stream`, one record at a time, watermark = max record ts - OOO - 1; returns the
    Kafka records (output, key, value), what its CassandraWrite writes, and the final user / item keyed state."""
    from jobs.config import JobConf
    from jobs.functions import (
        DEAD_LETTERS,
        DELETIONS,
        FRAUD_FLAGS,
        ITEM_EVENTS,
        CassandraWrite,
        ItemFunction,
        ParseEvents,
        UserFunction,
    )

    user_op, item_op = _operators(model)
    parse = ParseEvents(source)
    uf = UserFunction(JobConf(), OperatorsConf(), KEY)
    uf.op, uf.state = user_op, _KeyedValue()
    itf = ItemFunction(JobConf(), OperatorsConf())
    itf.op, itf.state = item_op, _KeyedValue()
    cw = CassandraWrite(JobConf(), [], 0, "ks")
    cw.writer = _Writer()
    names = {id(FRAUD_FLAGS): "fraud-flags", id(DEAD_LETTERS): "dead-letters", id(DELETIONS): "deletions"}
    out: list[tuple[str, str | None, str | None]] = []
    registered: list[tuple[int, str]] = []
    heap: list[tuple[int, int, str]] = []
    pending: set[tuple[int, str]] = set()
    seq = 0

    def side(name: str, value: str) -> None:
        out.append((name, None, value))
        if name in ("fraud-flags", "deletions"):  # the Cassandra union: recommendations, flags, deletions
            list(cw.process_element(value, None))

    def route_user(results: Any) -> None:
        nonlocal seq
        for r in results:
            if isinstance(r, str):
                key, value = _main_output(r)
                out.append(("recommendations", key, value))
                list(cw.process_element(r, None))
            elif r[0] is ITEM_EVENTS:
                itf.state.key = r[1]["item_id"]
                for ir in itf.process_element(r[1], None):
                    if isinstance(ir, str):
                        side("fraud-flags", ir)
                    else:
                        side(names[id(ir[0])], ir[1])
            else:
                side(names[id(r[0])], r[1])
        for ts, k in registered:
            if (ts, k) not in pending:
                pending.add((ts, k))
                seq += 1
                heapq.heappush(heap, (ts, seq, k))
        registered.clear()

    max_ts = None
    for payload, _key, ts in stream:
        for p in parse.process_element(payload, None):
            if isinstance(p, tuple):
                out.append((names[id(p[0])], None, p[1]))
                continue
            uf.state.key = p.user_id
            route_user(list(uf.process_element(p, _Ctx(registered, p.user_id))))
        if max_ts is None or ts > max_ts:
            max_ts = ts
            wm = ts - OOO - 1
            while heap and heap[0][0] <= wm:
                t, _, k = heapq.heappop(heap)
                pending.discard((t, k))
                uf.state.key = k
                route_user(list(uf.on_timer(t, _Ctx(registered, k))))
    return out, cw.writer.written, uf.state.store, itf.state.store


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


def test_consumer_outputs_equal_the_jobs_functions(bench_model: Path, bench_sim: Any, consumer_run: Any) -> None:
    kafka, cassandra, h = consumer_run
    ref, ref_cassandra, users, items = reference_outputs(bench_model, bench_sim.stream, "events-topic")
    kinds = {name for name, _, _ in ref}
    assert {"recommendations", "fraud-flags", "dead-letters"} <= kinds  # the stream exercises every path
    assert h.timers_fired > 0  # and debounce timers
    assert kafka == ref  # same records, keys and bytes, in the same order
    assert cassandra == ref_cassandra  # what the job's CassandraWrite writes
    assert h.user_states == users and h.item_states == items and items  # same keyed state, item operator included


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
