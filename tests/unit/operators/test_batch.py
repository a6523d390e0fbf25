"""The operators a batch at a time (`step_many`, operators/batch.py) give what `step` gives event by event, and decode
and encode a state once per batch (it stays decoded between the events of its user or item)."""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from operators import batch, item, user
from operators.dead_letter import dead_letter
from operators.item import ItemOperator, ItemState, ItemStepResult
from operators.schema import Event, parse_event
from operators.state import UserState
from tests.unit.operators.conftest import T0, conf_with
from tests.unit.operators.test_fraud import _ie

H = 3_600_000


class _Store(dict[str, bytes]):
    def put(self, key: str, value: bytes) -> None:
        self[key] = value

    def remove(self, key: str) -> None:
        self.pop(key, None)


def _item_stream() -> list[Any]:
    """Item events as the user operator sends them, with what else can arrive: a click farm and a shilling campaign
    on one item (flags), other items, ratings off the half steps (the layout rounds them), a key id the layout cuts,
    events the operator refuses, and repeats of one item in a row."""
    rng = random.Random(3)
    out: list[Any] = []
    for i in range(400):
        ts = T0 + min(i, 200) * 30 * 60_000 + max(i - 200, 0) * 60_000  # 4 days (ratings settle), then a burst
        kind = rng.random()
        if kind < 0.3:
            out.append(_ie(i, f"farm{i % 7}", ts))
        elif kind < 0.45:
            out.append(_ie(i, f"shill{i % 6}", ts, "rating", rating=rng.choice([1.0, 5.0, 3.7])))
        elif kind < 0.5:
            out.append({**_ie(i, f"old{i}", ts, item="other"), "key_id": "ключ" * 80})
        elif kind < 0.53:
            bad = _ie(i, "u", ts)
            out.append(rng.choice([None, {}, {**bad, "user_key": "not-hex"}, {**bad, "ts": "x"}]))
        else:
            out.append(_ie(i, f"u{rng.randrange(40)}", ts, rng.choice(["view", "click"]), item=f"i{rng.randrange(12)}",
                           first=T0 - 30 * 24 * H))  # fmt: skip
    return out


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_item_step_many_equals_step_one_by_one(size: int) -> None:
    op = ItemOperator(conf_with(), "v1")
    events = _item_stream()
    start = {"i3": b"\x01corrupt", "i4": b"keep"}  # unreadable stored states: started afresh
    ref_states: dict[str, bytes | None] = dict(start)
    ref: list[ItemStepResult] = []
    for ev in events:
        key = ev.get("item_id") if isinstance(ev, dict) else None
        r = op.step(ref_states.get(key) if isinstance(key, str) else None, ev)
        if isinstance(key, str):
            ref_states[key] = r.state
        ref.append(r)
    states: dict[str, bytes | None] = dict(start)
    got: list[ItemStepResult] = []
    for lo in range(0, len(events), size):
        got += op.step_many(states, events[lo : lo + size])
    assert states == ref_states
    assert len(got) == len(ref)
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert (a.state, a.fraud_flags, a.trending, a.dead_letters, a.state_reset) == \
               (b.state, b.fraud_flags, b.trending, b.dead_letters, b.state_reset), i  # fmt: skip
    assert sum(len(r.fraud_flags) for r in ref) > 5 and sum(len(r.dead_letters) for r in ref) > 5
    assert any(r.state_reset for r in ref)


def _counting(monkeypatch: pytest.MonkeyPatch, module: Any, *names: str) -> dict[str, int]:
    calls = dict.fromkeys(names, 0)
    for name in names:
        f = getattr(module, name)

        def wrapped(*a: Any, _f: Any = f, _n: str = name) -> Any:
            calls[_n] += 1
            return _f(*a)

        monkeypatch.setattr(module, name, wrapped)
    return calls


def test_item_state_is_decoded_and_encoded_once_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    op = ItemOperator(conf_with(), "v1")
    events = [_ie(i, f"farm{i % 3}", T0 + i * 60_000) for i in range(10)]
    states: dict[str, bytes | None] = {}
    op.step_many(states, events[:1])
    calls = _counting(monkeypatch, item, "decode_item", "encode_item")
    res = op.step_many(states, events[1:])
    assert calls == {"decode_item": 1, "encode_item": 1}
    assert all(isinstance(r.stored, ItemState) for r in res[:-1]) and isinstance(res[-1].stored, bytes)
    assert res[-1].state == states["target"]


def test_user_state_is_decoded_and_encoded_once_a_batch(make_op: Any, artifact: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    op = make_op()
    its = [artifact.item_id(int(i)) for i in artifact.popular[:8]]
    events = [Event(f"e{i}", "u1", its[i % 8], "view", T0 + i * 90_000) for i in range(8)]
    states: dict[str, bytes | None] = {}
    op.step_many(states, events[:1])
    ref = [op.step(None, events[0]).state]
    for e in events[1:]:
        ref.append(op.step(ref[-1], e).state)
    calls = _counting(monkeypatch, user, "decode", "encode")
    res = op.step_many(states, events[1:])
    assert calls == {"decode": 1, "encode": 1}
    assert all(isinstance(r.stored, UserState) for r in res[:-1]) and states["u1"] == ref[-1]
    assert [r.state for r in res] == ref[1:]  # read, each one is what step stored


def test_batch_functions_equal_step_one_by_one(make_op: Any, sim_dir: Path) -> None:
    """`user_events` (batches of one shard's raw messages, as the job runs them) and `item_events` (the item events
    of several batches, in event-time order) against `step` per event: the same records, byte for byte but for the
    recommendation scores (onnxruntime may differ in their last bits between batch sizes), and the same states."""
    op, iop = make_op(), ItemOperator(conf_with(), "v1")
    lines = (sim_dir / "events.jsonl").read_bytes().splitlines()[:1500] + [b"not json", b'{"user_id": "u1"}']
    users, items = _Store(), _Store()
    got: list[str] = []
    item_events: list[dict[str, Any]] = []  # in the order the item operator ran them
    shards: dict[int, list[bytes]] = {}
    waiting: list[dict[str, Any]] = []
    for n, line in enumerate(lines):
        e = parse_event(line)
        shard = zlib.crc32(e.user_id.encode()) % 4 if isinstance(e, Event) else 0
        shards.setdefault(shard, []).append(line)
        end = n == len(lines) - 1
        for key in sorted(shards) if end else [shard] if len(shards[shard]) == 40 else []:
            out = batch.user_events(op, users, shards.pop(key), "events")
            got += out.recommendations + out.fraud_flags + out.dead_letters
            waiting += out.item_events
        if n % 200 == 199 or end:
            due, waiting = batch.event_time_order(waiting, 2**62)
            iout = batch.item_events(iop, items, due)
            got += iout.fraud_flags + iout.dead_letters
            item_events += due

    ref: list[str] = []
    ref_users: dict[str, bytes] = {}
    ref_items: dict[str, bytes] = {}
    ref_item_events: list[dict[str, Any]] = []
    for line in lines:
        e = parse_event(line)
        if not isinstance(e, Event):
            ref.append(batch.to_json(dead_letter(e, "events")))
            continue
        r = op.step(ref_users.get(e.user_id), e)
        assert r.state is not None
        ref_users[e.user_id] = r.state
        ref += [f"{x['user_key']}\n{batch.to_json(x)}" for x in r.recommendations]
        ref += [batch.to_json(x) for x in r.fraud_flags + r.dead_letters]
        ref_item_events += r.item_events
    key = lambda e: (e["item_id"], e["event_id"])  # noqa: E731
    assert sorted(item_events, key=key) == sorted(ref_item_events, key=key)
    for ie in item_events:  # the item operator's order (the detectors follow it)
        ir = iop.step(ref_items.get(ie["item_id"]), ie)
        assert ir.state is not None
        ref_items[ie["item_id"]] = ir.state
        ref += [batch.to_json(x) for x in ir.fraud_flags + ir.dead_letters]
    assert dict(users) == ref_users and dict(items) == ref_items

    def parts(records: list[str]) -> tuple[list[str], list[list[float]]]:
        """The records without their scores (sorted), and the scores."""
        out, scores = [], []
        for r in records:
            if '"kind":"recommendation"' in r:
                k, v = r.split("\n", 1)
                d = json.loads(v)
                scores.append(d.pop("scores"))
                r = f"{k}\n{batch.to_json(d)}"
            out.append(r)
        return sorted(out), scores

    (a, sa), (b, sb) = parts(got), parts(ref)
    assert a == b and len(sa) == len(sb) > 100
    assert np.allclose(sorted(map(sum, sa)), sorted(map(sum, sb)), atol=1e-4, rtol=0)


def test_the_item_wait_buffer_releases_what_event_time_order_would() -> None:
    """The item function's wait list (appended chunks + earliest time): the events a watermark releases, and their
    order, are `event_time_order`'s over everything buffered in arrival order; timers at each new earliest time;
    what is left are chunks due at their earliest times, and a chunk the watermark has not reached is left as it
    is (the same object: not unpickled)."""
    import pickle

    from operators.batch import (
        buffer_take,
        event_time_order,
        item_chunk,
        item_order_key,
        legacy_chunks,
        wait_chunk,
        wait_chunk_of,
    )

    rnd = random.Random(5)
    arrivals = [[{"item_id": f"i{rnd.randrange(3)}", "ts": rnd.randrange(1000), "event_id": f"e{k}-{j}"}
                 for j in range(rnd.randrange(0, 6))] for k in range(30)]  # fmt: skip
    chunks: list[Any] = []
    first, timers, flat = None, [], []
    for c in arrivals:
        chunk, t = wait_chunk(first, c)
        assert (chunk is None) == (not c)
        # what the user operator sends (its events pickled once) is stored as the same chunk, with the same timer
        assert wait_chunk_of(first, item_chunk(c) if c else c) == (chunk, t) == wait_chunk_of(first, list(c))
        if chunk is not None:
            chunks.append(chunk)  # what the function appends: only this chunk is written at the bundle end
        flat += c
        if t is not None:
            timers.append(t)
            first = t
            assert t == min(e["ts"] for e in flat)
        else:
            assert not c or min(e["ts"] for e in c) >= first
    assert timers == sorted(timers, reverse=True) and len(timers) > 1  # each a new earliest
    assert len(chunks) == sum(1 for c in arrivals if c)
    due, rest, nxt = buffer_take(chunks, 500)
    want_due, want_rest = event_time_order(flat, 500)
    assert due == want_due and rest and nxt == min(e["ts"] for e in want_rest)
    left = [ev for _, b in rest for ev in pickle.loads(b)]
    assert sorted(left, key=item_order_key) == sorted(want_rest, key=item_order_key)
    assert all(c in rest and any(r is c for r in rest) for c in chunks if c[0] > 500)  # untouched, not re-pickled
    due2, rest2, nxt2 = buffer_take(rest, 10**9)
    assert due2 == event_time_order(want_rest, 10**9)[0] and rest2 == [] and nxt2 is None
    # state written in the layouts before (one value: (earliest, chunks); before that a plain list of events; and
    # before 2026-12-06 chunks as bytes, without their earliest time)
    old = [b for _, b in chunks]
    assert buffer_take(legacy_chunks((timers[-1], old)), 500)[0] == want_due
    assert buffer_take(legacy_chunks(list(flat)), 500)[0] == want_due
    assert buffer_take(old, 500)[0] == want_due
    assert legacy_chunks(None) == [] and legacy_chunks([]) == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_item_wait_buffer_over_many_timers_is_one_event_time_order(seed: int) -> None:
    """Chunks arriving between watermark steps, each step's timer taking what is due (as `ItemFunction.on_timer`
    does): every release is `event_time_order` over everything waiting then, the leftover chunks hold at most
    `REST_SLICE` events each in event-time order, and most chunks are not unpickled at a step."""
    import pickle

    from operators import batch

    rnd = random.Random(seed)
    waiting: list[Any] = []  # the reference: every waiting event in arrival order
    chunks: list[Any] = []
    t, k, loads, visits = 0, 0, 0, 0
    real = pickle.loads

    def counting(b: bytes) -> Any:
        nonlocal loads
        loads += 1
        return real(b)

    for step in range(60):
        for _ in range(rnd.randrange(1, 8)):
            evs = [{"item_id": "i", "ts": t + rnd.randrange(-2000, 6000), "event_id": f"e{(k := k + 1)}"}
                   for _ in range(rnd.randrange(1, 400))]  # fmt: skip
            chunks.append(batch.wait_chunk(None, evs)[0])
            waiting += evs
        t += rnd.randrange(100, 3000)
        upto = t - 5000
        want_due, waiting = batch.event_time_order(waiting, upto)
        before, reached = loads, sum(1 for c in chunks if c[0] <= upto)
        visits += len(chunks)
        pickle.loads, saved = counting, pickle.loads  # type: ignore[assignment]
        try:
            due, chunks, first = batch.buffer_take(chunks, upto)
        finally:
            pickle.loads = saved
        assert due == want_due, step
        assert first == (min(e["ts"] for e in waiting) if waiting else None)
        got = [ev for _, b in chunks for ev in real(b)]
        assert sorted(got, key=batch.item_order_key) == sorted(waiting, key=batch.item_order_key)
        for c0, b in chunks:
            evs = real(b)
            assert c0 == min(e["ts"] for e in evs) > upto and len(evs) <= max(batch.REST_SLICE, 400)
        assert loads - before == reached  # only the chunks the watermark has reached are unpickled
    assert len(chunks) > 10 and loads < visits / 2


class _ManyStore(_Store):
    """A store that reads many keys at once (the job's `MapStore.get_many`): every key must be read through it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[str]] = []

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        raise AssertionError(f"{key} read one by one")

    def get_many(self, keys: list[str]) -> dict[str, bytes | None]:
        self.asked.append(list(keys))
        return {k: dict.get(self, k) for k in keys}


def test_load_reads_a_batch_through_get_many_once_and_by_get_otherwise() -> None:
    many = _ManyStore()
    many.put("a", b"1")
    assert batch.load(many, ["a", "b"]) == {"a": b"1", "b": None}
    assert many.asked == [["a", "b"]]
    plain = _Store(a=b"1")
    assert batch.load(plain, iter(["b", "a"])) == {"b": None, "a": b"1"}


def test_item_events_read_each_batchs_states_with_one_get_many() -> None:
    from operators.cf import CfOperator

    events = [e for e in _item_stream()[:60] if isinstance(e, dict)]
    for e in events:
        e["prev"] = [["i0", 1.0]]
    items, cf = _ManyStore(), _ManyStore()
    batch.item_events(ItemOperator(conf_with(), "v1"), items, events, cf=CfOperator(conf_with().cf), cf_store=cf)
    assert len(items.asked) == 1 and len(cf.asked) == 1
    assert set(items.asked[0]) == {e["item_id"] for e in events if isinstance(e.get("item_id"), str)}


def test_one_flink_timer_per_shard_serves_every_debounce_timer_when_the_watermark_passes_it() -> None:
    """The user function's timers (`due_add` / `due_take`) against Flink's timer service (timers by time, one per
    time, fired oldest first up to the watermark): every (time, user) added is served exactly once, oldest first, by
    the first watermark at or past its time, and far fewer Flink timers fire than there are distinct times."""
    import heapq

    from operators.batch import due_add, due_take

    rnd = random.Random(11)
    due: dict[int, list[str]] = {}
    registered: list[int] = []  # Flink's event-time timers of the shard (a time at most once)
    served: list[tuple[int, str]] = []
    added: set[tuple[int, str]] = set()
    fires = 0
    watermark = 0

    def register(t: int | None) -> None:
        if t is not None and t not in registered:
            heapq.heappush(registered, t)

    for _ in range(300):
        new = [(watermark + rnd.randrange(1, 400), f"u{rnd.randrange(20)}") for _ in range(rnd.randrange(0, 8))]
        added.update(new)
        register(due_add(due, new))
        if rnd.random() < 0.3:  # a watermark: Flink fires every timer it has passed, oldest first
            watermark += rnd.randrange(0, 300)
            while registered and registered[0] <= watermark:
                t = heapq.heappop(registered)
                fires += 1
                fired, nxt = due_take(due, max(t, watermark))
                assert all(ts <= watermark for ts, _ in fired) and fired == sorted(fired, key=lambda f: f[0])
                served.extend(fired)
                register(nxt)
            assert not any(t <= watermark for t in due)  # nothing the watermark passed is left behind
            assert not due or min(due) in registered  # and what is left has its timer
    watermark = 10**9
    while registered:
        served.extend(due_take(due, max(heapq.heappop(registered), watermark))[0])
    assert sorted(served) == sorted(added) and len(served) == len(added) and not due
    assert fires < len({t for t, _ in added}) / 3
