"""UserOperator.step_many / on_timer_many: the results of `step` / `on_timer` one by one, with the lists scored across
users (one onnxruntime call per graph and round), and per-event failures that stay per event."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from operators.dead_letter import OPERATOR_ERROR
from operators.schema import Event, event_from_mapping, parse_event
from operators.scorer import ScoreRequest, ScoreResult
from operators.user import StepResult, UserOperator
from tests.unit.operators.conftest import T0, conf_with, ev

MIN = 60_000
# surprise judged often (every 3rd event of a user, 5 transitions: the tiny model's max_len is 12) and flagging, so
# both of its paths run: log-probs reused from the event's own list, and its own call (debounced events)
FRAUD = {"surprise_every": 3, "surprise_min_events": 5, "surprise_factor": 0.9, "cooldown_ms": 1}


class _CountingScorer:
    """Wraps the real scorer: records each call's batch size and graph; `poison(req)` says a request's call must
    raise (the batch it is in too), `corrupt(req)` that its result names an item index the artefact does not know."""

    def __init__(self, inner: Any, poison: Any = None, corrupt: Any = None) -> None:
        self.inner, self.poison, self.corrupt = inner, poison, corrupt
        self.calls: list[tuple[int, bool]] = []

    def score(self, batch: Sequence[ScoreRequest], need_logprob: bool = False) -> list[ScoreResult]:
        self.calls.append((len(batch), need_logprob))
        if self.poison is not None and any(self.poison(r) for r in batch):
            raise RuntimeError("poisoned request")
        out = self.inner.score(batch, need_logprob=need_logprob)
        if self.corrupt is not None:
            out = [dataclasses.replace(res, items=res.items + 10**6) if self.corrupt(r) else res
                   for r, res in zip(batch, out, strict=True)]  # fmt: skip
        return out


def _parsed(event: Any) -> Any:
    return parse_event(event) if isinstance(event, bytes) else event_from_mapping(event) if isinstance(event, dict) \
        else event  # fmt: skip


def _user_of(event: Any) -> str | None:
    """The key the job would call `step` under (None: the message names no user)."""
    e = _parsed(event)
    u = e.user_id if isinstance(e, Event) else None
    return u if isinstance(u, str) and u else None


def _one_by_one(op: UserOperator, states: dict[str, bytes | None], events: list[Any]) -> list[StepResult]:
    out = []
    for e in events:
        user = _user_of(e)
        r = op.step(states.get(user) if user else None, e)
        if user:
            states[user] = r.state
        out.append(r)
    return out


def _fire(op: UserOperator, states: dict[str, bytes | None], pending: dict[str, int], upto: int,
          many: bool) -> list[StepResult]:  # fmt: skip
    """Fire the debounce timers due at watermark `upto` (one per user): `on_timer_many` or `on_timer` one by one."""
    due = sorted((ts, u) for u, ts in pending.items() if ts <= upto)
    for _, u in due:
        del pending[u]
    if many:
        res = op.on_timer_many([(states.get(u), ts) for ts, u in due])
    else:
        res = [op.on_timer(states.get(u), ts) for ts, u in due]
    for (_, u), r in zip(due, res, strict=True):
        states[u] = r.state
    return res


def _run(op: UserOperator, events: list[Any], batch: int, many: bool) -> tuple[list[StepResult], dict[str, Any]]:
    """The stream in batches of `batch` events (arrival order); after each batch the timers due at its watermark."""
    states: dict[str, bytes | None] = {"u-corrupt": b"\x00garbage state"}
    pending: dict[str, int] = {}
    out: list[StepResult] = []
    for lo in range(0, len(events), batch):
        chunk = events[lo : lo + batch]
        res = op.step_many(states, chunk) if many else _one_by_one(op, states, chunk)
        out += res
        for e, r in zip(chunk, res, strict=True):
            user = _user_of(e)
            if r.timer_ts is not None and user:
                pending.setdefault(user, r.timer_ts)
        valid = [e for e in map(_parsed, chunk) if isinstance(e, Event) and isinstance(e.ts, int)]
        watermark = max((e.ts for e in valid), default=0)
        out += _fire(op, states, pending, watermark, many)
    out += _fire(op, states, pending, 2**62, many)
    return out, states


def _assert_same(got: list[StepResult], ref: list[StepResult]) -> int:
    """Identical results but for the recommendation scores (equal to 1e-5: onnxruntime may differ in the last float
    bits between batch sizes). Returns the number of lists compared."""
    assert len(got) == len(ref)
    lists = 0
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert a.state == b.state, i
        for f in ("fraud_flags", "deletions", "item_events", "timer_ts", "duplicate", "dead_letters", "state_reset"):
            assert getattr(a, f) == getattr(b, f), (i, f)
        assert len(a.recommendations) == len(b.recommendations), i
        for ra, rb in zip(a.recommendations, b.recommendations, strict=True):
            assert ra["items"] == rb["items"], i
            assert np.allclose(ra["scores"], rb["scores"], atol=1e-5, rtol=0), i
            assert {**ra, "scores": None} == {**rb, "scores": None}, i
            lists += 1
    return lists


def _stream(sim_dir: Path, n: int = 600) -> list[Any]:
    """The simulated stream's first `n` lines, with what a real one also carries: raw and parsed messages,
    duplicate deliveries, malformed lines, invalid Events, a burst of strong events of one user and a user whose
    stored state is unreadable."""
    lines = (sim_dir / "events.jsonl").read_bytes().splitlines()[:n]
    out: list[Any] = []
    for i, line in enumerate(lines):
        e = parse_event(line)
        assert isinstance(e, Event)
        out.append(line if i % 3 == 0 else e)  # raw message or Event
        if i % 17 == 5:
            out.append(e)  # a duplicate delivery, right after
        if i % 41 == 7:
            out.insert(max(0, len(out) - 6), line)  # a duplicate delivery that precedes... then the original
        if i % 53 == 11:
            out.append(b'{"event_id": "x", "user_id": 5}')  # malformed: names no user
            out.append(dataclasses.replace(e, ts="soon"))  # an invalid Event of a real user
            out.append({"event_id": f"d{i}", "user_id": e.user_id, "item_id": e.item_id, "event_type": "click",
                        "ts": e.ts + 1})  # fmt: skip
        if i == 200:  # a burst of one user: strong events, several surprise checks in one batch
            for j, t in enumerate(("cart", "purchase", "view", "cart", "view", "purchase", "click", "cart")):
                out.append(dataclasses.replace(e, event_id=f"burst{j}", event_type=t, ts=e.ts + 1000 * j))
        if i == 300:
            out += [dataclasses.replace(e, user_id="u-corrupt", event_id=f"c{j}", ts=e.ts + j) for j in range(3)]
    return out


@pytest.mark.parametrize("batch", [7, 64, 10_000])
def test_step_many_equals_step_one_by_one(artifact: Any, scorer: Any, pseud: Any, sim_dir: Path, batch: int) -> None:
    events = _stream(sim_dir)
    runs = {}
    for many in (False, True):
        counting = _CountingScorer(scorer)
        op = UserOperator(artifact, conf_with(user_fraud=FRAUD), pseud, counting)
        runs[many] = (*_run(op, events, batch, many), counting.calls)
    (got, states, calls), (ref, ref_states, ref_calls) = runs[True], runs[False]
    lists = _assert_same(got, ref)
    assert states == ref_states
    # the stream has what it should: lists of both sources, debounced ones, flags, duplicates, dead letters, resets
    recs = [r for res in ref for r in res.recommendations]
    assert lists == len(recs) > 100 and {r["source"] for r in recs} == {"model", "cold_start"}
    assert any(r["debounced"] for r in recs)
    assert any(f["detector"] == "model_surprise" for res in ref for f in res.fraud_flags)
    assert sum(r.duplicate for r in ref) >= 30 and sum(len(r.dead_letters) for r in ref) >= 20
    assert any(r.state_reset for r in ref)
    # the same model work (requests per graph), in fewer calls
    assert all(n == 1 for n, _ in ref_calls)
    for full in (False, True):
        assert sum(n for n, f in calls if f == full) == sum(n for n, f in ref_calls if f == full)
    if batch >= 64:  # this stream's batches hold a few users with several events each: rounds follow their events;
        # surprise judgements (every 3rd event here, every 20th by default) go in arrival order and hold some back
        assert len(calls) < 0.75 * len(ref_calls)  # (0.39 with judgements every 20th event, 0.35 unordered)


@pytest.mark.parametrize("surprise", [False, True])
def test_one_model_call_for_a_batch_of_due_lists(artifact: Any, scorer: Any, pseud: Any, surprise: bool) -> None:
    """N users, one due list each: one onnxruntime call of N requests (the full graph when every event is judged by
    the surprise detector, whose log-probs come with the lists)."""
    n = 24
    its = [artifact.item_id(int(i)) for i in artifact.popular[:60]]
    fraud = {**FRAUD, "surprise_every": 4 if surprise else 0}
    counting = _CountingScorer(scorer)
    op = UserOperator(artifact, conf_with(user_fraud=fraud), pseud, counting)
    states: dict[str, bytes | None] = {}
    for u in range(n):  # three events each, a debounce interval apart: lists due
        for j in range(3):
            e = ev(100 * u + j, its[(u + 7 * j) % 60], T0 + j * 2 * MIN, user=f"u{u}")
            states[e.user_id] = op.step(states.get(e.user_id), e).state
    ref_states = dict(states)
    batch = [ev(100 * u + 3, its[(u + 21) % 60], T0 + 6 * MIN + u, user=f"u{u}") for u in range(n)]
    counting.calls.clear()
    got = op.step_many(states, batch)
    assert counting.calls == [(n, surprise)]
    assert all(len(r.recommendations) == 1 and r.recommendations[0]["source"] == "model" for r in got)
    ref = _one_by_one(op, ref_states, batch)
    assert _assert_same(got, ref) == n and states == ref_states
    # the timers of a batch: one call too
    pend = op.step_many(states, [dataclasses.replace(e, event_id=e.event_id + "b", ts=e.ts + 1000) for e in batch])
    assert all(r.timer_ts is not None for r in pend)
    counting.calls.clear()
    fired = op.on_timer_many([(states[f"u{u}"], r.timer_ts or 0) for u, r in enumerate(pend)])
    assert counting.calls == [(n, False)] and all(r.recommendations[0]["debounced"] for r in fired)


def test_a_failing_request_fails_only_its_event(artifact: Any, scorer: Any, pseud: Any, sim_dir: Path) -> None:
    """A batched call that raises falls back to one call per request; a list whose per-list phase raises is built
    again alone: only the failing request's event becomes a dead letter (state unchanged), as `step` gives."""
    poison_item = int(artifact.popular[3])
    corrupt_item = int(artifact.popular[5])

    def poison(r: ScoreRequest) -> bool:
        return int(r.items[-1]) == poison_item

    def corrupt(r: ScoreRequest) -> bool:
        return int(r.items[-1]) == corrupt_item

    events = _stream(sim_dir, 300)
    runs = {}
    for many in (False, True):
        counting = _CountingScorer(scorer, poison=poison, corrupt=corrupt)
        op = UserOperator(artifact, conf_with(user_fraud=FRAUD), pseud, counting)
        runs[many] = _run(op, events, 64, many)
    (got, states), (ref, ref_states) = runs[True], runs[False]
    _assert_same(got, ref)
    assert states == ref_states
    errors = [d["message"] for r in ref for d in r.dead_letters if d["reason"] == OPERATOR_ERROR]
    assert any("poisoned request" in m for m in errors) and any("IndexError" in m for m in errors)
    assert sum(len(r.recommendations) for r in ref) > 50  # the rest of the stream went through


@pytest.mark.parametrize("poisoned", [False, True])
def test_pipelined_lists_equal_the_plain_driver_in_fewer_calls(artifact: Any, scorer: Any, pseud: Any,
                                                               sim_dir: Path, poisoned: bool) -> None:  # fmt: skip
    """`step_many` defers every list that needs no log-probs (`operators.user._Pipe`): the same results, states and
    base rates as the plain driver (`op.pipeline = False`), the same model work in fewer calls. A call in which
    anything fails (here: a poisoned request) runs again in the plain driver, from the states and rates it began
    with: the same results again."""
    poison_item = int(artifact.popular[3])

    def poison(r: ScoreRequest) -> bool:
        return poisoned and int(r.items[-1]) == poison_item

    events = _stream(sim_dir)
    runs = {}
    for pipeline in (False, True):
        counting = _CountingScorer(scorer, poison=poison)
        op = UserOperator(artifact, conf_with(user_fraud=FRAUD), pseud, counting)
        op.pipeline = pipeline
        runs[pipeline] = (*_run(op, events, 64, True), counting.calls, dataclasses.asdict(op.rates))
    (got, states, calls, rates), (ref, ref_states, ref_calls, ref_rates) = runs[True], runs[False]
    assert _assert_same(got, ref) > 100
    assert states == ref_states and rates == ref_rates
    if poisoned:
        errors = [d["message"] for r in ref for d in r.dead_letters if d["reason"] == OPERATOR_ERROR]
        assert any("poisoned request" in m for m in errors)
        return
    for full in (False, True):
        assert sum(n for n, f in calls if f == full) == sum(n for n, f in ref_calls if f == full)
    assert len(calls) < 0.8 * len(ref_calls)


def test_a_burst_of_one_user_costs_one_model_call(artifact: Any, scorer: Any, pseud: Any) -> None:
    """One user's strong events (each updates the list at once) in one call: the plain driver scores them one round
    each, the pipelined one in one call; every list's `changed` compares it with the list before it."""
    its = [artifact.item_id(int(i)) for i in artifact.popular[:40]]
    burst = [ev(j, its[j % 40], T0 + 1000 * j, etype="purchase") for j in range(12)]
    got = {}
    for pipeline in (False, True):
        counting = _CountingScorer(scorer)
        op = UserOperator(artifact, conf_with(user_fraud={**FRAUD, "surprise_every": 0}), pseud, counting)
        op.pipeline = pipeline
        states: dict[str, bytes | None] = {}
        first = op.step_many(states, burst[:4])  # a history first: the burst's lists are the model's
        counting.calls.clear()
        got[pipeline] = (first + op.step_many(states, burst[4:]), dict(states), list(counting.calls))
    (res, states, calls), (ref, ref_states, ref_calls) = got[True], got[False]
    assert _assert_same(res, ref) == len(burst) and states == ref_states
    assert [n for n, _ in ref_calls] == [1] * 8 and [n for n, _ in calls] == [8]
    recs = [r.recommendations[0] for r in res[4:]]
    assert all(r["source"] == "model" for r in recs)
    assert [r["changed"] for r in recs] == [r.recommendations[0]["changed"] for r in ref[4:]]


def test_empty_batch_and_unknown_users(make_op: Any) -> None:
    op = make_op()
    states: dict[str, bytes | None] = {"a": b"kept"}
    assert op.step_many(states, []) == [] and op.on_timer_many([]) == []
    res = op.step_many(states, [b"not json", 42, Event("e1", "a", "i", "nope", T0)])
    assert [len(r.dead_letters) for r in res] == [1, 1, 1]
    assert [r.state for r in res] == [None, None, b"kept"] and states == {"a": b"kept"}
