"""Per-user state and its versioned binary layout (never pickle: Flink stores these bytes across upgrades).

Items, categories and event ids are stored as short hashes, not model indices, so the state survives a model
update with a different vocabulary; the operator maps hashes to the current artefact's indices.

Layout, little-endian, version 1:

  header  `<BBqqIqqqfH4q`  version, flags, first_ts, last_ts, n_events, flagged_until, last_emit_ts,
                             pending_ts, surprise (mean log-prob), surprise_n, last flag ts per detector (4)
  counts  `<HBHBHBB`       n_seq, n_cats, n_dedup, n_recs, len(pending_event_id), len(user_key), len(key_id)
  seq     u32[n_seq] item hash, u32[n_seq] age (last_ts - ts, ms, saturating), u8[n_seq] code
          (bits 0-2: 1-based event type, bits 3-6: rating in half steps, 0 = none); oldest first
  cats    u32[n_cats] category hash, f16[n_cats] decayed weight as of last_ts
  dedup   u64[n_dedup] event-id hash, u32[n_dedup] age (ms); oldest first
  recs    u32[n_recs] last recommended item hashes, best first
  strings utf-8: pending event id (newest debounced event, "" = none), user_key (the pseudonym, so timers can
          emit without the raw id), key_id
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter, or_, sub
from typing import TypeVar

import numpy as np

VERSION = 1
_HEADER = struct.Struct("<BBqqIqqqfH4q")
_COUNTS = struct.Struct("<HBHBHBB")
_U32_MAX = 2**32 - 1
N_DETECTORS = 4  # velocity, regularity, surprise, rating (index into flag_last)
EVENT_TYPES = ("view", "click", "cart", "purchase", "rating")


class StateError(ValueError):
    """Bytes that are not a user state this code can read (corrupt, truncated or a future version)."""


def item_hash(item_id: str) -> int:
    """Stable 32-bit hash of an item id (stable across processes, unlike `hash`)."""
    if NATIVE_MODULE is not None:  # the same BLAKE2b in C for an ASCII id (operators/_native.c), else None
        h: int | None = NATIVE_MODULE.id_hash(item_id, 4)
        if h is not None:
            return h
    return blake2b_int(item_id, 4)


def id_hash(event_id: str) -> int:
    """Stable 64-bit hash of an event id, for the dedup window."""
    if NATIVE_MODULE is not None:
        h: int | None = NATIVE_MODULE.id_hash(event_id, 8)
        if h is not None:
            return h
    return blake2b_int(event_id, 8)


def blake2b_int(text: str, size: int) -> int:
    """The reference of `item_hash` (size 4) and `id_hash` (size 8): BLAKE2b of the UTF-8 text, little-endian."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).digest(), "little")


def type_code(event_type: str) -> int:
    return EVENT_TYPES.index(event_type) + 1


@dataclass
class UserState:
    """One user's memory; mutable while an operator step works on it, bytes in between."""

    first_ts: int = 0  # first event of the account (account age); 0 = no event yet
    last_ts: int = 0  # newest event time seen
    n_events: int = 0  # valid, non-duplicate events since the state was created
    items: list[int] = field(default_factory=list)  # item hashes, oldest first
    ts: list[int] = field(default_factory=list)  # event times (ms)
    types: list[int] = field(default_factory=list)  # 1-based event types
    ratings: list[float] = field(default_factory=list)  # 0.0 = no rating
    cats: dict[int, float] = field(default_factory=dict)  # category hash -> weight as of last_ts
    dedup: list[tuple[int, int]] = field(default_factory=list)  # (event-id hash, ts), oldest first
    flagged_until: int = 0  # until then the user's events do not feed item counts
    flag_last: list[int] = field(default_factory=lambda: [0] * N_DETECTORS)  # last flag time per detector
    last_emit_ts: int = 0  # event time of the last emitted recommendation (debounce)
    pending_ts: int = 0  # event time of a debounced update waiting for its timer (0 = none)
    pending_event_id: str = ""  # the event that update belongs to
    surprise: float = 0.0  # mean next-item log-prob of the last scored sequence
    surprise_n: int = 0  # transitions behind `surprise`
    last_recs: list[int] = field(default_factory=list)  # item hashes of the last emitted list
    user_key: str = ""  # HMAC pseudonym of the user (timers emit with it)
    key_id: str = ""  # the pseudonym key's id

    @property
    def empty(self) -> bool:
        return self.n_events == 0

    def copy(self) -> UserState:
        """An independent copy: new lists and dict (their items are immutable), so changing one leaves the other;
        except `last_recs`, which the operator only ever replaces whole: the copy shares it (a pipelined list fills
        its hashes in place once built, in every state that recorded it: `operators.user._Pipe`)."""
        c = object.__new__(UserState)
        d = c.__dict__
        d.update(self.__dict__)
        for name in _COPIED:
            d[name] = d[name].copy()
        return c


_CONTAINERS = ("items", "ts", "types", "ratings", "cats", "dedup", "flag_last", "last_recs")  # UserState's mutables
_COPIED = _CONTAINERS[:-1]  # what `copy` copies (not last_recs)


def encode(s: UserState) -> bytes:
    """The layout in the module docstring; counts are clipped to their field widths (callers bound them).

    Pure-Python fast path for the states the operator builds (plain ints in range, finite ratings); anything
    unusual takes the reference numpy path `_encode_np`, so the bytes are the same either way.
    """
    if NATIVE:
        out = _native.encode(s)
        if out is not None:
            return out
    if _FAST:
        try:
            out = _encode_fast(s)
        except (OverflowError, TypeError, ValueError, struct.error):
            out = None
        if out is not None:
            return out
    return _encode_np(s)


def _encode_np(s: UserState) -> bytes:
    """Reference encoder (numpy); `encode` falls back to it."""
    n_seq = min(len(s.items), 65535)
    cats = sorted(s.cats.items(), key=lambda kv: -kv[1])[:255]
    dedup = s.dedup[-65535:]
    recs = s.last_recs[:255]
    pend = s.pending_event_id.encode("utf-8", "surrogatepass")[:65535]
    ukey = s.user_key.encode("utf-8", "surrogatepass")[:255]
    kid = s.key_id.encode("utf-8", "surrogatepass")[:255]
    flags = 0
    head = _HEADER.pack(
        VERSION,
        flags,
        s.first_ts,
        s.last_ts,
        min(s.n_events, _U32_MAX),
        s.flagged_until,
        s.last_emit_ts,
        s.pending_ts,
        s.surprise,
        min(s.surprise_n, 65535),
        *s.flag_last[:N_DETECTORS],
    )
    parts = [head, _COUNTS.pack(n_seq, len(cats), len(dedup), len(recs), len(pend), len(ukey), len(kid))]
    if n_seq:
        ages = np.clip(s.last_ts - np.asarray(s.ts[-n_seq:], dtype=np.int64), 0, _U32_MAX)
        codes = np.asarray(s.types[-n_seq:], dtype=np.uint8) | (
            np.clip(np.rint(np.asarray(s.ratings[-n_seq:]) * 2), 0, 15).astype(np.uint8) << 3
        )
        parts += [
            np.asarray(s.items[-n_seq:], dtype="<u4").tobytes(),
            ages.astype("<u4").tobytes(),
            codes.tobytes(),
        ]
    if cats:
        parts += [
            np.asarray([c for c, _ in cats], dtype="<u4").tobytes(),
            np.asarray([w for _, w in cats], dtype="<f2").tobytes(),
        ]
    if dedup:
        parts += [
            np.asarray([h for h, _ in dedup], dtype="<u8").tobytes(),
            np.clip(s.last_ts - np.asarray([t for _, t in dedup], dtype=np.int64), 0, _U32_MAX).astype("<u4").tobytes(),
        ]
    if recs:
        parts.append(np.asarray(recs, dtype="<u4").tobytes())
    parts += [pend, ukey, kid]
    return b"".join(parts)


def decode(data: bytes) -> UserState:
    """Inverse of `encode`; raises `StateError` on anything else (the operator then starts afresh).

    Pure-Python fast path; states whose times are near the int64 limits take the reference `_decode_np`
    (numpy wraps around there, and the result must not depend on the path)."""
    if NATIVE:
        st = _native.decode(UserState, data)
        if st is not None:
            return st
    if _FAST and isinstance(data, bytes):
        return _decode_fast(data)
    return _decode_np(data)


def settle(s: UserState) -> UserState | bytes:
    """The state the next event reads once `s` is stored: `decode(encode(s))` (the layout's rounding: f16 category
    weights, f32 surprise, half-step ratings, u32 ages, clipped counts and strings), or the bytes `encode(s)` when
    they do not decode (the next event then finds an unreadable state, as it would in the store). Raises what
    `encode(s)` raises. The operator keeps this between the events of one user in one call instead of the bytes.

    Pure-Python fast path for the states the operator builds (only their header and category weights change): `s`
    itself, brought in place to those values. Anything else goes through the bytes, so the result is the same
    either way."""
    return settle_via(s, _settle_native if NATIVE else _settle_fast if _FAST else _never, encode, decode, StateError)


_S = TypeVar("_S")


def settle_via(s: _S, fast: Callable[[_S], bool], enc: Callable[[_S], bytes], dec: Callable[[bytes], _S],
               unreadable: type[Exception]) -> _S | bytes:  # fmt: skip
    """`dec(enc(s))`, or those bytes when they do not decode (`unreadable`): the state a stored `s` gives back. When
    `fast(s)` says so (True: it has brought `s` in place to those values), `s` itself; if `fast` raises, the bytes
    decide (and raise what `enc` raises). `settle` (user states) and `operators.item.settle_item` are this."""
    try:
        done = fast(s)
    except Exception:  # noqa: BLE001 - unusual: the bytes decide
        done = False
    if done:
        return s
    b = enc(s)
    try:
        return dec(b)
    except unreadable:
        return b


def _never(_s: object) -> bool:
    return False


def _decode_np(data: bytes) -> UserState:
    """Reference decoder (numpy); `decode` falls back to it."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StateError(f"state must be bytes, got {type(data).__name__}")
    b = bytes(data)
    if len(b) < _HEADER.size + _COUNTS.size:
        raise StateError(f"state too short ({len(b)} bytes)")
    if b[0] != VERSION:
        raise StateError(f"state layout version {b[0]}, this code reads {VERSION}")
    h = _HEADER.unpack_from(b, 0)
    n_seq, n_cats, n_dedup, n_recs, n_pend, n_ukey, n_kid = _COUNTS.unpack_from(b, _HEADER.size)
    n_str = n_pend + n_ukey + n_kid
    expect = _HEADER.size + _COUNTS.size + 9 * n_seq + 6 * n_cats + 12 * n_dedup + 4 * n_recs + n_str
    if len(b) != expect:
        raise StateError(f"state is {len(b)} bytes, its counts say {expect}")
    (_, _, first_ts, last_ts, n_events, flagged_until, last_emit, pending_ts, surprise, surprise_n) = h[:10]
    if not np.isfinite(surprise):
        raise StateError("state holds a non-finite surprise")
    off = _HEADER.size + _COUNTS.size

    def take(dtype: str, n: int) -> np.ndarray:
        nonlocal off
        a = np.frombuffer(b, dtype=dtype, count=n, offset=off)
        off += a.nbytes
        return a

    items = take("<u4", n_seq)
    ages = take("<u4", n_seq).astype(np.int64)
    codes = take("u1", n_seq)
    cat_h = take("<u4", n_cats)
    cat_w = take("<f2", n_cats).astype(np.float64)
    d_h = take("<u8", n_dedup)
    d_age = take("<u4", n_dedup).astype(np.int64)
    recs = take("<u4", n_recs)
    try:
        pend = b[off : off + n_pend].decode("utf-8")
        ukey = b[off + n_pend : off + n_pend + n_ukey].decode("utf-8")
        kid = b[off + n_pend + n_ukey : off + n_str].decode("utf-8")
    except UnicodeDecodeError as e:
        raise StateError("state holds a string that is not UTF-8") from e
    types = codes & 7
    if n_seq and (types.min() < 1 or types.max() > len(EVENT_TYPES)):
        raise StateError("state holds an unknown event type code")
    if not np.all(np.isfinite(cat_w)):
        raise StateError("state holds a non-finite category weight")
    return UserState(
        first_ts=first_ts,
        last_ts=last_ts,
        n_events=n_events,
        items=items.tolist(),
        ts=(last_ts - ages).tolist(),
        types=types.astype(np.int64).tolist(),
        ratings=((codes >> 3).astype(np.float64) / 2).tolist(),
        cats=dict(zip(cat_h.tolist(), cat_w.tolist(), strict=True)),
        dedup=list(zip(d_h.tolist(), (last_ts - d_age).tolist(), strict=True)),
        flagged_until=flagged_until,
        flag_last=list(h[10:]),
        last_emit_ts=last_emit,
        pending_ts=pending_ts,
        pending_event_id=pend,
        surprise=float(surprise),
        surprise_n=surprise_n,
        last_recs=recs.tolist(),
        user_key=ukey,
        key_id=kid,
    )


# ---------------------------------------------------------------- fast paths (array/struct, no numpy per call)

_FAST = sys.byteorder == "little" and array("I").itemsize == 4 and array("Q").itemsize == 8

# The same fast paths in C (operators/_native.c, built by `pip install -e .`): each handles the usual states and
# answers None for the rest, which then take the Python paths here. STREAMREC_NATIVE=0 keeps to Python.
try:
    from operators import _native  # type: ignore[attr-defined]
except ImportError:  # not built: the Python paths alone
    _native = None
NATIVE = _FAST and _native is not None and os.environ.get("STREAMREC_NATIVE", "1") != "0"
NATIVE_MODULE = _native if NATIVE else None  # for the other operators' modules (cf, fraud, user)
_SAFE_TS = 2**62  # |ts| and |last_ts| below this: last_ts - ts cannot overflow int64 in the numpy path
_F16: dict[int, struct.Struct] = {}
_BIG = 200  # sections longer than this are faster through numpy


def _f16(n: int) -> struct.Struct:
    st = _F16.get(n)
    if st is None:
        st = _F16[n] = struct.Struct(f"<{n}e")
    return st


def _ages(last: int, ts: Sequence[int]) -> array | None:
    """u32 `last - t`, clipped at 0 and 2**32 - 1 like the numpy path; None if numpy could overflow int64."""
    if not ts:
        return array("I")
    if not (min(ts) >= -_SAFE_TS and max(ts) <= _SAFE_TS):
        return None
    ages = list(map(sub, repeat(last), ts))
    if not (min(ages) >= 0 and max(ages) <= _U32_MAX):
        ages = [min(max(a, 0), _U32_MAX) for a in ages]
    return array("I", ages)  # TypeError for anything but ints (e.g. float times): the numpy path decides


# rating -> code bits (half steps, clipped to 0..15, rounded half to even like np.rint) for the usual ratings
_RATING_BITS = {h / 2: min(h, 15) << 3 for h in range(0, 16)}


def _rating_bits(r: float) -> int:
    b = _RATING_BITS.get(r)
    return b if b is not None else min(max(round(r * 2), 0), 15) << 3


def _encode_fast(s: UserState) -> bytes | None:
    """`_encode_np`'s bytes without numpy; None (or an exception) when the state is unusual, and then the
    numpy path decides. Out-of-range or non-int values make `array` raise, they are never coerced."""
    last = s.last_ts
    if type(last) is not int or not -_SAFE_TS <= last <= _SAFE_TS:
        return None
    n_seq = min(len(s.items), 65535)
    cats = sorted(s.cats.items(), key=lambda kv: -kv[1])[:255]
    dedup = s.dedup[-65535:]
    recs = s.last_recs[:255]
    pend = s.pending_event_id.encode("utf-8", "surrogatepass")[:65535]
    ukey = s.user_key.encode("utf-8", "surrogatepass")[:255]
    kid = s.key_id.encode("utf-8", "surrogatepass")[:255]
    head = _HEADER.pack(
        VERSION,
        0,
        s.first_ts,
        last,
        min(s.n_events, _U32_MAX),
        s.flagged_until,
        s.last_emit_ts,
        s.pending_ts,
        s.surprise,
        min(s.surprise_n, 65535),
        *s.flag_last[:N_DETECTORS],
    )
    parts = [head, _COUNTS.pack(n_seq, len(cats), len(dedup), len(recs), len(pend), len(ukey), len(kid))]
    if n_seq:
        items = s.items[-n_seq:]
        ts = s.ts[-n_seq:]
        types = s.types[-n_seq:]
        ratings = s.ratings[-n_seq:]
        if len(ts) != n_seq or len(types) != n_seq or len(ratings) != n_seq:
            return None
        if set(map(type, ratings)) != {float} or not math.isfinite(sum(ratings)):
            return None
        ages = _ages(last, ts)
        if ages is None:
            return None
        bits = list(map(_RATING_BITS.get, ratings))
        if None in bits:
            bits = [_rating_bits(r) for r in ratings]
        codes = bytes(map(or_, types, bits))  # ValueError outside 0..255: the numpy path decides
        parts += [array("I", items).tobytes(), ages.tobytes(), codes]
    if cats:
        ws = [w for _, w in cats]
        if not math.isfinite(sum(ws)):
            return None
        parts += [array("I", [c for c, _ in cats]).tobytes(), _f16(len(ws)).pack(*ws)]  # OverflowError past f16
    if dedup:
        if len(dedup) > _BIG:  # bots: the numpy section of `_encode_np`, vectorised
            parts += [
                np.asarray([h for h, _ in dedup], dtype="<u8").tobytes(),
                np.clip(last - np.asarray([t for _, t in dedup], dtype=np.int64), 0, _U32_MAX).astype("<u4").tobytes(),
            ]
        else:
            d_h, d_ts = zip(*dedup, strict=True)
            ages = _ages(last, d_ts)
            if ages is None:
                return None
            parts += [array("Q", d_h).tobytes(), ages.tobytes()]
    if recs:
        parts.append(array("I", recs).tobytes())
    parts += [pend, ukey, kid]
    return b"".join(parts)


_TYPES = frozenset(range(1, len(EVENT_TYPES) + 1))  # the event type codes a state holds
_HALF_STEPS = frozenset(_RATING_BITS)  # the ratings the layout keeps as they are (half steps 0..7.5)


def _settle_fast(s: UserState) -> bool:
    """`settle`'s fast path, for a state whose fields hold their declared types (as `decode` and the operator's
    code leave them; the values are checked, not the types): True once `s` holds `decode(encode(s))`'s values,
    that is when the layout only rounds its header (f32 surprise, clipped counts), its category weights (f16,
    heaviest first) and times older than a u32 age can say, which are then set here; False, `s` untouched, when it
    would change anything else (a rating off the half steps, a string cut, a value out of its field's range...)."""
    last = s.last_ts
    if type(last) is not int or not -_SAFE_TS <= last <= _SAFE_TS:
        return False
    h = _HEADER.unpack(_HEADER.pack(VERSION, 0, s.first_ts, last, min(s.n_events, _U32_MAX), s.flagged_until,
                                    s.last_emit_ts, s.pending_ts, s.surprise, min(s.surprise_n, 65535),
                                    *s.flag_last[:N_DETECTORS]))  # fmt: skip
    if not math.isfinite(h[8]) or len(s.flag_last) != N_DETECTORS:
        return False
    n = len(s.items)
    if n > 65535 or not len(s.ts) == len(s.types) == len(s.ratings) == n:
        return False
    lo = last - _U32_MAX  # the oldest time an age can say: older times come back as `lo`
    ts = s.ts
    if n:
        if not _TYPES.issuperset(s.types) or not _HALF_STEPS.issuperset(s.ratings):
            return False
        t_lo, t_hi = min(ts), max(ts)
        if t_lo < lo or t_hi > last:
            if t_lo < -_SAFE_TS or t_hi > _SAFE_TS:
                return False
            ts = [min(max(t, lo), last) for t in ts]
    array("I", s.items)  # OverflowError outside u32
    d = s.dedup
    if d:
        if len(d) > 65535:
            return False
        t_lo, t_hi = min(d, key=_SECOND)[1], max(d, key=_SECOND)[1]
        if t_lo < lo or t_hi > last:
            if t_lo < -_SAFE_TS or t_hi > _SAFE_TS:
                return False
            d = [(h, min(max(t, lo), last)) for h, t in d]
        array("Q", map(_FIRST, d))
    recs = s.last_recs
    if len(recs) > 255:
        return False
    array("I", recs)
    pend, ukey, kid = s.pending_event_id, s.user_key, s.key_id
    if not (pend.isascii() and ukey.isascii() and kid.isascii() and len(pend) <= 65535 and len(ukey) <= 255
            and len(kid) <= 255):  # fmt: skip
        return False
    # heaviest first, ties in dict order: `encode`'s order for finite weights (others are not settled here)
    cats = sorted(s.cats.items(), key=_SECOND, reverse=True)
    if len(cats) > 255:
        return False
    cat_w: tuple[float, ...] = ()
    if cats:
        hs, ws = zip(*cats, strict=True)
        if not math.isfinite(sum(ws)):
            return False
        f16 = _f16(len(ws))
        cat_w = f16.unpack(f16.pack(*ws))  # OverflowError past f16 (the bytes would not decode)
        array("I", hs)
    # all checked: the decoded state's values
    (s.first_ts, s.last_ts, s.n_events, s.flagged_until, s.last_emit_ts, s.pending_ts, s.surprise,
     s.surprise_n) = h[2:10]  # fmt: skip
    s.flag_last = list(h[10:])
    s.ts, s.dedup = ts, d
    s.cats = dict(zip(hs, cat_w, strict=True)) if cats else {}
    return True


_FIRST, _SECOND = itemgetter(0), itemgetter(1)


def _settle_native(s: UserState) -> bool:
    """`_settle_fast` in C (`operators/_native.c`) for the usual states; the Python one for the rest."""
    return _native.settle(s) or _settle_fast(s)


_TYPE_OF_CODE = bytes(c & 7 for c in range(256))
_RATING_OF_CODE = tuple((c >> 3) / 2 for c in range(256))


def _decode_fast(b: bytes) -> UserState:
    if len(b) < _HEADER.size + _COUNTS.size:
        raise StateError(f"state too short ({len(b)} bytes)")
    if b[0] != VERSION:
        raise StateError(f"state layout version {b[0]}, this code reads {VERSION}")
    h = _HEADER.unpack_from(b, 0)
    n_seq, n_cats, n_dedup, n_recs, n_pend, n_ukey, n_kid = _COUNTS.unpack_from(b, _HEADER.size)
    n_str = n_pend + n_ukey + n_kid
    expect = _HEADER.size + _COUNTS.size + 9 * n_seq + 6 * n_cats + 12 * n_dedup + 4 * n_recs + n_str
    if len(b) != expect:
        raise StateError(f"state is {len(b)} bytes, its counts say {expect}")
    (_, _, first_ts, last_ts, n_events, flagged_until, last_emit, pending_ts, surprise, surprise_n) = h[:10]
    if not math.isfinite(surprise):
        raise StateError("state holds a non-finite surprise")
    if not -_SAFE_TS <= last_ts <= _SAFE_TS:
        return _decode_np(b)
    off = _HEADER.size + _COUNTS.size

    def take(code: str, n: int, size: int) -> list[int]:
        nonlocal off
        if not n:
            return []
        a = array(code)
        a.frombytes(b[off : off + n * size])
        off += n * size
        return a.tolist()

    items = take("I", n_seq, 4)
    ages = take("I", n_seq, 4)
    codes = b[off : off + n_seq]
    off += n_seq
    cat_h = take("I", n_cats, 4)
    cat_w = list(_f16(n_cats).unpack_from(b, off)) if n_cats else []
    off += 2 * n_cats
    if n_dedup > _BIG:  # bots: vectorised, as in `_decode_np`
        d_h = np.frombuffer(b, dtype="<u8", count=n_dedup, offset=off).tolist()
        d_age = np.frombuffer(b, dtype="<u4", count=n_dedup, offset=off + 8 * n_dedup).astype(np.int64)
        d_ts = (last_ts - d_age).tolist()
        off += 12 * n_dedup
    else:
        d_h = take("Q", n_dedup, 8)
        d_ts = list(map(sub, repeat(last_ts), take("I", n_dedup, 4)))
    recs = take("I", n_recs, 4)
    try:
        pend = b[off : off + n_pend].decode("utf-8")
        ukey = b[off + n_pend : off + n_pend + n_ukey].decode("utf-8")
        kid = b[off + n_pend + n_ukey : off + n_str].decode("utf-8")
    except UnicodeDecodeError as e:
        raise StateError("state holds a string that is not UTF-8") from e
    types = list(codes.translate(_TYPE_OF_CODE))
    if n_seq and (min(types) < 1 or max(types) > len(EVENT_TYPES)):
        raise StateError("state holds an unknown event type code")
    if not all(math.isfinite(w) for w in cat_w):
        raise StateError("state holds a non-finite category weight")
    return UserState(
        first_ts=first_ts,
        last_ts=last_ts,
        n_events=n_events,
        items=items,
        ts=list(map(sub, repeat(last_ts), ages)),
        types=types,
        ratings=list(map(_RATING_OF_CODE.__getitem__, codes)),
        cats=dict(zip(cat_h, cat_w, strict=True)),
        dedup=list(zip(d_h, d_ts, strict=True)),
        flagged_until=flagged_until,
        flag_last=list(h[10:]),
        last_emit_ts=last_emit,
        pending_ts=pending_ts,
        pending_event_id=pend,
        surprise=float(surprise),
        surprise_n=surprise_n,
        last_recs=recs,
        user_key=ukey,
        key_id=kid,
    )
