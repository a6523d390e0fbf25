"""User-level detectors (through the operator) and the item-level shilling / click-farm detectors."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from operators import fraud
from operators.config import UserFraudConf
from operators.item import CLICK_FARM, FARM_MEMBER, SHILL_MEMBER, SHILLING, ItemOperator, decode_item, encode_item
from tests.unit.operators.conftest import T0, conf_with, ev

H = 3_600_000
DAY = 24 * H


def _items(artifact: Any, n: int) -> list[str]:
    return [artifact.item_id(int(i)) for i in artifact.popular[:n]]


def _run(op: Any, events: list[Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    s, flags, results = None, [], []
    for e in events:
        r = op.step(s, e)
        s = r.state
        flags += r.fraud_flags
        results.append(r)
    return flags, results


def test_velocity_burst(make_op: Callable[..., Any], artifact: Any) -> None:
    its = _items(artifact, 30)
    op = make_op(user_fraud={"velocity_max_events": 10, "velocity_window_ms": 60_000, "regular_min_gaps": 1000})
    rng = np.random.default_rng(0)
    fast = [ev(i, its[i % 30], T0 + int(t)) for i, t in enumerate(np.cumsum(rng.integers(500, 4000, 15)))]
    flags, res = _run(op, fast)
    assert [f["detector"] for f in flags] == [fraud.VELOCITY]
    f = flags[0]
    assert f["score"] >= 0.5 and f["evidence"]["events_in_window"] == 10 and f["subject_kind"] == "user"
    assert f["flag_id"] == fraud.flag_id("user", f["user_key"], fraud.VELOCITY, f["event_id"])
    # from the flag on, the user's events reach the item operator marked as quarantined (evidence, not baseline)
    i = [r.fraud_flags != [] for r in res].index(True)
    marks = [[e["quarantined"] for e in r.item_events] for r in res]
    assert marks == [[False]] * i + [[True]] * (len(res) - i)
    slow = [ev(i, its[i % 30], T0 + i * 20_000) for i in range(15)]
    assert _run(op, slow)[0] == []


def test_regular_gaps(make_op: Callable[..., Any], artifact: Any) -> None:
    its = _items(artifact, 30)
    op = make_op(user_fraud={"velocity_max_events": 10**6, "regular_min_gaps": 10})
    rng = np.random.default_rng(1)
    bot = [ev(i, its[i % 30], T0 + i * 1500 + int(rng.integers(-10, 11)), "click") for i in range(12)]
    flags, _ = _run(op, bot)
    assert [f["detector"] for f in flags] == [fraud.REGULARITY] and flags[0]["evidence"]["cv"] < 0.05
    human = [ev(i, its[i % 30], T0 + int(t), "click") for i, t in enumerate(np.cumsum(rng.exponential(30_000, 12)))]
    assert _run(op, human)[0] == []
    ties = [ev(i, its[i % 30], T0 + (i // 4) * 1000, "click") for i in range(12)]  # batch timestamps: ignored
    assert _run(op, ties)[0] == []


def _engaged(op: Any, artifact: Any, n: int = 60) -> Any:
    """`op` after its feed showed `n` views of other users: a platform whose ratings follow engagement."""
    its = _items(artifact, 30)
    for i in range(n):
        op.step(None, ev(10_000 + i, its[i % 30], T0 - 3 * DAY + i * 1000, user=f"other{i}"))
    return op


def test_rating_anomaly_extreme_rule(make_op: Callable[..., Any], artifact: Any) -> None:
    its = _items(artifact, 30)
    op = make_op(user_fraud={"rating_min": 8})  # (off by default); a fresh operator's feed is ratings-only
    shill = [ev(i, its[i], T0 + i * 20_000, "rating", rating=5.0 if i % 5 else 1.0) for i in range(9)]
    flags, _ = _run(op, shill)
    assert [f["detector"] for f in flags] == [fraud.RATING] and flags[0]["evidence"]["extreme"] == 8
    assert flags[0]["evidence"]["rule"] == "extreme" and flags[0]["event_id"] == "e7"
    # every rating must be extreme: one moderate rating among them is a fan, not the crude shill
    fan = [ev(i, its[i], T0 + i * 20_000, "rating", rating=4.0 if i == 3 else 5.0) for i in range(9)]
    assert _run(op, fan)[0] == []
    honest = [ev(i, its[i], T0 + i * 20_000, "rating", rating=[3.0, 4.0, 5.0, 2.5][i % 4]) for i in range(12)]
    assert _run(op, honest)[0] == []
    # cooldown: one flag per detector per user per cooldown
    more = shill + [ev(100 + i, its[i], T0 + 200_000 + i * 20_000, "rating", rating=5.0) for i in range(5)]
    assert len(_run(op, more)[0]) == 1


def _shop(i: int, item: str, ts: int) -> list[Any]:
    """A genuine purchase funnel ending in a rating (the rating is verified)."""
    return [ev(i * 10 + k, item, ts + k * 5_000, t, rating=4.0) for k, t in enumerate(("view", "purchase", "rating"))]


def test_rating_anomaly_unverified_rule(make_op: Callable[..., Any], artifact: Any) -> None:
    its = _items(artifact, 30)
    op = _engaged(make_op(), artifact)  # ratings follow engagement on this feed: 5 unverified ratings in 1 h flag
    fake = [ev(i, its[i], T0 + i * 20_000, "rating", rating=[3.0, 4.0, 5.0, 3.5][i % 4]) for i in range(8)]
    flags, res = _run(op, fake)
    assert [f["detector"] for f in flags] == [fraud.RATING] and flags[0]["event_id"] == "e4"
    assert flags[0]["evidence"]["rule"] == "unverified" and flags[0]["evidence"]["ratings"] == 5
    assert all(e["unverified"] for r in res for e in r.item_events)
    assert _run(op, fake[:4])[0] == []  # four are not enough
    # the same ratings, each after viewing and buying the item: verified, nothing to flag
    shopper = [e for i in range(8) for e in _shop(i, its[i], T0 + i * 60_000)]
    flags, res = _run(op, shopper)
    assert flags == [] and not any(e["unverified"] for r in res for e in r.item_events)
    # one engagement event anywhere in the kept history: not a ratings-only account
    assert _run(op, [ev(99, its[20], T0 - 1000), *fake])[0] == []
    # on a ratings-only feed (MovieLens; a fresh operator's prior) the notion is off: learned, not configured
    off = make_op()
    flags, res = _run(off, fake)
    assert flags == [] and not any(e["unverified"] for r in res for e in r.item_events)
    assert off.rates.view(off.conf.base_rates).engagement_share == 0.0
    # the same feed learns otherwise once engagement shows up
    flags, _ = _run(_engaged(off, artifact), [ev(100 + i, its[i], T0 + i * 20_000, "rating", rating=4.0, user="new")
                                               for i in range(5)])  # fmt: skip
    assert [f["detector"] for f in flags] == [fraud.RATING]


def test_model_surprise_function_and_wiring(make_op: Callable[..., Any], artifact: Any) -> None:
    c = UserFraudConf(surprise_min_events=5, surprise_factor=1.0)
    n = 1000
    uniform = np.log(1 / n)
    assert fraud.surprise(np.full(10, uniform * 1.5), n, c).score > 0.5  # type: ignore[union-attr]
    assert fraud.surprise(np.full(10, uniform * 0.5), n, c).score < 0.5  # type: ignore[union-attr]
    assert fraud.surprise(np.full(4, uniform * 2), n, c) is None  # too few transitions
    assert fraud.surprise(np.zeros(50), n, c) is None  # undefined positions are ignored
    its = [artifact.item_id(i) for i in range(artifact.n_items)][:40]
    events = [ev(i, its[(i * 17) % 40], T0 + i * 120_000) for i in range(30)]
    uf = {"surprise_min_events": 5, "surprise_every": 10, "velocity_max_events": 10**6, "regular_min_gaps": 1000}
    strict = make_op(user_fraud={**uf, "surprise_factor": 0.01})  # any real sequence is "surprising"
    lax = make_op(user_fraud={**uf, "surprise_factor": 100.0})
    flags = _run(strict, events)[0]
    assert [f["detector"] for f in flags] == [fraud.SURPRISE]
    # judged on the 10th event and confirmed on the 20th (surprise_confirm: two judgements in a row)
    assert flags[0]["evidence"]["transitions"] >= 5 and flags[0]["event_id"] == "e19"
    once = make_op(user_fraud={**uf, "surprise_factor": 0.01, "surprise_confirm": False})
    assert [f["event_id"] for f in _run(once, events)[0]] == ["e9"]  # the 10th event
    assert _run(lax, events)[0] == []
    assert _run(make_op(user_fraud={**uf, "surprise_factor": 0.01, "surprise_every": 0}), events)[0] == []


def _flink_like(op: Any, events: list[Any], timer_lag: int | None) -> tuple[list[dict[str, Any]], int]:
    """One user's events through the operator as the job runs it: each due debounce timer fires once the
    watermark (max event time - `timer_lag`) passes it; `None`: timers never fire. Returns flags and lists."""
    s, flags, pending, lists = None, [], [], 0
    for e in events:
        for t in sorted(pending):
            if timer_lag is not None and t + timer_lag <= e.ts:
                r = op.on_timer(s, t)
                assert r.fraud_flags == []  # timers never judge: when they fire is not a property of the events
                s, lists = r.state, lists + len(r.recommendations)
                pending.remove(t)
        r = op.step(s, e)
        s, flags, lists = r.state, flags + r.fraud_flags, lists + len(r.recommendations)
        if r.timer_ts is not None and r.timer_ts not in pending:
            pending.append(r.timer_ts)
    return flags, lists


class _CountingScorer:
    """Counts calls, and those asking for log-probs (the full graph); `always_full`: every call asks for them (the
    behaviour before the fast graph)."""

    def __init__(self, inner: Any, always_full: bool = False) -> None:
        self.inner, self.calls, self.full_calls, self.always_full = inner, 0, 0, always_full

    def score(self, batch: Any, need_logprob: bool = False) -> Any:
        self.calls += 1
        need = need_logprob or self.always_full
        self.full_calls += need
        return self.inner.score(batch, need_logprob=need)


def test_model_surprise_is_a_function_of_the_events_not_of_timers(artifact: Any, scorer: Any, pseud: Any) -> None:
    from operators.user import UserOperator

    its = [artifact.item_id(i) for i in range(artifact.n_items)][:40]
    rng = np.random.default_rng(4)
    events = [ev(i, its[(i * 7) % 40], T0 + int(t)) for i, t in enumerate(np.cumsum(rng.integers(5_000, 90_000, 45)))]
    uf = {"surprise_min_events": 5, "surprise_every": 10, "surprise_factor": 0.01, "cooldown_ms": 1,
          "surprise_confirm": False,
          "velocity_max_events": 10**6, "regular_min_gaps": 1000}  # fmt: skip
    runs = {}
    full_calls: dict[str, int] = {}
    for name, interval, lag in (("no debounce", 0, 0), ("timers on time", 60_000, 0),
                                ("watermark 10 min late", 60_000, 600_000), ("timers never fire", 10**12, None)):
        counting = _CountingScorer(scorer)
        op = UserOperator(artifact, conf_with(user_fraud=uf, debounce={"interval_ms": interval}), pseud, counting)
        flags, lists = _flink_like(op, events, lag)
        runs[name] = ([(f["flag_id"], f["event_id"], f["evidence"]) for f in flags], lists, counting.calls)
        full_calls[name] = counting.full_calls
    expected_ids = ["e9", "e19", "e29", "e39"]  # every 10th event of the user
    for name, (flags, _, _) in runs.items():
        assert [f[1] for f in flags] == expected_ids, name
        assert flags == runs["no debounce"][0], name  # same ids, same numbers
        assert full_calls[name] == len(expected_ids), name  # the full graph runs for the judged events only
    assert runs["no debounce"][1] > runs["timers on time"][1] > runs["timers never fire"][1] == 1  # lists differ
    # cost: the only list of "timers never fire" is a cold start (no model): the model runs for the 4 checks only;
    # without debounce every list after the first calls the model and the checks reuse those calls
    assert runs["timers never fire"][2] == len(expected_ids)
    assert runs["no debounce"][2] == len(events) - 1


def test_lists_and_flags_do_not_depend_on_which_graph_scored_them(artifact: Any, scorer: Any, pseud: Any) -> None:
    """The operator with the fast graph for lists the surprise detector does not judge gives the very lists and flags
    it gives when every call runs the full graph (as before the fast graph existed)."""
    from operators.user import UserOperator

    its = [artifact.item_id(i) for i in range(artifact.n_items)]
    rng = np.random.default_rng(9)
    events = []
    for u in range(6):
        ts = T0 + np.cumsum(rng.integers(1_000, 200_000, 60))
        picks = rng.integers(0, len(its), 60)
        types = rng.choice(["view", "click", "cart", "purchase"], 60)
        events += [ev(u * 100 + i, its[int(picks[i])], int(ts[i]), str(types[i]), user=f"u{u}") for i in range(60)]
    events.sort(key=lambda e: e.ts)
    uf = {"surprise_min_events": 5, "surprise_every": 7, "surprise_factor": 0.9, "cooldown_ms": 1}
    out = {}
    for always_full in (False, True):
        counting = _CountingScorer(scorer, always_full=always_full)
        op = UserOperator(artifact, conf_with(user_fraud=uf, debounce={"interval_ms": 60_000}), pseud, counting)
        states: dict[str, bytes | None] = {}
        recs, flags = [], []
        for e in events:
            r = op.step(states.get(e.user_id), e)
            states[e.user_id] = r.state
            recs += r.recommendations
            flags += r.fraud_flags
            if r.timer_ts is not None:  # fire at once: exercises the timer path too
                t = op.on_timer(r.state, r.timer_ts)
                states[e.user_id] = t.state
                recs += t.recommendations
        out[always_full] = (recs, flags, counting.calls, counting.full_calls)
    (recs, flags, calls, full), (recs_ref, flags_ref, calls_ref, _) = out[False], out[True]
    assert calls == calls_ref and 0 < full < calls / 3  # same calls; most of them by the fast graph
    assert [f["flag_id"] for f in flags] == [f["flag_id"] for f in flags_ref] and any(
        f["detector"] == fraud.SURPRISE for f in flags)  # fmt: skip
    assert len(recs) == len(recs_ref) > 100
    for a, b in zip(recs, recs_ref, strict=True):
        assert a["items"] == b["items"] and a["rec_id"] == b["rec_id"] and a["source"] == b["source"]
        assert np.allclose(a["scores"], b["scores"], atol=1e-5, rtol=0)


def _key(user: str) -> str:
    return hashlib.sha256(user.encode()).hexdigest()


def _ie(i: int, user: str, ts: int, etype: str = "click", item: str = "target", rating: float | None = None,
        first: int | None = None, quarantined: bool = False, unverified: bool = False) -> dict[str, Any]:  # fmt: skip
    return {"kind": "item_event", "item_id": item, "user_key": _key(user), "key_id": "k", "event_id": f"x{i}",
            "event_type": etype, "ts": ts, "rating": rating, "account_first_ts": ts if first is None else first,
            "account_events": 1, "quarantined": quarantined, "unverified": unverified}  # fmt: skip


def _item_run(events: list[dict[str, Any]], **fields: Any) -> list[dict[str, Any]]:
    op = ItemOperator(conf_with(item_fraud=fields) if fields else conf_with(), "v1")
    s, flags = None, []
    for e in events:
        r = op.step(s, e)
        assert not r.dead_letters
        s = r.state
        flags += r.fraud_flags
    if s is not None:
        assert encode_item(decode_item(s)) == s
    return flags


def test_click_farm_flags_item_and_members() -> None:
    rng = np.random.default_rng(2)
    farm = [_ie(i, f"farm{i % 8}", T0 + 10 * DAY + i * 20_000) for i in range(80)]
    genuine = [_ie(1000 + i, f"old{i}", T0 + int(t), first=T0 - 30 * DAY)
               for i, t in enumerate(np.sort(rng.uniform(0, 10 * DAY, 60)))]  # fmt: skip
    flags = _item_run(genuine + farm)
    items = [f for f in flags if f["detector"] == CLICK_FARM]
    members = {f["subject"] for f in flags if f["detector"] == FARM_MEMBER}
    assert len(items) == 1 and items[0]["subject"] == "target" and items[0]["subject_kind"] == "item"
    assert members == {_key(f"farm{u}") for u in range(8)}
    assert _item_run(genuine) == []
    # young accounts clicking once each (a launch, a viral item) are not a farm
    crowd = [_ie(i, f"new{i}", T0 + 10 * DAY + i * 20_000) for i in range(80)]
    assert _item_run(genuine + crowd) == []


def test_click_farm_needs_to_beat_the_item_baseline() -> None:
    busy = [_ie(i, f"old{i % 50}", T0 + i * 60_000, first=T0 - 30 * DAY) for i in range(14 * 24 * 60 // 4)]
    farm = [_ie(10**6 + i, f"farm{i % 8}", busy[-1]["ts"] + i * 20_000) for i in range(40)]
    assert _item_run(busy + farm, baseline_ratio=5.0, max_recent=2048) == []
    assert any(f["detector"] == CLICK_FARM for f in _item_run(busy + farm, baseline_ratio=0.5, max_recent=2048))


def test_shilling_push_and_nuke() -> None:
    rng = np.random.default_rng(3)
    base = [_ie(i, f"old{i}", T0 + i * DAY // 3, "rating", rating=float(rng.choice([3.0, 3.5, 4.0])),
                first=T0 - 30 * DAY) for i in range(20)]  # fmt: skip  (all settled before the attack's window)
    start = T0 + 10 * DAY
    for value, direction in ((5.0, "push"), (1.0, "nuke")):
        attack = [_ie(100 + i, f"shill{i}", start + i * 600_000, "rating", rating=value) for i in range(7)]
        flags = _item_run(base + attack)
        item = [f for f in flags if f["detector"] == SHILLING]
        assert len(item) == 1 and item[0]["evidence"]["direction"] == direction
        assert {f["subject"] for f in flags if f["detector"] == SHILL_MEMBER} == {_key(f"shill{i}") for i in range(7)}
    # extreme ratings in line with an item's established mean (a loved item) are not shilling
    loved = [_ie(i, f"old{i}", T0 + i * DAY // 3, "rating", rating=5.0, first=T0 - 30 * DAY) for i in range(20)]
    fans = [_ie(100 + i, f"fan{i}", start + i * 600_000, "rating", rating=5.0) for i in range(7)]
    assert _item_run(loved + fans) == []


def test_small_click_farm_without_an_absolute_click_floor() -> None:
    """10 new accounts, 2-3 clicks each on an item nobody clicked before (a farm in a small stream: 25 clicks)."""
    per = [2, 3, 2, 3, 2, 3, 2, 3, 2, 3]
    farm = [(u, k) for u, n in enumerate(per) for k in range(n)]
    order = np.random.default_rng(5).permutation(len(farm))
    clicks = [_ie(i, f"farm{farm[j][0]}", T0 + 10 * DAY + i * 400_000) for i, j in enumerate(order)]
    flags = _item_run(clicks)
    assert [f["detector"] for f in flags if f["subject_kind"] == "item"] == [CLICK_FARM]
    assert {f["subject"] for f in flags if f["detector"] == FARM_MEMBER} == {_key(f"farm{u}") for u in range(10)}
    # the same volume from accounts clicking once or twice each (1.25 per account) is a crowd, not a farm
    crowd = [_ie(i, f"new{i * 4 // 5}", T0 + 10 * DAY + i * 400_000) for i in range(25)]
    assert _item_run(crowd) == []


def test_camouflage_clicks_on_a_popular_item_do_not_make_it_a_farm() -> None:
    """Farm accounts also click popular items as camouflage: a real burst, but a small one against the item's rate."""
    busy = [_ie(i, f"old{i % 40}", T0 + i * 2 * H, first=T0 - 30 * DAY) for i in range(168)]  # 12 a day, 14 days
    end = busy[-1]["ts"]
    camo = [_ie(10**6 + i, f"farm{i % 6}", end + (i + 1) * 300_000) for i in range(14)]  # 6 accounts, 2.3 each
    assert _item_run(busy + camo) == []
    flags = _item_run(busy + camo, baseline_ratio=5.0)  # the old, laxer burst ratio took it for a farm
    assert [f["detector"] for f in flags if f["subject_kind"] == "item"] == [CLICK_FARM]


def test_quarantined_accounts_are_evidence_but_not_baseline() -> None:
    # old accounts, all already flagged by a user-level detector, clicking an item together
    farm = [_ie(i, f"bot{i % 6}", T0 + i * 60_000, first=T0 - 30 * DAY, quarantined=True) for i in range(18)]
    flags = _item_run(farm)
    assert [f["detector"] for f in flags if f["subject_kind"] == "item"] == [CLICK_FARM]
    assert _item_run([{**e, "quarantined": False} for e in farm]) == []  # the same old accounts, unflagged
    op = ItemOperator(conf_with(), "v1")
    s = None
    for e in farm:
        s = op.step(s, e).state
    st = decode_item(s or b"")
    assert st.base_clicks == 0.0 and st.base_events == 0.0 and len(st.clicks) == 18  # kept, but not as baseline


def test_shilling_by_a_few_unverified_accounts() -> None:
    """3 new accounts give the extreme rating to an item they never viewed or bought (a small campaign)."""
    base = [_ie(i, f"old{i}", T0 + i * DAY // 2, "rating", rating=3.5, first=T0 - 30 * DAY) for i in range(6)]
    start = T0 + 10 * DAY
    attack = [_ie(100 + i, f"shill{i}", start + i * 3 * H, "rating", rating=1.0, unverified=True) for i in range(3)]
    flags = _item_run(base + attack)
    item = [f for f in flags if f["subject_kind"] == "item"]
    assert [f["detector"] for f in item] == [SHILLING] and item[0]["evidence"]["direction"] == "nuke"
    assert item[0]["evidence"]["unverified_accounts"] == 3
    assert {f["subject"] for f in flags if f["detector"] == SHILL_MEMBER} == {_key(f"shill{i}") for i in range(3)}
    # verified ratings (after a purchase) need the full group of 5; so does a platform without the notion
    assert _item_run(base + [{**e, "unverified": False} for e in attack]) == []
    assert _item_run(base + attack, shill_unverified_min_accounts=0) == []
    # a genuine rating among theirs does not clear them (no share floor by default)
    diluted = sorted(attack + [_ie(200, "old99", start + H, "rating", rating=3.0, first=T0 - 30 * DAY)],
                     key=lambda e: e["ts"])  # fmt: skip
    assert [f["detector"] for f in _item_run(base + diluted) if f["subject_kind"] == "item"] == [SHILLING]
    assert _item_run(base + diluted, shill_min_share=0.9) == []


def _feed_op(values: list[float], **fields: Any) -> ItemOperator:
    """An item operator whose feed has shown these ratings (other items, the day before the tests' attacks): its
    learned rating base rate."""
    op = ItemOperator(conf_with(item_fraud=fields) if fields else conf_with(), "v1")
    for i, v in enumerate(values):
        op.step(None, _ie(1000 + i, f"fan{i}", T0 + 9 * DAY + i * 60_000, "rating", rating=v, item=f"other{i % 50}"))
    return op


def _op_run(op: ItemOperator, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    s, flags = None, []
    for e in events:
        r = op.step(s, e)
        s, flags = r.state, flags + r.fraud_flags
    return flags


def test_shilling_needs_an_unlikely_share_of_extreme_ratings() -> None:
    """Five new accounts rating a fair item 5 within two days is what its first fans do (ML-100K: Terminator 2):
    each rating is a 5 with the item's (prior) share of ~0.2, and 5 of 5 has a chance of ~3e-4. Twelve of them is
    shilling (chance < 1e-6), even diluted by a genuine rating (the old share rule missed that)."""
    feed = [float(v) for v in np.random.default_rng(4).choice([1, 2, 3, 4, 5], 500, p=[.06, .11, .27, .34, .22])]
    base = [_ie(i, f"old{i}", T0 + i * DAY // 2, "rating", rating=3.5, first=T0 - 30 * DAY) for i in range(6)]
    start = T0 + 10 * DAY
    five = [_ie(100 + i, f"new{i}", start + i * H, "rating", rating=5.0) for i in range(5)]
    assert _op_run(_feed_op(feed), base + five) == []
    ten = [_ie(100 + i, f"new{i}", start + i * H, "rating", rating=5.0) for i in range(12)]
    other = [_ie(200, "old9", start + 30 * 60_000, "rating", rating=4.0, first=T0 - 30 * DAY)]
    diluted = base + sorted(ten + other, key=lambda e: e["ts"])
    item = [f for f in _op_run(_feed_op(feed), diluted) if f["subject_kind"] == "item"]
    assert [f["detector"] for f in item] == [SHILLING] and item[0]["evidence"]["chance"] < 1e-6
    assert item[0]["evidence"]["share"] < 1.0 and 0.15 < item[0]["evidence"]["expected_share"] < 0.3
    # the learned share of 5s on the feed decides: where most ratings are 5s, ten are no surprise
    loved = _feed_op([5.0] * 500)
    assert loved.rates.share(True, loved.conf.base_rates) > 0.9
    assert _op_run(loved, diluted) == []
    # the old share floor is still there for who wants it
    assert _op_run(_feed_op(feed, shill_min_share=0.95), diluted) == []


def test_item_operator_bad_input_and_corrupt_state() -> None:
    op = ItemOperator(conf_with(), "v")
    for bad in (None, {}, {**_ie(0, "u", T0), "user_key": "not-hex"}, {**_ie(0, "u", T0), "ts": "x"},
                {**_ie(0, "u", T0, "rating")}, {**_ie(0, "u", T0), "quarantined": "yes"}):  # fmt: skip
        r = op.step(b"keep", bad)
        assert r.state == b"keep" and r.dead_letters[0]["reason"] == "operator_bad_input"
    r = op.step(b"\x01corrupt", _ie(0, "u", T0))
    assert r.state_reset and decode_item(r.state or b"").n_events == 1
