"""The operators driven a batch at a time, as the stream job runs them (no Flink import: tested alone).

The job hands a Python operator one record per batch of events (grouped by shard in the JVM) instead of one per
event: these functions parse the batch, load each user's (item's) state from a `Store` (the Flink function's
MapState), run the operator over the whole batch (`UserOperator.step_many`: per-event work per event, scoring and
re-ranking batched across the batch's users; `ItemOperator.step_many`; either decodes a state once a batch and
encodes it once), write back the states that changed and route every output to where the job sends it (`Outputs`).
`streamrec replay` and the bench's plain consumer call the same operators one event at a time; the job's results
equal theirs (tests/unit/operators/test_batch.py, tests/unit/bench/test_consumer.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from operators.baserates import (
    ALARM_KIND,
    RatesError,
    decode_rates,
    decode_rating_rates,
    encode_rates,
    encode_rating_rates,
)
from operators.cf import CfOperator, CfUpdate
from operators.dead_letter import dead_letter, operator_dead_letter
from operators.item import ItemOperator, ItemStepResult
from operators.schema import EraseRequest, Event, Rejection, parse_event
from operators.user import StepResult, UserOperator

OPERATOR_MISROUTED = "operator_misrouted"  # an event reached the shard of another user (a routing bug)


class Store(Protocol):
    """Keyed state of one shard: id → state bytes (the Flink function's MapState)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def remove(self, key: str) -> None: ...


def load(store: Store, keys: Iterable[str]) -> dict[str, bytes | None]:
    """Each key's stored state, in order; a store with `get_many` (the job's: it reads a batch's uncached keys from
    Flink at once, `jobs/functions.py`) is asked once."""
    many = getattr(store, "get_many", None)
    if many is not None:
        return many(list(keys))
    return {k: store.get(k) for k in keys}


class Value(Protocol):
    """One value of a shard's keyed state (the Flink function's ValueState): bytes or None."""

    def value(self) -> bytes | None: ...

    def update(self, value: bytes | None) -> None: ...


_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True, default=str)  # `json.dumps` with these, built once


def to_json(record: dict[str, Any]) -> str:
    """How every record leaves the job (Kafka values, dead letters)."""
    return _JSON.encode(record)


@dataclass
class Outputs:
    """What one batch produced, by destination, each list in the order the records were produced."""

    recommendations: list[str] = field(default_factory=list)  # "KEY\nVALUE" lists, "KEY\n" tombstones (compacted)
    fraud_flags: list[str] = field(default_factory=list)
    deletions: list[str] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)
    item_events: list[dict[str, Any]] = field(default_factory=list)  # to the item operator, keyed by item
    cassandra: list[dict[str, Any]] = field(default_factory=list)  # rows for the Cassandra sink
    timers: list[tuple[int, str]] = field(default_factory=list)  # (event time, user id) debounce timers
    alarms: int = 0  # detector_alarm records among the fraud flags (the job's `detector_alarms` metric)
    cf_updates: list[str] = field(default_factory=list)  # "KEY\nVALUE" published CF neighbours (compacted topic)

    def add_user(self, result: StepResult, user_id: str | None) -> None:
        for r in result.recommendations:
            self.recommendations.append(f"{r['user_key']}\n{to_json(r)}")
            self.cassandra.append(r)
        for f in result.fraud_flags:
            self.fraud_flags.append(to_json(f))
            self.cassandra.append(f)
            self.alarms += f.get("kind") == ALARM_KIND
        for d in result.deletions:
            if d.get("kind") == "tombstone":
                self.recommendations.append(f"{d['key']}\n")  # null value: erases the key from the topic
            self.deletions.append(to_json(d))
            if d.get("target", "cassandra") == "cassandra":
                self.cassandra.append(d)
        self.dead_letters.extend(to_json(d) for d in result.dead_letters)
        self.item_events.extend(result.item_events)
        if result.timer_ts is not None and user_id is not None:
            self.timers.append((result.timer_ts, user_id))

    def add_item(self, result: ItemStepResult) -> None:
        for f in result.fraud_flags:
            self.fraud_flags.append(to_json(f))
            self.cassandra.append(f)
        self.dead_letters.extend(to_json(d) for d in result.dead_letters)


_T = TypeVar("_T")


def _read_rates(rates: Value, decode: Callable[[bytes | None], _T]) -> _T:
    """A shard's base rates from its keyed state; bytes this code cannot read start afresh."""
    try:
        return decode(rates.value())
    except RatesError:
        return decode(None)


def _write_back(store: Store, before: dict[str, bytes | None], after: dict[str, bytes | None]) -> None:
    for key, state in after.items():
        old = before.get(key)
        if state is None:
            if old is not None:
                store.remove(key)
        elif state is not old:
            store.put(key, state)


def user_events(op: UserOperator, store: Store, raw: Sequence[bytes], source: str,
                belongs: Callable[[str], bool] = lambda _u: True, rates: Value | None = None) -> Outputs:  # fmt: skip
    """A batch of raw `events` messages, in arrival order: parse (rejections → dead letters naming `source`), then
    every valid event through `op.step_many` over the stored states of its users. `belongs(user_id)` says whether
    the user is this shard's: an event that is not is refused with a dead letter (never processed elsewhere).
    `rates`: the shard's base rates (`operators.baserates`), read and written back (None: the operator's own; bytes
    it cannot read start afresh)."""
    out = Outputs()
    events: list[Event] = []
    for msg in raw:
        parsed = parse_event(msg)
        if isinstance(parsed, Rejection):
            out.dead_letters.append(to_json(dead_letter(parsed, source)))
        elif not belongs(parsed.user_id):
            out.dead_letters.append(to_json(operator_dead_letter(
                OPERATOR_MISROUTED, "event routed to another user's shard", "user_operator", msg)))
        else:
            events.append(parsed)
    if not events:
        return out
    before = load(store, dict.fromkeys(e.user_id for e in events))
    states = dict(before)
    shard_rates = None if rates is None else _read_rates(rates, decode_rates)
    for ev, result in zip(events, op.step_many(states, events, shard_rates), strict=True):
        out.add_user(result, ev.user_id)
    _write_back(store, before, states)
    if rates is not None and shard_rates is not None:
        rates.update(encode_rates(shard_rates))
    return out


def user_timers(op: UserOperator, store: Store, fired: Sequence[tuple[int, str]]) -> Outputs:
    """Debounce timers that fired, (event time, user id), oldest first: the suppressed lists, built in batches.
    A user with several timers gets them in time order, each on the state the previous one left."""
    out = Outputs()
    by_user: dict[str, list[int]] = {}
    for ts, user in sorted(fired):
        by_user.setdefault(user, []).append(ts)
    before = load(store, by_user)
    states = dict(before)
    rounds = max((len(v) for v in by_user.values()), default=0)
    for k in range(rounds):
        users = [u for u, tss in by_user.items() if len(tss) > k]
        results = op.on_timer_many([(states[u], by_user[u][k]) for u in users])
        for u, result in zip(users, results, strict=True):
            states[u] = result.state
            out.add_user(result, u)
    _write_back(store, before, states)
    return out


def user_erase(op: UserOperator, store: Store, request: EraseRequest) -> Outputs:
    """Right to erasure for one user: state cleared, deletions (naming the request) for every sink."""
    out = Outputs()
    result = op.erase(store.get(request.user_id), request.user_id, request.ts)
    for d in result.deletions:
        d["request_id"] = request.request_id  # the audit trail names the request it served
    if result.state is None:
        store.remove(request.user_id)
    out.add_user(result, request.user_id)
    return out


def due_add(due: dict[int, list[str]], timers: Sequence[tuple[int, str]]) -> int | None:
    """(event time, user id) debounce timers added to a shard's due index (time → user ids, changed in place); the
    time to register the shard's Flink timer at: the earliest due time when these moved it earlier, else None. The
    shard keeps a Flink timer at its earliest due time only (not one per distinct time): `due_take` serves every
    time the watermark has passed at once and names the next earliest."""
    before = min(due) if due else None
    for ts, user in timers:
        users = due.get(ts)
        if users is None:
            due[ts] = [user]
        elif user not in users:
            users.append(user)
    now = min(due) if due else None
    return now if now is not None and (before is None or now < before) else None


def due_take(due: dict[int, list[str]], upto: int) -> tuple[list[tuple[int, str]], int | None]:
    """The due timers the watermark `upto` has passed, (time, user id) oldest first, removed from `due` (in place);
    and the time to register the shard's next Flink timer at (the earliest left; None: nothing left, or nothing was
    due: the timer that fired was one already served)."""
    fired = [(ts, user) for ts in sorted(t for t in due if t <= upto) for user in due.pop(ts)]
    return fired, (min(due) if fired and due else None)


def cf_events(cf: CfOperator, store: Store, events: Sequence[Any], out: Outputs) -> None:
    """Item events in order through `cf.step`, each item's CF state read once and written back once.

    An item that publishes more than once in the batch publishes its last list only (in the place of that last
    one): a batch's publications leave the job together (one output record, one Kafka transaction) and the CF topic
    is compacted, so an earlier list of the same item would reach the user operators only to be replaced by the next
    record. The states, and each item's latest publication, are the same whatever the batching (tests/unit/
    operators/test_cf.py); where event time runs far ahead of the wall clock (a backlog, the bench's simulated
    days), an item often publishes several times between two watermarks."""
    paired = [ev for ev in events if isinstance(ev, dict) and isinstance(ev.get("item_id"), str) and ev.get("prev")]
    states = load(store, dict.fromkeys(ev["item_id"] for ev in paired))
    published: dict[str, CfUpdate] = {}
    for ev in paired:
        item = ev["item_id"]
        states[item], update = cf.step(states[item], ev)
        if update is not None:
            published.pop(item, None)  # in the place of its last publication
            published[item] = update
    out.cf_updates.extend(f"{item}\n{to_json(update.to_dict())}" for item, update in published.items())
    for item, st in states.items():
        if st is not None:
            store.put(item, st)


def item_order_key(ev: Any) -> tuple[int, str]:
    """The order the item operator sees its events in: event time, ties by event id (events of one second from
    different user shards arrive in any order; MovieLens times are whole seconds)."""
    ts = ev.get("ts") if isinstance(ev, dict) else None
    eid = ev.get("event_id") if isinstance(ev, dict) else None
    return (ts if isinstance(ts, int) and not isinstance(ts, bool) else -(2**63), eid if isinstance(eid, str) else "")


def event_time_order(buffer: Sequence[Any], upto: int) -> tuple[list[Any], list[Any]]:
    """Item events the watermark `upto` has passed, in `item_order_key` order (then arrival order), and the rest
    (still waiting). Batching and parallelism change the order item events arrive in; processed in event-time order
    as the watermark completes them, the item detectors see the same sequence whatever that order was (and
    `streamrec replay` feeds them in the same order). Anything without an integer `ts` is due at once (the operator
    refuses it with a dead letter)."""
    due: list[tuple[tuple[int, str], int, Any]] = []
    rest: list[Any] = []
    for i, ev in enumerate(buffer):
        key = item_order_key(ev)
        if key[0] <= upto:
            due.append((key, i, ev))
        else:
            rest.append(ev)
    due.sort(key=lambda t: (t[0], t[1]))
    return [ev for _, _, ev in due], rest


# Item events waiting for the watermark, as the item function keeps them: an append-only list of chunks (each
# arriving list of events pickled once, when it arrives) and the earliest event time among them. A bundle's state
# write then sends only the chunks it added (a list state's append), not the whole buffer again: rewritten in full
# at every bundle end (the layout before 2026-12-02: one value holding every chunk) the buffer cost the job ~1 MB of
# state writes per item-operator bundle at a backlog, and the item operator's bundle ends held up the user operator.
# A chunk is (its earliest event time, its events pickled): a timer (at the list's earliest time) unpickles only the
# chunks the watermark has reached, takes what it has passed, and leaves the rest as chunks of `REST_SLICE` events
# in event-time order, so the next timers again unpickle only the slices they reach (one chunk of everything
# left, as before 2026-12-06, was unpickled and pickled again at every timer: at a backlog ~1.8 unpickles and 0.8
# pickles per event). Chunks stored before then are plain bytes (no time): always unpickled.
WaitBuffer = tuple[int | None, list[bytes]]  # the layout before: (earliest event time or None, chunks) in one value
Chunk = tuple[int, bytes] | bytes  # (earliest event time, pickled list of events); bytes: stored before 2026-12-06
REST_SLICE = 256  # events per chunk of what a timer leaves waiting


def _order_ts(ev: Any) -> int:
    """An item event's time for ordering; one without a valid time is due at the next watermark."""
    ts = ev.get("ts") if isinstance(ev, dict) else None
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else -(2**62)


def wait_chunk(first: int | None, events: Sequence[Any]) -> tuple[tuple[int, bytes] | None, int | None]:
    """`events` as one chunk to append to the wait list (None: no events), and the event time a timer is needed at
    when they hold a new earliest event, earlier than `first` (the list's earliest so far, None: empty), else None."""
    return wait_chunk_of(first, item_chunk(events)) if events else (None, None)


def item_chunk(events: Sequence[Any]) -> tuple[int, bytes]:
    """The user operator's item events of one item shard as the item operator stores them: (their earliest event
    time, the chunk `wait_chunk` makes of them). Sent so (a small tuple, with the events pickled once by the C
    pickler) the item operator appends the chunk as it is (`wait_chunk_of`) instead of unpickling the events to
    pickle them again; PyFlink's own coder would pickle the list of dicts with cloudpickle, several times slower."""
    import pickle

    return min(map(_order_ts, events)), pickle.dumps(list(events), protocol=pickle.HIGHEST_PROTOCOL)


def wait_chunk_of(first: int | None, sent: Any) -> tuple[tuple[int, bytes] | None, int | None]:
    """`wait_chunk` for what the item operator receives: an `item_chunk` pair (stored as it is), or (jobs before
    2026-12-06) a list of events."""
    if not isinstance(sent, tuple):
        return wait_chunk(first, sent)
    new_first, _ = sent
    return sent, (new_first if first is None or new_first < first else None)


def buffer_take(chunks: Sequence[Chunk], upto: int) -> tuple[list[Any], list[tuple[int, bytes]], int | None]:
    """The waiting events (`chunks` in arrival order) the watermark `upto` has passed, in `event_time_order`; the
    rest as chunks (empty: nothing left) and its earliest event time (the next timer). A chunk whose earliest
    event the watermark has not reached is left as it is (not unpickled); the others' events not yet due are sorted
    by `item_order_key` (stable: equal keys keep their order) and cut into chunks of `REST_SLICE`, after the chunks
    left. So the due events are `event_time_order`'s over everything waiting; among waiting events with equal keys
    (time and event id) the order can change, as it can with the order of arrival."""
    import pickle

    events: list[Any] = []
    rest_chunks: list[tuple[int, bytes]] = []
    for c in chunks:
        if isinstance(c, tuple):
            if c[0] > upto:
                rest_chunks.append(c)
                continue
            c = c[1]
        events += pickle.loads(c)
    due, rest = event_time_order(events, upto)
    if rest:
        rest.sort(key=item_order_key)
        rest_chunks += [item_chunk(rest[i : i + REST_SLICE]) for i in range(0, len(rest), REST_SLICE)]
    return due, rest_chunks, min(c[0] for c in rest_chunks) if rest_chunks else None


def legacy_chunks(buf: Any) -> list[bytes]:
    """The chunks of a wait buffer in an older layout (state restored from a job before 2026-12-02): a `WaitBuffer`
    value, or a plain list of events (before chunks); None: none."""
    import pickle

    if buf is None:
        return []
    if isinstance(buf, list):
        return [pickle.dumps(buf, protocol=pickle.HIGHEST_PROTOCOL)] if buf else []
    return list(buf[1])


def item_events(op: ItemOperator, store: Store, events: Sequence[Any], rates: Value | None = None,
                cf: CfOperator | None = None, cf_store: Store | None = None) -> Outputs:  # fmt: skip
    """Item events (from the user operator) in order, through `op.step_many` over the stored states of their items
    (one without an item id is refused by the operator: a dead letter). `rates`: the item shard's rating base rate,
    read and written back (None: the operator's own; bytes it cannot read start afresh). With `cf`, the same events
    in the same order through the streaming CF operator over `cf_store` (its publications in `cf_updates`)."""
    out = Outputs()
    if cf is not None and cf_store is not None:
        cf_events(cf, cf_store, events, out)
    items = dict.fromkeys(ev["item_id"] for ev in events if isinstance(ev, dict) and isinstance(ev.get("item_id"), str))
    before = load(store, items)
    states = dict(before)
    shard_rates = None if rates is None else _read_rates(rates, decode_rating_rates)
    for result in op.step_many(states, events, shard_rates):
        out.add_item(result)
    _write_back(store, before, states)
    if rates is not None and shard_rates is not None:
        rates.update(encode_rating_rates(shard_rates))
    return out
