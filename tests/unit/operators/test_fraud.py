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
    # from the flag on, the user's events no longer feed the item operator
    i = [r.fraud_flags != [] for r in res].index(True)
    assert all(r.item_events for r in res[:i]) and not any(r.item_events for r in res[i:])
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


def test_rating_anomaly(make_op: Callable[..., Any], artifact: Any) -> None:
    its = _items(artifact, 30)
    op = make_op(user_fraud={"rating_min": 8})
    shill = [ev(i, its[i], T0 + i * 20_000, "rating", rating=5.0 if i % 5 else 1.0) for i in range(9)]
    flags, _ = _run(op, shill)
    assert [f["detector"] for f in flags] == [fraud.RATING] and flags[0]["evidence"]["extreme"] == 8
    honest = [ev(i, its[i], T0 + i * 20_000, "rating", rating=[3.0, 4.0, 5.0, 2.5][i % 4]) for i in range(12)]
    assert _run(op, honest)[0] == []
    # cooldown: one flag per detector per user per cooldown
    more = shill + [ev(100 + i, its[i], T0 + 200_000 + i * 20_000, "rating", rating=5.0) for i in range(5)]
    assert len(_run(op, more)[0]) == 1


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
    uf = {"surprise_min_events": 5, "velocity_max_events": 10**6, "regular_min_gaps": 1000}
    strict = make_op(user_fraud={**uf, "surprise_factor": 0.01})  # any real sequence is "surprising"
    lax = make_op(user_fraud={**uf, "surprise_factor": 100.0})
    flags = _run(strict, events)[0]
    assert [f["detector"] for f in flags] == [fraud.SURPRISE]
    assert flags[0]["evidence"]["transitions"] >= 5
    assert _run(lax, events)[0] == []


def _key(user: str) -> str:
    return hashlib.sha256(user.encode()).hexdigest()


def _ie(i: int, user: str, ts: int, etype: str = "click", item: str = "target", rating: float | None = None,
        first: int | None = None) -> dict[str, Any]:  # fmt: skip
    return {"kind": "item_event", "item_id": item, "user_key": _key(user), "key_id": "k", "event_id": f"x{i}",
            "event_type": etype, "ts": ts, "rating": rating, "account_first_ts": ts if first is None else first,
            "account_events": 1}  # fmt: skip


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
    base = [_ie(i, f"old{i}", T0 + i * DAY // 2, "rating", rating=float(rng.choice([3.0, 3.5, 4.0])),
                first=T0 - 30 * DAY) for i in range(20)]  # fmt: skip
    start = T0 + 10 * DAY
    for value, direction in ((5.0, "push"), (1.0, "nuke")):
        attack = [_ie(100 + i, f"shill{i}", start + i * 600_000, "rating", rating=value) for i in range(7)]
        flags = _item_run(base + attack)
        item = [f for f in flags if f["detector"] == SHILLING]
        assert len(item) == 1 and item[0]["evidence"]["direction"] == direction
        assert {f["subject"] for f in flags if f["detector"] == SHILL_MEMBER} == {_key(f"shill{i}") for i in range(7)}
    # extreme ratings in line with an item's established mean (a loved item) are not shilling
    loved = [_ie(i, f"old{i}", T0 + i * DAY // 2, "rating", rating=5.0, first=T0 - 30 * DAY) for i in range(20)]
    fans = [_ie(100 + i, f"fan{i}", start + i * 600_000, "rating", rating=5.0) for i in range(7)]
    assert _item_run(loved + fans) == []


def test_item_operator_bad_input_and_corrupt_state() -> None:
    op = ItemOperator(conf_with(), "v")
    for bad in (None, {}, {**_ie(0, "u", T0), "user_key": "not-hex"}, {**_ie(0, "u", T0), "ts": "x"},
                {**_ie(0, "u", T0, "rating")}):  # fmt: skip
        r = op.step(b"keep", bad)
        assert r.state == b"keep" and r.dead_letters[0]["reason"] == "operator_bad_input"
    r = op.step(b"\x01corrupt", _ie(0, "u", T0))
    assert r.state_reset and decode_item(r.state or b"").n_events == 1
