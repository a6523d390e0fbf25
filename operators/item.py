"""The per-item operator (keyed by item_id): shilling and click-farm detection against the item's own baseline.

Fed by the user operator's `item_events`. An attack shows up here, not per user: many suspect accounts (young, or
already flagged by a user-level detector) hitting one item with repeated clicks or extreme ratings, far above what
the item usually gets. When an item is flagged, the accounts behind the burst are flagged too (`*_member`, one
flag per account and item), and so are accounts that join while the burst still meets the detector's conditions.
Events of flagged (quarantined) users count as evidence but never feed the item's baselines or trending rate.

State layout (little-endian, version 2; version 1, without the two extreme counts, is read as zeros there):
  header `<BBqqIdddddd2q` version, flags, first_ts, last_ts, n_events, decayed clicks, decayed settled
                         ratings (count), their decayed sum, decayed events, decayed settled ratings at the scale's
                         top and at its bottom, last flag ts (farm, shilling)
  counts `<HHB`         n_clicks, n_ratings, len(key_id)
  clicks  n x (32-byte user key, u32 age ms, u8 bits: 1 young, 2 member-flagged, 4 quarantined, 8 unverified),
          oldest first
  ratings n x (32-byte user key, u32 age ms, u8 bits, u8 rating in half steps), oldest first
  key_id  utf-8
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from operators import fraud
from operators.baserates import RatingRates, binomial_tail
from operators.config import ItemFraudConf, OperatorsConf
from operators.dead_letter import OPERATOR_BAD_INPUT, OPERATOR_ERROR, operator_dead_letter
from operators.schema import EVENT_TYPES
from operators.state import settle_via

SOURCE = "item_operator"
VERSION = 2
CLICK_FARM = "click_farm"
SHILLING = "shilling"
FARM_MEMBER = "click_farm_member"
SHILL_MEMBER = "shilling_member"
_HEADER = struct.Struct("<BBqqIdddddd2q")
_HEADER_V1 = struct.Struct("<BBqqIdddd2q")
_COUNTS = struct.Struct("<HHB")
_CLICK = struct.Struct("<32sIB")
_RATING = struct.Struct("<32sIBB")
_U32_MAX = 2**32 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
YOUNG, MEMBER, QUARANTINED, UNVERIFIED = 1, 2, 4, 8
SUSPECT = YOUNG | QUARANTINED  # accounts whose clicks and ratings can make up a farm or campaign


class ItemStateError(ValueError):
    """Unreadable item state (corrupt, truncated, other version)."""


@dataclass
class ItemState:
    first_ts: int = 0
    last_ts: int = 0
    n_events: int = 0
    base_clicks: float = 0.0  # clicks of unflagged accounts, exponentially decayed to last_ts
    base_r_n: float = 0.0  # settled ratings of unflagged accounts (older than the shilling window), decayed
    base_r_sum: float = 0.0  # their sum, decayed
    base_events: float = 0.0  # all events, decayed (trending rate)
    base_r_hi: float = 0.0  # settled ratings >= rating_high, decayed (the item's own share of extreme ratings)
    base_r_lo: float = 0.0  # settled ratings <= rating_low, decayed
    flag_last: list[int] = field(default_factory=lambda: [0, 0])  # farm, shilling
    clicks: list[list[Any]] = field(default_factory=list)  # [key bytes, ts, bits]
    ratings: list[list[Any]] = field(default_factory=list)  # [key bytes, ts, bits, rating]
    key_id: str = ""

    def copy(self) -> ItemState:
        """An independent copy: new lists of the same entries. Nothing changes an entry in place (the detectors
        replace the entries they mark, `ItemOperator._flag`), so the entries can be shared: copying each one made
        the copy cost grow with the item's recent events, for every event of a busy item in a batch."""
        return ItemState(self.first_ts, self.last_ts, self.n_events, self.base_clicks, self.base_r_n, self.base_r_sum,
                         self.base_events, self.base_r_hi, self.base_r_lo, self.flag_last.copy(),
                         self.clicks.copy(), self.ratings.copy(), self.key_id)  # fmt: skip


def encode_item(s: ItemState) -> bytes:
    kid = s.key_id.encode("utf-8")[:255]
    parts = [
        _HEADER.pack(VERSION, 0, s.first_ts, s.last_ts, min(s.n_events, _U32_MAX), s.base_clicks, s.base_r_n,
                     s.base_r_sum, s.base_events, s.base_r_hi, s.base_r_lo, *s.flag_last),
        _COUNTS.pack(min(len(s.clicks), 65535), min(len(s.ratings), 65535), len(kid)),
    ]  # fmt: skip
    last = s.last_ts
    pc, pr = _CLICK.pack, _RATING.pack
    parts += [pc(k, max(0, min(last - t, _U32_MAX)), b) for k, t, b in s.clicks[-65535:]]
    parts += [pr(k, max(0, min(last - t, _U32_MAX)), b, int(round(r * 2))) for k, t, b, r in s.ratings[-65535:]]
    parts.append(kid)
    return b"".join(parts)


def decode_item(data: bytes) -> ItemState:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ItemStateError(f"state must be bytes, got {type(data).__name__}")
    b = bytes(data)
    head = {VERSION: _HEADER, 1: _HEADER_V1}.get(b[0]) if b else None
    if head is None or len(b) < head.size + _COUNTS.size:
        raise ItemStateError("not an item state of this version")
    h = head.unpack_from(b, 0)
    if head is _HEADER_V1:  # version 1: no extreme-rating baselines yet
        h = (*h[:9], 0.0, 0.0, *h[9:])
    nc, nr, nk = _COUNTS.unpack_from(b, head.size)
    if len(b) != head.size + _COUNTS.size + nc * _CLICK.size + nr * _RATING.size + nk:
        raise ItemStateError("item state length does not match its counts")
    if not all(math.isfinite(x) for x in h[5:11]):
        raise ItemStateError("item state holds non-finite baselines")
    s = ItemState(h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10], [h[11], h[12]])
    off = head.size + _COUNTS.size
    last = s.last_ts
    end = off + nc * _CLICK.size
    s.clicks = [[k, last - a, bits] for k, a, bits in _CLICK.iter_unpack(b[off:end])]
    off, end = end, end + nr * _RATING.size
    s.ratings = [[k, last - a, bits, r / 2] for k, a, bits, r in _RATING.iter_unpack(b[off:end])]
    off = end
    try:
        s.key_id = b[off:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ItemStateError("item state key id is not UTF-8") from e
    return s


def settle_item(s: ItemState) -> ItemState | bytes:
    """The state the item's next event reads once `s` is stored: `decode_item(encode_item(s))`, or those bytes when
    they do not decode (the next event then starts afresh, as from the store). Raises what `encode_item` raises.

    Fast path (the states the operator builds): `s` itself, when the layout changes nothing but its header's
    clipped counts; anything else (an age past u32, a rating off the half steps, a key id cut...) goes through
    the bytes. Trusts the fields' declared types (32-byte keys, int times and bits, float ratings)."""
    return settle_via(s, _settle_item_fast, encode_item, decode_item, ItemStateError)


_HALF_STEPS = frozenset(h / 2 for h in range(256))  # the ratings the layout keeps as they are (u8 half steps)


def _settle_item_fast(s: ItemState) -> bool:
    """`settle_item`'s fast path: True once `s` holds `decode_item(encode_item(s))`'s values (header values set
    here); False, `s` untouched, when the layout would change anything else."""
    h = _HEADER.unpack(_HEADER.pack(VERSION, 0, s.first_ts, s.last_ts, min(s.n_events, _U32_MAX), s.base_clicks,
                                    s.base_r_n, s.base_r_sum, s.base_events, s.base_r_hi, s.base_r_lo,
                                    *s.flag_last))  # fmt: skip
    if not all(math.isfinite(x) for x in h[5:11]) or len(s.clicks) > 65535 or len(s.ratings) > 65535:
        return False
    if not (s.key_id.isascii() and len(s.key_id) <= 255):
        return False
    last = s.last_ts
    lo = last - _U32_MAX  # the oldest time an age can say
    for entries in (s.clicks, s.ratings):
        if entries and (min(map(_SECOND, entries)) < lo or max(map(_SECOND, entries)) > last):
            return False
    if s.ratings and not _HALF_STEPS.issuperset(map(_FOURTH, s.ratings)):
        return False
    s.first_ts, s.last_ts, s.n_events, s.base_clicks, s.base_r_n, s.base_r_sum, s.base_events = h[2:9]
    s.base_r_hi, s.base_r_lo = h[9], h[10]
    s.flag_last = [h[11], h[12]]
    return True


_SECOND, _FOURTH = itemgetter(1), itemgetter(3)


def _dropping(entries: list[list[Any]], after: int, most: int) -> bool:
    """Whether `[e for e in entries if e[1] > after][-most:]` would drop an entry (else it equals `entries`): one
    at or before `after`, or more than `most` (`[-0:]` keeps all; a negative `most` always answers True). Cheaper
    than the filter, which it saves for the usual event (nothing leaves the window)."""
    return bool(entries) and (most < 0 or 0 < most < len(entries) or min(map(_SECOND, entries)) <= after)


@dataclass(frozen=True)
class ItemStepResult:
    """What one item event did. `state` is the item's new state, bytes (None: none). Within `step_many`, an item's
    results but its last one hold their state decoded (`stored`: the state its next event went on from) and encode
    it when `state` is first read; the job reads only the final `states`."""

    stored: bytes | ItemState | None  # the new state: bytes, None or decoded (read it as `state`)
    fraud_flags: list[dict[str, Any]] = field(default_factory=list)  # item flags and member (user) flags
    trending: list[dict[str, Any]] = field(default_factory=list)  # periodic item rate records (optional)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)  # item events the operator refused
    state_reset: bool = False  # unreadable state replaced by a fresh one

    @property
    def state(self) -> bytes | None:
        """The new state's bytes (None: none)."""
        st = self.stored
        if isinstance(st, ItemState):
            st = encode_item(st)
            object.__setattr__(self, "stored", st)  # encoded once
        return st


def _check(ev: Any) -> str | None:
    """Why an item event is unusable, or None."""
    if not isinstance(ev, dict):
        return f"expected a dict, got {type(ev).__name__}"
    for k in ("item_id", "event_id", "key_id", "event_type"):
        if not isinstance(ev.get(k), str) or not ev[k]:
            return f"{k} must be a non-empty string"
    if not isinstance(ev.get("user_key"), str) or not _HEX64.fullmatch(ev["user_key"]):
        return "user_key must be a 64-hex HMAC pseudonym"
    if ev["event_type"] not in EVENT_TYPES:
        return "unknown event_type"
    for k in ("ts", "account_first_ts"):
        if not isinstance(ev.get(k), int) or isinstance(ev.get(k), bool) or not 0 <= ev[k] < 2**62:
            return f"{k} must be a non-negative integer"
    r = ev.get("rating")
    if r is not None and (isinstance(r, bool) or not isinstance(r, int | float) or not 0 < r <= 7.5):
        return "rating must be a number in (0, 7.5]"
    if ev["event_type"] == "rating" and r is None:
        return "a rating event needs a rating"
    for k in ("quarantined", "unverified"):
        if not isinstance(ev.get(k, False), bool):
            return f"{k} must be a boolean"
    return None


class ItemOperator:
    def __init__(self, conf: OperatorsConf, model_version: str = "") -> None:
        self.conf = conf
        self.c: ItemFraudConf = conf.item_fraud
        self.version = model_version
        self.rates = RatingRates()  # the feed's rating base rate for callers that keep none per shard
        self._rr = self.rates  # the rates of the call in progress

    def step(self, state: bytes | None, item_event: Any, rates: RatingRates | None = None) -> ItemStepResult:
        """One item event on its item's stored state. Never raises: bad input or a bug is a dead letter (state
        kept). `rates`: the item shard's rating base rate (default: the operator's own, one stream), updated."""
        self._rr = self.rates if rates is None else rates
        return self._step(state, item_event, last=True)

    def step_many(self, states: dict[str, bytes | None], events: Sequence[Any],
                  rates: RatingRates | None = None) -> list[ItemStepResult]:  # fmt: skip
        """`step` over a batch of item events in order, each item's state threaded through its events: the results
        `step` gives event by event. `states` maps item_id to its stored state before the batch (missing: None) and
        is updated in place to each item's final state. An event without a string item_id touches no state (its
        dead letter, as `step(None, event)` gives). An item's state is decoded once: between its events it stays
        decoded (`settle_item`), and it is encoded after its last one. `rates` as in `step`."""
        self._rr = self.rates if rates is None else rates
        last = {ev["item_id"]: i for i, ev in enumerate(events)
                if isinstance(ev, dict) and isinstance(ev.get("item_id"), str)}  # fmt: skip
        cur: dict[str, bytes | ItemState | None] = {}
        out = []
        for i, ev in enumerate(events):
            item = ev.get("item_id") if isinstance(ev, dict) else None
            if not isinstance(item, str):
                out.append(self._step(None, ev, last=True))
                continue
            res = self._step(cur[item] if item in cur else states.get(item), ev, last=last[item] == i)
            cur[item] = res.stored
            out.append(res)
        for item, st in cur.items():  # decoded: the item's last events changed nothing (dead letters)
            states[item] = encode_item(st) if isinstance(st, ItemState) else st
        return out

    def _step(self, state: bytes | ItemState | None, item_event: Any, last: bool) -> ItemStepResult:
        """One event on `state` (bytes, or decoded: left by the item's previous event of a `step_many`); the new
        state encoded if `last`, else settled for the item's next event."""
        keep = state if isinstance(state, bytes | ItemState) else None
        try:
            why = _check(item_event)
            if why is not None:
                return ItemStepResult(keep, dead_letters=[operator_dead_letter(OPERATOR_BAD_INPUT, why, SOURCE,
                                                                              item_event)])  # fmt: skip
            s, reset = self._load(state)
            flags, trending = self._apply(s, item_event)
            return ItemStepResult(encode_item(s) if last else settle_item(s), flags, trending, state_reset=reset)
        except Exception as e:  # noqa: BLE001 - keep the job alive; the record says why
            msg = f"{type(e).__name__}: {e}"
            return ItemStepResult(keep, dead_letters=[operator_dead_letter(OPERATOR_ERROR, msg, SOURCE, item_event)])

    @staticmethod
    def _load(state: bytes | ItemState | None) -> tuple[ItemState, bool]:
        """The state to work on (decoded, or a copy of the decoded one), or a fresh one (flag True) if unreadable."""
        if state is None:
            return ItemState(), False
        try:
            return (state.copy() if isinstance(state, ItemState) else decode_item(state)), False
        except ItemStateError:
            return ItemState(), True

    def _apply(self, s: ItemState, ev: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The event's changes to `s` (baselines, recent clicks and ratings, flags): its flags and trending records."""
        c = self.c
        ts = ev["ts"]
        if s.first_ts == 0:
            s.first_ts = ts
        if ts > s.last_ts:
            if s.last_ts:
                f = 0.5 ** ((ts - s.last_ts) / max(c.baseline_half_life_ms, 1))
                s.base_clicks *= f
                s.base_r_n *= f
                s.base_r_sum *= f
                s.base_r_hi *= f
                s.base_r_lo *= f
                s.base_events *= f
            s.last_ts = ts
        s.n_events += 1
        s.key_id = ev["key_id"]
        quarantined = ev.get("quarantined") is True
        w = 0.0 if quarantined else 0.5 ** ((s.last_ts - ts) / max(c.baseline_half_life_ms, 1))  # late: less
        s.base_events += w
        bits = YOUNG if ts - ev["account_first_ts"] < c.young_account_ms else 0
        if quarantined:
            bits |= QUARANTINED
        if ev.get("unverified") is True:
            bits |= UNVERIFIED
        key = bytes.fromhex(ev["user_key"])
        if ev["event_type"] == "click":
            s.base_clicks += w
            s.clicks.append([key, ts, bits])
        elif ev["event_type"] == "rating":
            s.ratings.append([key, ts, bits, float(ev["rating"])])
        if _dropping(s.clicks, s.last_ts - c.window_ms, c.max_recent):
            s.clicks = [e for e in s.clicks if e[1] > s.last_ts - c.window_ms][-c.max_recent :]
        # ratings leaving the window settle into the item's baseline mean: a burst is judged against what the
        # item got before it, never against itself
        keep = s.ratings
        if _dropping(s.ratings, s.last_ts - c.shill_window_ms, c.max_recent):
            keep = [e for e in s.ratings if e[1] > s.last_ts - c.shill_window_ms][-c.max_recent :]
        if len(keep) < len(s.ratings):
            kept = {id(e) for e in keep}
            for e in s.ratings:
                if id(e) not in kept and not e[2] & QUARANTINED:
                    wr = 0.5 ** ((s.last_ts - e[1]) / max(c.baseline_half_life_ms, 1))
                    s.base_r_n += wr
                    s.base_r_sum += wr * e[3]
                    if e[3] >= c.rating_high:
                        s.base_r_hi += wr
                    elif e[3] <= c.rating_low:
                        s.base_r_lo += wr
            s.ratings = keep

        flags: list[dict[str, Any]] = []
        if c.enabled:
            if ev["event_type"] == "click":
                flags += self._farm(s, ev)
            elif ev["event_type"] == "rating":
                flags += self._shilling(s, ev)
        if ev["event_type"] == "rating" and not quarantined:  # judged on the rates before it, then one of them
            self._rr.observe(float(ev["rating"]), ts, self.conf.base_rates, c.rating_low, c.rating_high)
        trending = []
        if c.trending_every > 0 and s.n_events % c.trending_every == 0:
            rate_h = s.base_events * math.log(2) / max(c.baseline_half_life_ms, 1) * 3_600_000
            trending.append({"kind": "trending", "item_id": ev["item_id"], "events_per_hour": round(rate_h, 4),
                             "event_id": ev["event_id"], "event_ts": ts, "model_version": self.version})  # fmt: skip
        return flags, trending

    # ------------------------------------------------------------------ detectors

    def _expected(self, decayed: float, window_ms: int) -> float:
        """Events the item's baseline rate predicts in a window (decayed count * ln2 / half-life = rate)."""
        return decayed * math.log(2) / max(self.c.baseline_half_life_ms, 1) * window_ms

    def _farm(self, s: ItemState, ev: dict[str, Any]) -> list[dict[str, Any]]:
        c = self.c
        per: dict[bytes, int] = {}
        for k, _, b in s.clicks:
            if b & SUSPECT:
                per[k] = per.get(k, 0) + 1
        n_acc, n_young = len(per), sum(per.values())
        if n_acc == 0:
            return []
        repeat = n_young / n_acc
        expected = self._expected(s.base_clicks, c.window_ms)
        burst = len(s.clicks) / max(expected, 1.0)
        ratios = (n_acc / max(c.farm_min_accounts, 1), repeat / c.farm_min_repeat, burst / c.baseline_ratio)
        r = min(ratios)
        if r < 1.0:
            return []
        evidence = {"suspect_accounts": n_acc, "suspect_clicks": n_young, "clicks_per_account": round(repeat, 2),
                    "window_clicks": len(s.clicks), "baseline_expected": round(expected, 3),
                    "window_ms": c.window_ms}  # fmt: skip
        members = {k for k, n in per.items() if n >= c.farm_member_min_clicks}
        return self._flag(s, ev, 0, CLICK_FARM, FARM_MEMBER, r, evidence, members, s.clicks)

    def _shilling(self, s: ItemState, ev: dict[str, Any]) -> list[dict[str, Any]]:
        c = self.c
        if not s.ratings:
            return []
        mean = (s.base_r_sum + c.rating_prior_mean * c.rating_prior_weight) / (s.base_r_n + c.rating_prior_weight)
        out: list[dict[str, Any]] = []
        for direction, hit in (("push", lambda x: x >= c.rating_high), ("nuke", lambda x: x <= c.rating_low)):
            hits = [(k, b) for k, _, b, r in s.ratings if b & SUSPECT and hit(r)]
            if not hits:
                continue
            accts = {k for k, _ in hits}
            unverified = {k for k, b in hits if b & UNVERIFIED}
            share = len(hits) / len(s.ratings)
            value = c.rating_high if direction == "push" else c.rating_low
            deviation = abs(value - mean)
            # a group of suspect accounts whose extreme ratings are unlikely for this item (the chance that so many of
            # the window's ratings are this value, each with the item's share of it before the window blended with
            # the feed's, learned: base_rates); or a smaller group rating what they never engaged with (unverified)
            top = direction == "push"
            own = s.base_r_hi if top else s.base_r_lo
            w = max(c.shill_prior_weight, 0.0)
            p = (own + w * self._rr.share(top, self.conf.base_rates)) / max(s.base_r_n + w, 1e-9)
            r_dev = deviation / c.shill_min_deviation
            r = min(len(accts) / max(c.shill_min_accounts, 1), r_dev)
            chance = 1.0
            if r >= 1.0 and c.shill_max_chance > 0:
                chance = binomial_tail(len(hits), len(s.ratings), p)
                r = min(r, math.log(max(chance, 1e-300)) / math.log(c.shill_max_chance))
            if c.shill_unverified_min_accounts > 0:
                r = max(r, min(len(unverified) / c.shill_unverified_min_accounts, r_dev))
            if c.shill_min_share > 0:
                r = min(r, share / c.shill_min_share)
            if r < 1.0:
                continue
            evidence = {"direction": direction, "suspect_accounts": len(accts), "unverified_accounts": len(unverified),
                        "extreme_ratings": len(hits), "window_ratings": len(s.ratings), "share": round(share, 3),
                        "expected_share": round(p, 4), "chance": float(f"{chance:.3g}"),
                        "baseline_mean": round(mean, 3), "window_ms": c.shill_window_ms}  # fmt: skip
            out += self._flag(s, ev, 1, SHILLING, SHILL_MEMBER, r, evidence, accts, s.ratings)
        return out

    def _flag(
        self, s: ItemState, ev: dict[str, Any], slot: int, detector: str, member_det: str, r: float,
        evidence: dict[str, Any], members: set[bytes], entries: list[list[Any]],
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The item flag (once per cooldown) and a flag per member account not flagged yet for this item."""
        c = self.c
        ts, item = ev["ts"], ev["item_id"]
        score = round(r / (1.0 + r), 4)
        out: list[dict[str, Any]] = []
        base = {"kind": "fraud_flag", "model_version": self.version, "event_id": ev["event_id"], "event_ts": ts}
        if not s.flag_last[slot] or ts - s.flag_last[slot] >= c.cooldown_ms:
            s.flag_last[slot] = ts
            out.append({**base, "flag_id": fraud.flag_id("item", item, detector, ev["event_id"]),
                        "subject_kind": "item", "subject": item, "item_id": item, "detector": detector,
                        "score": score, "reasons": [detector], "evidence": evidence})  # fmt: skip
        flagged = {e[0] for e in entries if e[2] & MEMBER}
        for k in sorted(members - flagged):
            uk = k.hex()
            out.append(
                {**base, "flag_id": fraud.flag_id("user", uk, member_det, item), "subject_kind": "user",
                 "subject": uk, "user_key": uk, "key_id": s.key_id, "detector": member_det, "score": score,
                 "reasons": [member_det], "evidence": {"item_id": item, **evidence}}
            )  # fmt: skip
        for j, e in enumerate(entries):  # a new entry, not this one changed: earlier states share it (`copy`)
            if e[0] in members and not e[2] & MEMBER:
                entries[j] = [e[0], e[1], e[2] | MEMBER, *e[3:]]
        return out
