"""Streaming item-item CF (issue 15, operators/cf.py): what an event pairs with, how an item's predecessors are
weighted, decayed, bounded and published; the same states and publications whatever the batching; the user
operator's side (successors, stream items, the reserved CF place)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from operators.batch import Outputs, cf_events, to_json
from operators.cf import CfOperator, CfState, CfUpdate, decode_cf, encode_cf, prev_items
from operators.config import CfConf
from operators.state import item_hash

H = 3_600_000


def ev(item: str, ts: int, prev: list[int], **kw: Any) -> dict[str, Any]:
    return {"kind": "item_event", "item_id": item, "ts": ts, "prev": prev, "event_id": f"e-{item}-{ts}", **kw}


def test_prev_items_are_the_users_recent_distinct_items_before_the_event() -> None:
    conf = CfConf(window=3, max_gap_ms=10 * H)
    items = [1, 2, 3, 2, 4, 9]
    ts = [0, 1 * H, 2 * H, 3 * H, 4 * H, 50 * H]
    # at 5 H: 9 is later (not before), 4, 2 (its latest), 3 — and 1 would be the fourth
    assert prev_items(items, ts, 5 * H, item=7, conf=conf) == [4, 2, 3]
    assert prev_items(items, ts, 5 * H, item=4, conf=conf) == [2, 3, 1]  # never the event's own item
    assert prev_items(items, ts, 13 * H, item=7, conf=conf) == [4, 2]  # at most max_gap_ms before it
    assert prev_items([], [], 5 * H, item=7, conf=conf) == []


def test_predecessors_are_weighted_by_distance_decayed_and_bounded() -> None:
    conf = CfConf(max_neighbours=3, half_life_ms=H, publish_interval_ms=0)
    op = CfOperator(conf)
    st, up = op.step(None, ev("j", 10 * H, [11, 12, 13]))
    assert decode_cf(st or b"").preds == pytest.approx({11: 1.0, 12: 0.5, 13: 1 / 3})
    assert up is not None and [h for h, _ in up.preds] == [11, 12, 13]
    st, up = op.step(st, ev("j", 11 * H, [14]))  # one half-life later: all halve, then 14 joins, 13 is evicted
    s = decode_cf(st or b"")
    assert s.preds == pytest.approx({11: 0.5, 12: 0.25, 14: 1.0}) and len(st or b"") == 19 + 3 * 8
    assert up is not None and up.preds[0][0] == 14
    st2, up2 = op.step(st, ev("j", 11 * H, [11]))  # the set does not change: nothing to publish
    assert up2 is None and decode_cf(st2 or b"").preds[11] == pytest.approx(1.5)
    # flagged accounts and events without history leave the state alone
    assert op.step(st, ev("j", 12 * H, [15], quarantined=True)) == (st, None)
    assert op.step(st, ev("j", 12 * H, [])) == (st, None)


def test_publications_are_rate_limited_and_owed_ones_follow() -> None:
    op = CfOperator(CfConf(publish_interval_ms=60_000))
    st, up = op.step(None, ev("j", 1_000_000, [1]))
    assert up is not None  # the first one at once
    st, up = op.step(st, ev("j", 1_010_000, [2]))
    assert up is None and decode_cf(st or b"").dirty  # changed, owed
    st, up = op.step(st, ev("j", 1_070_000, [1]))  # no change of its own, but the owed one is due
    assert up is not None and {h for h, _ in up.preds} == {1, 2} and not decode_cf(st or b"").dirty


def test_state_and_record_round_trips_and_bad_input() -> None:
    s = CfState(5, 3, {7: 0.5, 2**32 - 1: 1.25}, True)
    assert decode_cf(encode_cf(s)) == s
    assert decode_cf(encode_cf(dataclasses.replace(s, dirty=False))).published_ts == 3
    with pytest.raises(ValueError):
        decode_cf(b"\x02" + encode_cf(s)[1:])
    op = CfOperator(CfConf())
    st, _ = op.step(b"garbage", ev("j", H, [1]))  # unreadable state: starts afresh
    assert decode_cf(st or b"").preds == {1: 1.0}
    u = CfUpdate("j", ((1, 0.5), (2, 0.25)), 9)
    assert CfUpdate.from_dict(u.to_dict()) == u
    for bad in ({"kind": "x"}, {**u.to_dict(), "preds": [[-1, 0.5]]}, {**u.to_dict(), "preds": [[1, "a"]]},
                {**u.to_dict(), "ts": "9"}, [1, 2]):  # fmt: skip
        with pytest.raises(ValueError):
            CfUpdate.from_dict(bad)


def test_the_same_states_and_latest_publications_whatever_the_batching() -> None:
    """States are the same whatever the batching; a batch publishes what the events published one by one, less the
    lists of an item a later one of the same batch replaces; so each item's latest list is the same too."""
    import random

    rnd = random.Random(3)
    events = [ev(f"i{rnd.randrange(6)}", t * 20_000, [rnd.randrange(40) for _ in range(3)]) for t in range(400)]
    op = CfOperator(CfConf(max_neighbours=5))

    def run(chunk: int) -> tuple[dict[str, bytes], list[str]]:
        store: dict[str, bytes] = {}

        class Store:
            get = store.get

            def put(self, k: str, v: bytes) -> None:
                store[k] = v

            def remove(self, k: str) -> None:
                store.pop(k, None)

        out = Outputs()
        for s in range(0, len(events), chunk):
            cf_events(op, Store(), events[s : s + chunk], out)
        return store, out.cf_updates

    one = run(1)
    assert one[1] and all(r.split("\n", 1)[0].startswith("i") for r in one[1])
    one_by_event: list[tuple[int, str]] = []  # (event index, record) of the one-by-one run
    states: dict[str, bytes | None] = {}
    for k, e in enumerate(events):
        states[e["item_id"]], up = op.step(states.get(e["item_id"]), e)
        if up is not None:
            one_by_event.append((k, f"{e['item_id']}\n{to_json(up.to_dict())}"))
    assert [r for _, r in one_by_event] == one[1]

    def latest(records: list[str]) -> dict[str, str]:
        return dict(r.split("\n", 1) for r in records)  # the compacted topic: the last record per key

    def expected(chunk: int) -> list[str]:  # the one-by-one publications, less those a later one replaces
        out: list[str] = []
        for s in range(0, len(events), chunk):
            in_batch = [r for r in one_by_event if s <= r[0] < s + chunk]
            last = {r[1].split("\n", 1)[0]: k for k, r in enumerate(in_batch)}
            out += [r[1] for k, r in enumerate(in_batch) if last[r[1].split("\n", 1)[0]] == k]
        return out

    runs = {chunk: run(chunk) for chunk in (7, 400)}
    for chunk, (store, records) in runs.items():
        assert store == one[0] and records == expected(chunk) and latest(records) == latest(one[1])
    assert len(runs[400][1]) == 6 < len(one[1])  # the 400-event batch: six items, one list each


def test_the_user_operator_inverts_predecessors_and_lists_new_items(make_op: Callable[..., Any]) -> None:
    from tests.unit.operators.conftest import T0
    from tests.unit.operators.conftest import ev as uev

    op = make_op(recs={"mmr_lambda": 1.0})
    a, b = op.item_ids[0], op.item_ids[1]
    # a new item (not in the model's vocabulary) that follows a in the stream
    assert op.apply_cf(CfUpdate("fresh-1", ((item_hash(a), 2.0), (item_hash(b), 1.0)), T0))
    j = op._list_index("fresh-1")
    assert j is not None and j >= op.n_items and op.cf_succ[item_hash(a)] == {j: 2.0}
    # replaced: it no longer follows b
    op.apply_cf(CfUpdate("fresh-1", ((item_hash(a), 2.0),), T0))
    assert j not in op.cf_succ.get(item_hash(b), {})
    # a user who just consumed a gets it in the reserved CF place, marked cf
    hist = [uev(i, op.item_ids[2 + i], T0 + i * 120_000, "purchase") for i in range(4)]
    hist.append(uev(9, a, T0 + 10 * 120_000, "purchase"))
    state, rec = None, {}
    for e in hist:
        r = op.step(state, e)
        state, rec = r.state, (r.recommendations[-1] if r.recommendations else rec)
    assert "fresh-1" in rec["items"] and rec["sources"][rec["items"].index("fresh-1")] == "cf"
    off = make_op(recs={"mmr_lambda": 1.0}, cf={"slots": 0})
    off.apply_cf(CfUpdate("fresh-1", ((item_hash(a), 2.0),), T0))
    state, rec = None, {}
    for e in hist:
        r = off.step(state, e)
        state, rec = r.state, (r.recommendations[-1] if r.recommendations else rec)
    assert "fresh-1" not in rec["items"]


def test_a_successor_over_the_bound_goes_lightest_first_then_highest_index(make_op: Callable[..., Any]) -> None:
    from tests.unit.operators.conftest import T0

    op = make_op(cf={"max_neighbours": 2})
    h = item_hash(op.item_ids[0])
    for k, w in ((1, 1.0), (2, 3.0), (3, 1.0)):  # the third is over the bound: of the two lightest, 3 goes
        op.apply_cf(CfUpdate(op.item_ids[k], ((h, w),), T0))
    assert op.cf_succ[h] == {1: 1.0, 2: 3.0}
    op.apply_cf(CfUpdate(op.item_ids[4], ((h, 2.0),), T0))  # lighter than 3.0, heavier than 1.0: 1 goes
    assert op.cf_succ[h] == {2: 3.0, 4: 2.0}


def test_stream_items_known_only_by_cf_are_never_scored_as_content(make_op: Callable[..., Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A new item known only from CF takes a content row (zero vector, bias -inf) so lists can index it; with no
    row that has a text embedding the content scoring is not run at all (it could choose nothing)."""
    from tests.unit.operators.conftest import T0
    from tests.unit.operators.conftest import ev as uev

    op = make_op(recs={"mmr_lambda": 1.0})
    a = op.item_ids[0]
    op.apply_cf(CfUpdate("fresh-2", ((item_hash(a), 2.0),), T0))
    assert op.content_ids == ["fresh-2"] and not len(op._content_live()[0])

    def boom(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("content scoring ran without a content row to score")

    monkeypatch.setattr(op, "_content_candidates", boom)
    state, rec = None, {}
    for i in range(5):
        r = op.step(state, uev(i, op.item_ids[1 + i] if i < 4 else a, T0 + i * 120_000, "purchase"))
        state, rec = r.state, (r.recommendations[-1] if r.recommendations else rec)
    assert rec and "content" not in rec["sources"] and "fresh-2" in rec["items"]



def test_mass_at_is_the_last_publications_decayed_weight_before_each_query() -> None:
    """`mass_at` replays events through the CF operator with the user operator's `prev` and gives, before each query
    event, each item's last publication's summed weights decayed to the query's time: a change inside the publish
    interval is not seen until the next publication; an item with no publication has 0; a query is read before its
    own event is applied; a query matching no event stays 0."""
    from types import SimpleNamespace

    from operators.cf import mass_at

    def e(user: str, item: str, ts: int) -> Any:
        return SimpleNamespace(user_id=user, item_id=item, ts=ts)

    conf = CfConf(window=3, max_gap_ms=10 * H, half_life_ms=H, publish_interval_ms=60_000)
    t0 = 100 * H
    events = [e("u1", "a", t0), e("u1", "b", t0 + 1000),  # b: preds {a: 1}, published at t0 + 1 s
              e("u2", "c", t0 + 2000), e("u2", "b", t0 + 3000),  # b: {a, c} inside the interval: owed, not published
              e("u3", "b", t0 + H + 1000),  # no history: no prev, b's state unchanged
              e("u4", "a", t0 + 2 * H), e("u4", "d", t0 + 2 * H + 500),
              e("u4", "b", t0 + 2 * H + 1000),  # b: prev [d, a] (1, 1/2); the owed publication goes out
              e("u5", "a", t0 + 3 * H)]
    queries = [("u3", "b", t0 + H + 1000), ("u4", "b", t0 + 2 * H + 1000), ("u5", "a", t0 + 3 * H),
               ("u1", "a", t0), ("u9", "b", t0)]
    got = mass_at(events, queries, ["a", "b"], conf, history_len=50)
    f = 0.5 ** ((2 * H - 2000) / H)  # b's weights from t0 + 3 s to t0 + 2 H + 1 s
    published = (0.5 ** (2000 / H) * f + 0.5) + f + 1.0  # a (decayed, then + 1/2), c (decayed), d
    assert got[0].tolist() == pytest.approx([0.0, 0.5])  # the first publication, one half-life on
    assert got[1].tolist() == pytest.approx([0.0, 0.25])  # read before its own event: still the first publication
    assert got[2].tolist() == pytest.approx([0.0, published * 0.5 ** ((H - 1000) / H)])
    assert got[3].tolist() == [0.0, 0.0] and got[4].tolist() == [0.0, 0.0]
