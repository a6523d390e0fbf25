"""Item-item collaborative filtering that learns in the stream (issue 15; no Flink import: tested alone).

Every item event carries the user's previous items (`prev`: up to `cf.window` distinct item hashes, most recent
first, consumed at most `cf.max_gap_ms` before it; none for an account a detector has flagged). The item operator
runs this operator on the event's item j, in event-time order: j's state holds its *predecessors* P(j), the items
users consumed just before j, each with a co-occurrence weight (1, 1/2, 1/3 ... by distance) that decays with
event time (half-life `cf.half_life_ms`). At most `cf.max_neighbours` are kept, the lightest evicted: the state is
bounded (12 + 8 × max_neighbours bytes). When j's predecessor set changes, and at most once per
`cf.publish_interval_ms` of event time per item, the operator publishes P(j) (`CfUpdate`); the job writes it to the
compacted `cf` topic and reads it back as broadcast, and the user operator inverts it into successors S(i) = {j : i
∈ P(j)}: the items that followed i in recent sequences, candidates for a user who just consumed i.

This is item-to-item co-occurrence CF (Linden, Smith, York, "Amazon.com recommendations: item-to-item collaborative
filtering", IEEE Internet Computing 2003), made sequential (only what came before j counts) and forgetful (decay,
bounded lists) for the stream. Departures: raw decayed co-occurrence, no normalisation by item popularity (the user
operator scales each S(i) by its largest weight); no cosine or lift.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from operators.config import CfConf
from operators.state import NATIVE_MODULE as _native
from operators.state import item_hash

VERSION = 1
_HEAD = struct.Struct("<BqqH")  # version, last_ts, published_ts, n
_PRED = struct.Struct("<If")  # item hash, weight (decayed to last_ts)


class CfStateError(ValueError):
    pass


@dataclass
class CfState:
    last_ts: int = 0  # event time the weights are decayed to
    published_ts: int = 0  # event time P(j) was last published (0: never)
    preds: dict[int, float] = field(default_factory=dict)  # predecessor item hash → weight
    dirty: bool = False  # the predecessor set changed since the last publication (not stored: see encode_cf)


def encode_cf(s: CfState) -> bytes:
    # `dirty` travels as published_ts = -1 - published_ts (negative: a publication is owed)
    pub = -1 - s.published_ts if s.dirty else s.published_ts
    if _native is not None:  # the same bytes in C (operators/_native.c) for the usual values
        b: bytes | None = _native.encode_cf(s.last_ts, pub, s.preds)
        if b is not None:
            return b
    out = [_HEAD.pack(VERSION, s.last_ts, pub, len(s.preds))]
    out += [_PRED.pack(h, w) for h, w in sorted(s.preds.items())]
    return b"".join(out)


def decode_cf(b: bytes) -> CfState:
    if _native is not None:  # the same values in C for well-formed bytes (None: the checks below raise)
        got = _native.decode_cf(b)
        if got is not None:
            last, pub, preds = got
            return CfState(last, -1 - pub if pub < 0 else pub, preds, pub < 0)
    if len(b) < _HEAD.size or b[0] != VERSION:
        raise CfStateError("not a cf state of this version")
    _, last, pub, n = _HEAD.unpack_from(b, 0)
    if len(b) != _HEAD.size + n * _PRED.size:
        raise CfStateError("cf state length does not match its count")
    preds = {h: w for h, w in _PRED.iter_unpack(b[_HEAD.size :])}
    return CfState(last, -1 - pub if pub < 0 else pub, preds, pub < 0)


@dataclass(frozen=True)
class CfUpdate:
    """The published predecessors of one item: (item hash, weight), heaviest first, and the event time."""

    item_id: str
    preds: tuple[tuple[int, float], ...]
    ts: int

    @property
    def mass(self) -> float:
        """The summed predecessor weights: how much the stream has seen the item consumed lately (its evidence for
        `recs.content_evidence`; `decayed_mass` ages it)."""
        return float(sum(w for _, w in self.preds))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "cf_neighbours", "item_id": self.item_id, "ts": self.ts,
                "preds": [[h, round(w, 6)] for h, w in self.preds]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any) -> CfUpdate:
        """Raises ValueError for anything that is not a `to_dict` record."""
        if not isinstance(d, dict) or d.get("kind") != "cf_neighbours" or not isinstance(d.get("item_id"), str):
            raise ValueError("not a cf_neighbours record")
        ts, preds = d.get("ts"), d.get("preds")
        if not isinstance(ts, int) or not isinstance(preds, list):
            raise ValueError("cf_neighbours record without ts / preds")
        out = []
        for p in preds:
            if (not isinstance(p, list) or len(p) != 2 or not isinstance(p[0], int) or not 0 <= p[0] < 2**32
                    or not isinstance(p[1], int | float) or not 0 <= p[1] < math.inf):  # fmt: skip
                raise ValueError(f"bad predecessor {p!r}")
            out.append((p[0], float(p[1])))
        return cls(d["item_id"], tuple(out), ts)


def parse_records(records: list[bytes], source: str) -> tuple[tuple[CfUpdate, ...], list[str]]:
    """Raw records of the job's CF topic → (their `CfUpdate`s in order, a dead letter (JSON) for each one that is
    not a CF record: nothing dropped)."""
    import json

    from operators.batch import to_json
    from operators.dead_letter import OPERATOR_BAD_INPUT, operator_dead_letter

    updates, dead = [], []
    for value in records:
        try:
            updates.append(CfUpdate.from_dict(json.loads(value)))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
            dead.append(to_json(operator_dead_letter(OPERATOR_BAD_INPUT, f"cf record: {e}", source, value)))
    return tuple(updates), dead


def heaviest_first(weights: dict[int, float]) -> list[tuple[int, float]]:
    """`sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))` (heaviest first, ties by the smaller key) for finite
    weights, faster: (-weight, key) pairs compare as tuples without a key function, and negating is exact. In C
    (operators/_native.c) for int keys and non-NaN float weights."""
    if _native is not None:
        got: list[tuple[int, float]] | None = _native.heaviest_first(weights)
        if got is not None:
            return got
    return [(h, -w) for w, h in sorted([(-w, h) for h, w in weights.items()])]


def prev_items(items: list[int], ts: list[int], event_ts: int, item: int, conf: CfConf) -> list[int]:
    """The `prev` of an event: up to `conf.window` distinct item hashes of the user's history (oldest first, with
    their times) consumed at or before `event_ts` and at most `conf.max_gap_ms` before it, most recent first,
    without the event's own item."""
    if _native is not None:  # the loop below in C (operators/_native.c) for int hashes and times
        got: list[int] | None = _native.prev_items(items, ts, event_ts, item, conf.window, conf.max_gap_ms)
        if got is not None:
            return got
    out: list[int] = []
    for h, t in zip(reversed(items), reversed(ts), strict=True):
        if len(out) >= conf.window or event_ts - t > conf.max_gap_ms:
            break
        if t <= event_ts and h != item and h not in out:
            out.append(h)
    return out


class CfOperator:
    """`step(state, item_event) -> (state, publication or None)`, per item event in event-time order."""

    def __init__(self, conf: CfConf) -> None:
        self.conf = conf

    def step(self, state: bytes | None, ev: dict[str, Any]) -> tuple[bytes | None, CfUpdate | None]:
        prev = ev.get("prev")
        ts = ev.get("ts")
        if not prev or not isinstance(ts, int) or ev.get("quarantined") is True:
            return state, None
        c = self.conf
        if _native is not None:  # the code below in C (operators/_native.c) for the usual values, else None
            got = _native.cf_step(state, ts, prev, item_hash(str(ev.get("item_id"))), c.window, c.max_neighbours,
                                  max(c.half_life_ms, 1), c.publish_interval_ms)  # fmt: skip
            if got is not None:
                b, best, last_ts = got
                return b, None if best is None else CfUpdate(str(ev["item_id"]), tuple(best), last_ts)
        try:
            s = decode_cf(state) if state is not None else CfState()
        except CfStateError:
            s = CfState()
        hl = max(c.half_life_ms, 1)
        if ts > s.last_ts:
            if s.last_ts:
                f = 0.5 ** ((ts - s.last_ts) / hl)
                s.preds = {h: w * f for h, w in s.preds.items()}
            s.last_ts = ts
        late = 0.5 ** ((s.last_ts - ts) / hl)  # an event older than the state's time adds less
        before = set(s.preds)
        own = item_hash(str(ev.get("item_id")))
        for k, h in enumerate(prev[: c.window]):
            if isinstance(h, int) and h != own:
                s.preds[h] = s.preds.get(h, 0.0) + late / (k + 1)
        if len(s.preds) > c.max_neighbours:  # the lightest go (ties: the larger hash), the state stays bounded
            s.preds = dict(heaviest_first(s.preds)[: c.max_neighbours])
        s.dirty = s.dirty or set(s.preds) != before
        update = None
        if s.dirty and (s.published_ts == 0 or s.last_ts - s.published_ts >= c.publish_interval_ms):
            best = heaviest_first(s.preds)
            update = CfUpdate(str(ev["item_id"]), tuple(best), s.last_ts)
            s.published_ts, s.dirty = s.last_ts, False
        return encode_cf(s), update


def decayed_mass(mass: Any, published_ts: Any, now: int, half_life_ms: int) -> Any:
    """A publication's mass (scalars or arrays) decayed from its time to `now` (never grown: a publication after
    `now` counts undecayed), with the operator's half-life."""
    return mass * 0.5 ** (np.maximum(now - published_ts, 0) / max(half_life_ms, 1))


def mass_at(events: Sequence[Any], queries: Sequence[tuple[str, str, int]], items: Sequence[str], conf: CfConf,
            history_len: int) -> np.ndarray:  # fmt: skip
    """[len(queries), len(items)] float64: each item's stream CF mass just before each query event (user id, item id,
    ts; its first occurrence): the summed weights of the item's last publication (`CfOperator`), decayed by
    `conf.half_life_ms` from that publication's time to the query's, as the user operator scores content items
    (`recs.content_evidence`). The events are replayed in time order (ties in input order) through this operator,
    each with the `prev` the user operator would give it (`prev_items` over the user's last `history_len` events).
    Offline no detector runs: every account feeds it (the job leaves out flagged ones)."""
    op = CfOperator(conf)
    col = {it: j for j, it in enumerate(items)}
    rows = {q: r for r, q in reversed(list(enumerate(queries)))}  # a repeated query: its first row
    out = np.zeros((len(queries), len(items)))
    states: dict[str, bytes | None] = {}
    last: dict[int, tuple[float, int]] = {}  # column → (mass, publication time)
    hist: dict[str, tuple[list[int], list[int]]] = {}
    for k in sorted(range(len(events)), key=lambda k: (int(events[k].ts), k)):
        e = events[k]
        u, i, t = str(e.user_id), str(e.item_id), int(e.ts)
        r = rows.pop((u, i, t), None)
        if r is not None:
            for j, (m, ts) in last.items():
                out[r, j] = decayed_mass(m, ts, t, conf.half_life_ms)
        h_items, h_ts = hist.setdefault(u, ([], []))
        h = item_hash(i)
        prev = prev_items(h_items[-history_len:], h_ts[-history_len:], t, h, conf) if conf.enabled else []
        states[i], update = op.step(states.get(i), {"prev": prev, "ts": t, "item_id": i})
        if update is not None and i in col:
            last[col[i]] = (update.mass, update.ts)
        h_items.append(h)
        h_ts.append(t)
    return out
