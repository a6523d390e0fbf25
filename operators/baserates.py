"""Base rates the user detectors judge against, learned from the stream, and the detectors' alarm.

A detector threshold that fits one platform condemns another: "a rating with no view or purchase before it is
unverified" is a sound signal where ratings follow purchases and flags every account of a ratings-only feed. So the
user operator learns what the feed itself looks like and lets configuration give priors and floors, not switches.

`ShardRates` is kept per user shard (the job's keyed state of one shard; `streamrec replay` keeps one per shard too,
with the job's shard function, so replay = job). It has two parts:

- Feed rates, exponentially decayed in event time (`base_rates.half_life_ms`): events and engagement events (view,
  click, cart, purchase). They are updated in a pre-pass over a batch's events in arrival order
  (`observe`), and each event is judged on the rates as they stood just before it (`view`), so a detection depends
  on the shard's events in order and never on how the job cut them into batches. The rates start from a prior of
  `base_rates.prior_events` pseudo-events (`engagement_share_prior`).
- The alarm (`settle`, a post-pass over the batch's results in arrival order): per user detector, the accounts it
  flagged and the accounts active, both decayed over `alarm.window_ms`. When a detector flags more than
  `alarm.max_share` of the active accounts (once `alarm.min_active` are active) it is miscalibrated for this feed,
  not witnessing an invasion: one `detector_alarm` record says so (detector, share, counts) and the detector's user
  flags are withheld (counted) until its share falls below half the limit. Group detections (shilling and farm
  members, raised by the item operator with their item) are not judged here.

- The surprise detector's base rate (`surprise_threshold`, `add_ratio`): a histogram of the ratios (mean log P(next
  item) over log(1/n_items)) of the sequences it judged, in arrival order. A model's log-probs depend on the model and
  the feed: a sharp model on a focused catalogue puts genuine accounts at 0.7-0.9, a flat one near 1. Past
  `surprise_warmup` judgements an account is surprising when far above what this feed's accounts score.

Layout (little-endian, version 2): header `<BBqqdddqdH` version, n_detectors, last_ts, seen, events, engagement,
active, alarm_ts, judged, n_bins; then per detector `<dqqq` flagged (decayed), alarm_since (0 =
none), last_alarm_ts, withheld; then n_bins `<d` histogram weights.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from operators.config import AlarmConf, BaseRatesConf, UserFraudConf

VERSION = 2  # 1: also the shard's rating shares (never read; dropped)
_HEAD = struct.Struct("<BBqqdddqdH")
_DET = struct.Struct("<dqqq")
_BIN = struct.Struct("<d")
BIN_WIDTH = 0.025  # surprise ratio histogram: bins of this width from 0; the last bin holds everything above
N_BINS = 64  # [0, 1.6)
ENGAGEMENT = frozenset({"view", "click", "cart", "purchase"})
ALARM_KIND = "detector_alarm"


class RatesError(ValueError):
    """Bytes that are not a ShardRates this code can read."""


@dataclass(frozen=True, slots=True)
class RatesView:
    """The feed's rates as they stood before one event (priors blended in)."""

    engagement_share: float  # share of events that are views, clicks, carts, purchases
    seen: int  # events the shard had seen


@dataclass
class ShardRates:
    """One shard's feed rates and alarm state (see the module docstring)."""

    last_ts: int = 0  # newest event time the feed rates saw (their decay reference)
    seen: int = 0  # events seen, not decayed
    events: float = 0.0  # decayed counts as of last_ts
    engagement: float = 0.0
    active: float = 0.0  # accounts that became active (first event after a quiet window), decayed
    alarm_ts: int = 0  # newest event time the alarm counts saw (their decay reference)
    judged: float = 0.0  # surprise judgements remembered (aged: see `add_ratio`)
    flagged: list[float] = field(default_factory=list)  # per detector: accounts flagged, decayed
    alarm_since: list[int] = field(default_factory=list)  # per detector: alarm raised at (0: none)
    last_alarm: list[int] = field(default_factory=list)  # per detector: last alarm record's time
    withheld: list[int] = field(default_factory=list)  # per detector: flags withheld while alarmed
    ratios: list[float] = field(default_factory=list)  # surprise ratios judged: histogram (N_BINS, aged weights)

    def ensure(self, n: int) -> None:
        for lst, zero in ((self.flagged, 0.0), (self.alarm_since, 0), (self.last_alarm, 0), (self.withheld, 0)):
            lst.extend([zero] * (n - len(lst)))  # type: ignore[list-item]

    # ------------------------------------------------------------------ feed rates

    def view(self, conf: BaseRatesConf) -> RatesView:
        w = max(conf.prior_events, 0.0)
        eng = (self.engagement + conf.engagement_share_prior * w) / max(self.events + w, 1e-9)
        return RatesView(eng, self.seen)

    def observe(self, event_type: str, ts: int, conf: BaseRatesConf) -> None:
        """One event of the shard, in arrival order (a late event counts with its age's weight)."""
        hl = max(conf.half_life_ms, 1)
        if ts > self.last_ts:
            if self.last_ts:
                f = 0.5 ** ((ts - self.last_ts) / hl)
                self.events *= f
                self.engagement *= f
            self.last_ts = ts
        wt = 0.5 ** ((self.last_ts - ts) / hl)
        self.seen += 1
        self.events += wt
        if event_type in ENGAGEMENT:
            self.engagement += wt

    # ------------------------------------------------------------------ surprise base rate

    def surprise_threshold(self, uf: UserFraudConf) -> tuple[float, bool]:
        """The ratio past which an account's sequence is surprising on this feed, and whether it is learned: until
        `surprise_warmup` judgements, the configured `surprise_factor`; then the median ratio of the accounts judged
        plus `surprise_spread` times the distance from the 1st quartile to the median, never below
        `surprise_min_factor`. The lower half of the distribution: attackers' sequences sit above the genuine ones,
        so a minority of them moves the median a little and the lower quartile less (a tenth of attackers: ~+0.03
        on ML-100K), where an upper quantile would climb to them."""
        if self.judged < max(uf.surprise_warmup, 1) or not self.ratios:
            return uf.surprise_factor, False
        q25, q50 = self._quantile(0.25), self._quantile(0.5)
        return max(uf.surprise_min_factor, q50 + uf.surprise_spread * (q50 - q25)), True

    def _quantile(self, f: float) -> float:
        total = sum(self.ratios)
        want, cum = f * total, 0.0
        for b, w in enumerate(self.ratios):
            if w > 0 and cum + w >= want:
                return (b + (want - cum) / w) * BIN_WIDTH
            cum += w
        return len(self.ratios) * BIN_WIDTH

    def add_ratio(self, ratio: float, br: BaseRatesConf) -> None:
        """One judgement's ratio, after it was judged. Older ones fade: each new one scales the others by
        1 - 1/surprise_memory (counts, not time: a sparse feed keeps its base rate)."""
        if len(self.ratios) != N_BINS:
            self.ratios = [0.0] * N_BINS
        keep = 1.0 - 1.0 / max(br.surprise_memory, 1.0)
        self.ratios = [w * keep for w in self.ratios]
        b = min(max(int(ratio / BIN_WIDTH), 0), N_BINS - 1) if ratio == ratio else N_BINS - 1  # NaN: the top bin
        self.ratios[b] += 1.0
        self.judged = self.judged * keep + 1.0

    # ------------------------------------------------------------------ alarm

    def settle(self, detectors: tuple[str, ...], ts: int, activated: bool, flags: list[dict[str, Any]],
               alarm: AlarmConf, model_version: str) -> list[dict[str, Any]]:  # fmt: skip
        """One event's result, in arrival order: count the account if it became active and its user flags; return
        the flags to emit (a miscalibrated detector's withheld) followed by any alarm record this event raised."""
        self.ensure(len(detectors))
        win = max(alarm.window_ms, 1)
        if ts > self.alarm_ts:
            if self.alarm_ts:
                g = 0.5 ** ((ts - self.alarm_ts) / win)
                self.active *= g
                self.flagged = [x * g for x in self.flagged]
            self.alarm_ts = ts
        wt = 0.5 ** ((self.alarm_ts - ts) / win)  # a late event counts with its age's weight
        if activated:
            self.active += wt
        if not flags and not any(self.alarm_since):
            return flags
        out: list[dict[str, Any]] = []
        raised: list[dict[str, Any]] = []
        for f in flags:
            det = f.get("detector")
            if f.get("subject_kind") != "user" or det not in detectors:
                out.append(f)
                continue
            d = detectors.index(det)
            self.flagged[d] += wt
            if self.alarm_since[d]:
                self.withheld[d] += 1
            else:
                out.append(f)
        for d, det in enumerate(detectors):
            share = self.flagged[d] / max(self.active, 1.0)
            if self.alarm_since[d]:
                if share < alarm.max_share / 2:
                    self.alarm_since[d] = 0
                continue
            if alarm.max_share <= 0 or self.active < alarm.min_active or share <= alarm.max_share:
                continue
            self.alarm_since[d] = ts
            if self.last_alarm[d] and ts - self.last_alarm[d] < alarm.cooldown_ms:
                continue
            self.last_alarm[d] = ts
            raised.append(alarm_record(det, ts, share, self, d, alarm, model_version))
        return out + raised


def alarm_record(detector: str, ts: int, share: float, r: ShardRates, d: int, alarm: AlarmConf,
                 model_version: str) -> dict[str, Any]:  # fmt: skip
    """A `detector_alarm` for the fraud topic (and the fraud_flags table, subject_kind 'detector')."""
    key = "\x00".join((ALARM_KIND, detector, str(ts), f"{r.active:.6f}"))
    return {
        "kind": ALARM_KIND, "flag_id": hashlib.sha256(key.encode()).hexdigest()[:32], "subject_kind": "detector",
        "subject": detector, "detector": detector, "score": round(min(share, 1.0), 4), "reasons": [ALARM_KIND],
        "evidence": {"flagged_share": round(share, 4), "flagged_accounts": round(r.flagged[d], 2),
                     "active_accounts": round(r.active, 2), "max_share": alarm.max_share,
                     "window_ms": alarm.window_ms, "withheld_so_far": r.withheld[d]},
        "model_version": model_version, "event_id": None, "event_ts": ts,
    }  # fmt: skip


def encode_rates(r: ShardRates) -> bytes:
    n = len(r.flagged)
    r.ensure(n)
    parts = [_HEAD.pack(VERSION, n, r.last_ts, r.seen, r.events, r.engagement, r.active, r.alarm_ts, r.judged,
                        len(r.ratios))]
    parts += [_DET.pack(r.flagged[d], r.alarm_since[d], r.last_alarm[d], r.withheld[d]) for d in range(n)]
    parts += [_BIN.pack(w) for w in r.ratios]
    return b"".join(parts)


def decode_rates(data: bytes | None) -> ShardRates:
    """The rates in `data`; None gives fresh ones. Raises RatesError on bytes this code cannot read."""
    if data is None:
        return ShardRates()
    try:
        version, n, last_ts, seen, events, eng, active, alarm_ts, judged, nb = _HEAD.unpack_from(data, 0)
        if version != VERSION or len(data) != _HEAD.size + n * _DET.size + nb * _BIN.size:
            raise RatesError(f"shard rates: version {version}, {len(data)} bytes for {n} detectors, {nb} bins")
        dets = [_DET.unpack_from(data, _HEAD.size + d * _DET.size) for d in range(n)]
        off = _HEAD.size + n * _DET.size
        bins = [_BIN.unpack_from(data, off + b * _BIN.size)[0] for b in range(nb)]
    except struct.error as e:
        raise RatesError(f"shard rates: {e}") from e
    return ShardRates(last_ts, seen, events, eng, active, alarm_ts, judged, [x[0] for x in dets],
                      [x[1] for x in dets], [x[2] for x in dets], [x[3] for x in dets], bins)  # fmt: skip


@dataclass
class RatingRates:
    """One item shard's rating-value base rate: the share of ratings at the scale's top and bottom, decayed in event
    time (`base_rates.half_life_ms`), from accounts no detector has flagged. The item operator updates it in event-time
    order (so it does not depend on how events were batched) and blends it into each item's own share as a prior
    (`item_fraud.shill_prior_weight`)."""

    last_ts: int = 0
    ratings: float = 0.0
    high: float = 0.0
    low: float = 0.0

    def observe(self, rating: float, ts: int, conf: BaseRatesConf, low: float, high: float) -> None:
        hl = max(conf.half_life_ms, 1)
        if ts > self.last_ts:
            if self.last_ts:
                f = 0.5 ** ((ts - self.last_ts) / hl)
                self.ratings *= f
                self.high *= f
                self.low *= f
            self.last_ts = ts
        wt = 0.5 ** ((self.last_ts - ts) / hl)
        self.ratings += wt
        if rating >= high:
            self.high += wt
        elif rating <= low:
            self.low += wt

    def share(self, top: bool, conf: BaseRatesConf) -> float:
        """The share of ratings at the top (else the bottom), the prior (`top_share_prior`, `bottom_share_prior`)
        weighing `prior_events` ratings."""
        w = max(conf.prior_events, 0.0)
        prior = conf.top_share_prior if top else conf.bottom_share_prior
        return ((self.high if top else self.low) + prior * w) / max(self.ratings + w, 1e-9)


_RR = struct.Struct("<Bqddd")


def encode_rating_rates(r: RatingRates) -> bytes:
    return _RR.pack(VERSION, r.last_ts, r.ratings, r.high, r.low)


def decode_rating_rates(data: bytes | None) -> RatingRates:
    """The rates in `data`; None gives fresh ones. Raises RatesError on bytes this code cannot read."""
    if data is None:
        return RatingRates()
    if len(data) != _RR.size or data[0] != VERSION:
        raise RatesError(f"rating rates: {len(data)} bytes")
    _, last_ts, n, hi, lo = _RR.unpack(data)
    return RatingRates(last_ts, n, hi, lo)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the chance that k of n ratings are extreme if each is with probability p."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    lp, lq, ln1 = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    terms = [ln1 - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq for j in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))
