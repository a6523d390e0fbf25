"""The feed's base rates (learning, decay, restore, batch-invariance) and the detectors' alarm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from operators import fraud
from operators.baserates import ALARM_KIND, RatesError, RatingRates, ShardRates, decode_rates, encode_rates
from operators.batch import to_json, user_events
from operators.config import AlarmConf, BaseRatesConf, UserFraudConf
from tests.unit.operators.conftest import T0, ev

H = 3_600_000
DAY = 24 * H
BR = BaseRatesConf(half_life_ms=DAY, prior_events=10.0, engagement_share_prior=0.0, top_share_prior=0.225,
                   bottom_share_prior=0.075)  # fmt: skip


def _feed(r: ShardRates, kinds: list[str], t0: int, gap: int = 1000) -> None:
    for i, k in enumerate(kinds):
        r.observe(k, t0 + i * gap, BR)


def test_rates_learn_the_feed_from_their_prior() -> None:
    r = ShardRates()
    assert r.view(BR).engagement_share == 0.0
    _feed(r, ["view"] * 90, T0)
    v = r.view(BR)
    assert v.engagement_share == pytest.approx(90 / 100, rel=1e-3) and v.seen == 90  # 10 prior events at 0
    _feed(r, ["rating"] * 90, T0 + 90_000)
    v = r.view(BR)
    assert 0.45 < v.engagement_share < 0.5  # half of the events (and the prior) are views
    # the item shards' rating base rate: the same prior-then-feed learning, top and bottom shares apart
    rr = RatingRates()
    assert rr.share(True, BR) == pytest.approx(0.225) and rr.share(False, BR) == pytest.approx(0.075)
    for i in range(90):
        rr.observe(5.0, T0 + i * 1000, BR, 1.0, 5.0)  # every rating a 5
    assert rr.share(True, BR) == pytest.approx((90 + 2.25) / 100, rel=1e-3)
    assert rr.share(False, BR) == pytest.approx(0.75 / 100, rel=1e-3)


def test_rates_decay_with_event_time() -> None:
    r = ShardRates()
    _feed(r, ["view"] * 100, T0)
    _feed(r, ["rating"] * 100, T0 + 10 * DAY)  # ten half-lives later: the views weigh ~1/1000
    assert r.view(BR).engagement_share < 0.01
    e = r.events
    late, newest = T0 + 8 * DAY, r.last_ts
    r.observe("view", late, BR)  # a late event counts with its age's weight (~2 half-lives: 1/4)
    assert r.events == pytest.approx(e + 0.5 ** ((newest - late) / DAY), rel=1e-9) and r.last_ts == newest


def test_rates_restore_from_bytes() -> None:
    r = ShardRates()
    _feed(r, ["view", "rating", "click"] * 20, T0)
    flags = [{"subject_kind": "user", "detector": fraud.VELOCITY}]
    r.settle(fraud.USER_DETECTORS, T0, True, flags, AlarmConf(min_active=0, max_share=0.0), "v")
    back = decode_rates(encode_rates(r))
    assert back == r and encode_rates(back) == encode_rates(r)
    assert decode_rates(None) == ShardRates()
    for bad in (b"", b"\x09" + encode_rates(r)[1:], encode_rates(r)[:-3]):
        with pytest.raises(RatesError):
            decode_rates(bad)


def _ratings_only_feed_with_engaged_rule(make_op: Callable[..., Any], artifact: Any) -> tuple[Any, list[Any]]:
    """An operator whose unverified rule judges (engagement prior 1, as a misconfigured platform would assume) on a
    ratings-only feed: every account rating 5 films is flagged. 80 accounts, interleaved."""
    op = make_op(base_rates={"engagement_share_prior": 1.0, "prior_events": 1e9},
                 alarm={"min_active": 20, "max_share": 0.3, "window_ms": DAY})  # fmt: skip
    its = [artifact.item_id(int(i)) for i in artifact.popular[:10]]
    events = [ev(u * 10 + k, its[k], T0 + (u * 6 + k) * 30_000, "rating", user=f"m{u}", rating=4.0)
              for u in range(80) for k in range(6)]  # fmt: skip
    return op, events


def _stream(op: Any, events: list[Any]) -> list[dict[str, Any]]:
    """The operator over the events one at a time, each user's state threaded: the outputs' flags."""
    states: dict[str, bytes | None] = {}
    out = []
    for e in events:
        r = op.step(states.get(e.user_id), e)
        states[e.user_id] = r.state
        out += r.fraud_flags
    return out


def test_alarm_withholds_a_miscalibrated_detectors_flags(make_op: Callable[..., Any], artifact: Any) -> None:
    op, events = _ratings_only_feed_with_engaged_rule(make_op, artifact)
    out = _stream(op, events)
    alarms = [f for f in out if f["kind"] == ALARM_KIND]
    flags = [f for f in out if f["kind"] != ALARM_KIND]
    assert len(alarms) == 1 and alarms[0]["detector"] == fraud.RATING and alarms[0]["subject_kind"] == "detector"
    ev_ = alarms[0]["evidence"]
    assert ev_["flagged_share"] > 0.3 and ev_["active_accounts"] >= 20
    # flags until the share passed the limit (the alarm came with the flag that passed it), none after
    assert 5 <= len(flags) <= 21 and flags[-1]["event_ts"] <= alarms[0]["event_ts"]
    d = fraud.USER_DETECTORS.index(fraud.RATING)
    assert op.rates.withheld[d] == 80 - len(flags) and op.rates.alarm_since[d]
    # the same stream with the alarm off floods the topic: one flag per account
    off, _ = _ratings_only_feed_with_engaged_rule(make_op, artifact)
    off.conf = replace(off.conf, alarm=replace(off.conf.alarm, max_share=0.0))
    assert len(_stream(off, events)) == 80


def test_alarm_clears_when_the_share_falls(make_op: Callable[..., Any], artifact: Any) -> None:
    r = ShardRates()
    conf = AlarmConf(window_ms=H, max_share=0.3, min_active=5, cooldown_ms=DAY)
    flag = [{"subject_kind": "user", "detector": fraud.VELOCITY, "kind": "fraud_flag"}]
    raised = [f for i in range(10) for f in r.settle(fraud.USER_DETECTORS, T0 + i, True, list(flag), conf, "v")]
    assert [f["kind"] for f in raised].count(ALARM_KIND) == 1 and r.alarm_since[0]
    # a quiet day later, genuine accounts active and no flags: the alarm clears and flags pass again
    for i in range(40):
        r.settle(fraud.USER_DETECTORS, T0 + 10 * H + i, True, [], conf, "v")
    assert r.alarm_since[0] == 0
    assert r.settle(fraud.USER_DETECTORS, T0 + 11 * H, True, list(flag), conf, "v") == flag


class _Value:
    def __init__(self) -> None:
        self.v: bytes | None = None

    def value(self) -> bytes | None:
        return self.v

    def update(self, value: bytes | None) -> None:
        self.v = value


class _Store(dict[str, bytes]):
    def put(self, k: str, v: bytes) -> None:
        self[k] = v

    def remove(self, k: str) -> None:
        self.pop(k, None)


def test_flags_and_rates_do_not_depend_on_how_the_stream_is_batched(
    make_op: Callable[..., Any], artifact: Any
) -> None:
    """The job's batches (any cut) and the replay's event-by-event calls give the same flags, alarm and rates: each
    event is judged on the rates before it, and the alarm sees the results in arrival order."""
    op, events = _ratings_only_feed_with_engaged_rule(make_op, artifact)
    raw = [e.to_json().encode() for e in events]
    ref_op, _ = _ratings_only_feed_with_engaged_rule(make_op, artifact)
    ref = _stream(ref_op, events)
    assert any(f["kind"] == ALARM_KIND for f in ref)  # the alarm is part of what must not depend on the cut
    for cut in (1, 7, 64, len(raw)):
        value, store = _Value(), _Store()
        got, alarms = [], 0
        for i in range(0, len(raw), cut):
            out = user_events(op, store, raw[i : i + cut], "test", rates=value)
            got += out.fraud_flags
            alarms += out.alarms  # the job's detector_alarms metric
        assert got == [to_json(f) for f in ref], cut
        assert alarms == 1, cut
        assert decode_rates(value.v) == ref_op.rates, cut


def test_surprise_threshold_is_learned_from_the_feed() -> None:
    uf = UserFraudConf(surprise_factor=1.3, surprise_warmup=20, surprise_spread=4.0, surprise_min_factor=0.9)
    br = BaseRatesConf(surprise_memory=1000.0)
    r = ShardRates()
    for i in range(19):  # genuine accounts of a sharp model: ratios 0.70-0.88
        assert r.surprise_threshold(uf) == (1.3, False)  # the configured factor until warm
        r.add_ratio(0.70 + (i % 10) * 0.02, br)
    r.add_ratio(0.79, br)
    assert not r.surprise_threshold(uf)[1]  # 20 judgements, aged (memory 1000): 19.8 remembered
    r.add_ratio(0.79, br)
    thr, learned = r.surprise_threshold(uf)
    q25, q50 = r._quantile(0.25), r._quantile(0.5)
    assert learned and 0.74 < q25 < q50 < 0.81 and thr == pytest.approx(q50 + 4 * (q50 - q25))
    assert 0.95 <= thr < 1.3  # far above these accounts, below the cold factor
    # a flat model's feed sits near 1: the learned factor follows it up, never below the floor
    flat = ShardRates()
    for i in range(100):
        flat.add_ratio(0.95 + (i % 10) * 0.01, br)
    assert flat.surprise_threshold(uf)[0] > thr
    tight = ShardRates()
    for _ in range(100):
        tight.add_ratio(0.5, br)
    assert tight.surprise_threshold(uf)[0] == 0.9  # the floor (default 1: no account better than a uniform guess)
    # a tenth of the judged sequences from attackers (ratio 1.15) barely moves the lower half: they stay above
    mixed = decode_rates(encode_rates(r))
    for i in range(200):
        mixed.add_ratio(1.15 if i % 10 == 0 else 0.70 + (i % 10) * 0.02, br)
    assert abs(mixed.surprise_threshold(uf)[0] - thr) < 0.06 and mixed.surprise_threshold(uf)[0] < 1.1
    # memory: old judgements fade (counts, not time)
    old = ShardRates()
    for _ in range(3000):
        old.add_ratio(0.6, br)
    for _ in range(3000):
        old.add_ratio(0.9, br)
    assert old._quantile(0.5) > 0.85 and old.judged == pytest.approx(1000.0, rel=0.1)


def test_surprise_judgements_do_not_depend_on_the_batches(artifact: Any, scorer: Any, pseud: Any,
                                                         sim_dir: Any) -> None:  # fmt: skip
    """With a learned surprise threshold that moves with every judgement (and flags some), `step_many` over any cut
    gives the very flags (thresholds included) and rates of `step` one event at a time: judgements are answered in
    arrival order across a call's users."""
    from operators.user import UserOperator
    from tests.unit.operators.conftest import conf_with
    from tests.unit.operators.test_step_many import _run, _stream

    uf = {"surprise_every": 3, "surprise_min_events": 5, "surprise_warmup": 10, "surprise_spread": 0.5,
          "surprise_min_factor": 0.0, "cooldown_ms": 1}  # fmt: skip
    events = _stream(sim_dir)
    for batch in (7, 64, 10_000):  # (debounce timers fire after each batch: one-by-one runs with the same batches)
        ref_op = UserOperator(artifact, conf_with(user_fraud=uf), pseud, scorer)
        ref, _ = _run(ref_op, events, batch, False)
        flags = [f for r in ref for f in r.fraud_flags if f["detector"] == fraud.SURPRISE]
        learned = [f for f in flags if f["evidence"]["learned"]]
        assert len(learned) >= 10 and len({f["evidence"]["threshold"] for f in learned}) >= 5  # moving, flagging
        op = UserOperator(artifact, conf_with(user_fraud=uf), pseud, scorer)
        got, _ = _run(op, events, batch, True)
        assert [r.fraud_flags for r in got] == [r.fraud_flags for r in ref], batch
        assert op.rates == ref_op.rates, batch
