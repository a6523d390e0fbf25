"""UserOperator: every path through step/on_timer/erase (reason codes, dedup, TTL, debounce, filters, MMR)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from operators.state import decode, encode
from tests.unit.operators.conftest import T0, ev

MIN = 60_000


def _items(artifact: Any, n: int, start: int = 0) -> list[str]:
    return [artifact.item_id(int(i)) for i in artifact.popular[start : start + n]]


def _feed(op: Any, events: list[Any], state: bytes | None = None) -> tuple[bytes | None, list[Any]]:
    results = []
    for e in events:
        r = op.step(state, e)
        state = r.state
        results.append(r)
    return state, results


def test_recommendation_record(make_op: Callable[..., Any], artifact: Any, pseud: Any) -> None:
    op = make_op()
    its = _items(artifact, 5)
    state, res = _feed(op, [ev(i, it, T0 + i * 2 * MIN) for i, it in enumerate(its)])
    rec = res[-1].recommendations[0]
    json.dumps(rec)  # serialisable
    assert rec["kind"] == "recommendation" and rec["source"] == "model"
    assert rec["user_key"] == pseud.pseudonym("u1") and rec["key_id"] == "test-key"
    assert "u1" not in json.dumps(rec)
    assert rec["model_version"] == artifact.version and rec["event_id"] == "e4" and rec["event_ts"] == T0 + 8 * MIN
    assert len(rec["items"]) == 10 and len(set(rec["items"])) == 10
    assert not set(rec["items"]) & set(its)  # consumed items excluded
    assert 0.0 <= rec["intra_list_diversity"] <= 2.0
    # deterministic id: the same event replayed from the same state gives the same record
    again = op.step(res[-2].state, ev(4, its[4], T0 + 8 * MIN)).recommendations[0]
    assert again == rec
    assert rec["rec_id"] != res[-2].recommendations[0]["rec_id"]


def test_cold_start_uses_knn_and_popular(make_op: Callable[..., Any], artifact: Any) -> None:
    op = make_op()
    first = op.step(None, ev(0, _items(artifact, 1)[0], T0)).recommendations[0]
    assert first["source"] == "cold_start" and len(first["items"]) == 10
    nb = {artifact.item_id(int(j)) for j in artifact.knn_neighbours[artifact.item_index(_items(artifact, 1)[0])]}
    assert first["items"][0] in nb  # neighbours of the one known item come first
    unknown = make_op(recs={"mmr_lambda": 1.0}).step(None, ev(0, "never-seen-item", T0)).recommendations[0]
    assert unknown["source"] == "cold_start"
    assert unknown["items"][:3] == _items(artifact, 3)  # nothing known: popularity order


def test_business_filters(make_op: Callable[..., Any], artifact: Any) -> None:
    banned = _items(artifact, 20)
    cats = artifact.item_categories
    assert cats is not None
    deny = cats[artifact.item_index(_items(artifact, 1, 30)[0])][0]
    op = make_op(recs={"unavailable_items": tuple(banned), "deny_categories": (deny,)})
    its = _items(artifact, 4, 40)
    _, res = _feed(op, [ev(i, it, T0 + i * 2 * MIN) for i, it in enumerate(its)])
    for r in (res[0], res[-1]):
        rec = r.recommendations[0]
        assert not set(rec["items"]) & set(banned)
        assert all(deny not in cats[artifact.item_index(i)] for i in rec["items"])
    allow = cats[artifact.item_index(its[0])][0]
    rec = _feed(make_op(recs={"allow_categories": (allow,)}), [ev(0, its[0], T0), ev(1, its[1], T0 + 2 * MIN)])[1]
    assert all(allow in cats[artifact.item_index(i)] for i in rec[-1].recommendations[0]["items"])


def test_duplicate_event_is_dropped_and_flagged(make_op: Callable[..., Any], artifact: Any) -> None:
    op = make_op()
    it = _items(artifact, 2)
    s1 = op.step(None, ev(0, it[0], T0)).state
    dup = op.step(s1, ev(0, it[1], T0 + 5))  # same event id, different body: still the same delivery
    assert dup.duplicate and dup.state == s1 and not dup.recommendations and not dup.item_events
    # the window is bounded: after dedup_max_ids newer events, an old id is accepted again
    op2 = make_op(state={"dedup_max_ids": 3})
    s = s1
    for i in range(1, 5):
        s = op2.step(s, ev(i, it[1], T0 + i)).state
    assert not op2.step(s, ev(0, it[0], T0 + 10)).duplicate
    assert len(decode(s).dedup) == 3


def test_dedup_window_expires_by_event_time(make_op: Callable[..., Any], artifact: Any) -> None:
    op = make_op(state={"dedup_window_ms": 1000})
    it = _items(artifact, 1)[0]
    s = op.step(None, ev(0, it, T0)).state
    s = op.step(s, ev(1, it, T0 + 5000)).state
    assert not op.step(s, ev(0, it, T0 + 6000)).duplicate


def test_bad_inputs_become_dead_letters(make_op: Callable[..., Any], artifact: Any) -> None:
    op = make_op()
    s = op.step(None, ev(0, _items(artifact, 1)[0], T0)).state
    for raw, reason in [
        (b"\xff\xfe", "not_utf8"),
        (b"[1]", "not_object"),
        ('{"event_id":"a","user_id":"u","item_id":"i","event_type":"buy","ts":1704067200000}', "bad_event_type"),
        ({"event_id": "a"}, "missing_field"),
        (42, "operator_bad_input"),
    ]:
        r = op.step(s, raw)
        assert [d["reason"] for d in r.dead_letters] == [reason], raw
        assert r.state == s and not r.recommendations
    good = '{"event_id":"z","user_id":"u1","item_id":"x","event_type":"view","ts":1704067300000}'
    assert op.step(s, good).recommendations  # raw messages are parsed too
    from operators.schema import Event

    bad = Event("e", "u1", "i", "view", "not-an-int")  # type: ignore[arg-type]
    assert op.step(s, bad).dead_letters[0]["reason"] == "operator_bad_input"


def test_corrupt_state_and_ttl_start_afresh(make_op: Callable[..., Any], artifact: Any) -> None:
    op = make_op(state={"ttl_ms": 10 * MIN})
    its = _items(artifact, 3)
    s = _feed(op, [ev(i, it, T0 + i * MIN) for i, it in enumerate(its)])[0]
    r = op.step(b"\x01garbage", ev(9, its[0], T0))
    assert r.state_reset and decode(r.state or b"").n_events == 1
    fresh = op.step(s, ev(5, its[0], T0 + 100 * MIN))
    assert fresh.state_reset and decode(fresh.state or b"").n_events == 1
    kept = op.step(s, ev(6, its[0], T0 + 5 * MIN))
    assert not kept.state_reset and decode(kept.state or b"").n_events == 4
    # a timer past the TTL clears the state
    assert op.on_timer(s, T0 + 100 * MIN).state is None


def test_erase(make_op: Callable[..., Any], artifact: Any, pseud: Any) -> None:
    op = make_op()
    s = op.step(None, ev(0, _items(artifact, 1)[0], T0)).state
    r = op.erase(s, "u1", T0 + 1)
    assert r.state is None
    key = pseud.pseudonym("u1")
    kinds = {(d["kind"], d.get("table") or d.get("topic")) for d in r.deletions}
    assert kinds == {("deletion", "recommendations_by_user"), ("deletion", "fraud_flags"),
                     ("tombstone", "recommendations")}  # fmt: skip
    assert all(d["user_key"] == key and "u1" not in json.dumps(d) for d in r.deletions)
    assert [d["deletion_id"] for d in r.deletions] == [d["deletion_id"] for d in op.erase(None, "u1", T0 + 1).deletions]


def test_debounce_and_timer(make_op: Callable[..., Any], artifact: Any) -> None:
    op = make_op(debounce={"interval_ms": MIN, "strong_events": ("purchase",)})
    its = _items(artifact, 6)
    r0 = op.step(None, ev(0, its[0], T0))
    assert r0.recommendations and r0.timer_ts is None
    r1 = op.step(r0.state, ev(1, its[1], T0 + 1000))
    r2 = op.step(r1.state, ev(2, its[2], T0 + 2000))
    assert not r1.recommendations and not r2.recommendations
    assert r1.timer_ts == r2.timer_ts == T0 + MIN
    early = op.on_timer(r2.state, T0 + MIN - 1)
    assert not early.recommendations
    fired = op.on_timer(r2.state, T0 + MIN)
    rec = fired.recommendations[0]
    assert rec["event_id"] == "e2" and rec["event_ts"] == T0 + 2000 and rec["debounced"] is True
    assert rec["emitted_ts"] == T0 + MIN and rec["user_key"] == r0.recommendations[0]["user_key"]
    assert not op.on_timer(fired.state, T0 + 2 * MIN).recommendations  # nothing pending any more
    strong = op.step(r2.state, ev(3, its[3], T0 + 3000, "purchase"))
    assert strong.recommendations and strong.recommendations[0]["event_id"] == "e3"
    # debounce off: every event updates
    op0 = make_op(debounce={"interval_ms": 0})
    assert all(r.recommendations for r in _feed(op0, [ev(i, its[i], T0 + i) for i in range(4)])[1])


def test_mmr_rerank_raises_diversity(make_op: Callable[..., Any], artifact: Any) -> None:
    from operators.recs import intra_list_diversity, mmr, normalise_rows

    emb = normalise_rows(artifact.item_embeddings)
    cand = list(range(40))
    rel = list(np.linspace(1.0, 0.0, 40))
    assert mmr(cand, rel, emb, 10, 1.0) == cand[:10]
    assert intra_list_diversity(mmr(cand, rel, emb, 10, 0.3), emb) > intra_list_diversity(cand[:10], emb)
    its = _items(artifact, 4, 10)
    events = [ev(i, it, T0 + i * 2 * MIN) for i, it in enumerate(its)]
    plain = _feed(make_op(recs={"mmr_lambda": 1.0}), events)[1][-1].recommendations[0]
    div = _feed(make_op(recs={"mmr_lambda": 0.3}), events)[1][-1].recommendations[0]
    assert plain["intra_list_diversity"] == plain["intra_list_diversity_before_rerank"]
    assert div["intra_list_diversity"] > div["intra_list_diversity_before_rerank"]


def test_late_event_is_inserted_in_time_order(make_op: Callable[..., Any], artifact: Any) -> None:
    op = make_op()
    its = _items(artifact, 3)
    s = _feed(op, [ev(0, its[0], T0), ev(1, its[1], T0 + 10_000), ev(2, its[2], T0 + 5_000)])[0]
    st = decode(s or b"")
    assert st.ts == [T0, T0 + 5_000, T0 + 10_000] and st.last_ts == T0 + 10_000
    assert encode(st) == s


def test_debounced_list_does_not_depend_on_when_the_timer_fires(make_op: Any) -> None:
    """An event later than its user's pending debounce timer first gets the list that timer builds: the same lists,
    ids, items and states whether the watermark fired the timer before the event or not (batching and recovery
    change that order; Cassandra keeps whatever a failed run wrote, so a restored run must rebuild the same)."""
    op = make_op()
    iv = op.conf.debounce.interval_ms
    r1 = op.step(None, ev(1, "i000001", T0))
    r2 = op.step(r1.state, ev(2, "i000002", T0 + 1000))
    assert r1.recommendations and not r2.recommendations and r2.timer_ts == T0 + iv
    e3 = ev(3, "i000003", T0 + iv + 500)
    fired = op.on_timer(r2.state, r2.timer_ts)  # the watermark first
    a3 = op.step(fired.state, e3)
    b3 = op.step(r2.state, e3)  # the event first, the timer later
    late = op.on_timer(b3.state, r2.timer_ts)

    def lists(rs: list[Any]) -> list[tuple[Any, ...]]:
        return [(r["rec_id"], r["items"], r["emitted_ts"], r["debounced"]) for x in rs for r in x.recommendations]

    assert lists([fired, a3]) == lists([b3, late])
    assert [r["debounced"] for r in b3.recommendations] == [True]  # the timer's list, built with the event
    assert not late.recommendations and late.state == a3.state
