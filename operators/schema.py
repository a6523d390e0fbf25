"""The input event contract: parse one Kafka message into an `Event` (or `ItemMeta`) or a `Rejection`.

This is the validator the stream job uses to route bad messages to the dead-letter topic, so it never raises,
whatever bytes arrive, and its reason codes are a stable, documented interface (alerts key on them).

The limits below are the product contract (a schema version), not tuning knobs, so they live here rather
than in `conf/`: changing one changes what producers may send.

Event message: one JSON object, UTF-8, at most 64 KiB:

==========  ==========  ==========================================================================
field       required    rule
==========  ==========  ==========================================================================
event_id    yes         string, 1-256 printable characters (`str.isprintable`); unique per event
user_id     yes         same rule as event_id
item_id     yes         same rule as event_id
event_type  yes         one of view, click, cart, purchase, rating
ts          yes         JSON integer (not float/bool), epoch ms, 2000-01-01T00:00Z <= ts < 2100-01-01T00:00Z
rating      iff rating  number (not bool), finite, 0.5 <= rating <= 5. Required when event_type is
                        "rating" and **rejected** (`unexpected_rating`) on any other type: a producer
                        that puts a rating on a click is confused, and dropping it would hide that.
session_id  no          same rule as event_id
context     no          JSON object (any content), for producer-specific extras
==========  ==========  ==========================================================================

An explicit JSON `null` for an optional field means "absent". Any other top-level key is rejected
(`unknown_field`): the contract is closed and `context` is the extension point, so typos surface at once.
JSON extensions Python would otherwise accept (`NaN`, `Infinity`, numbers overflowing to infinity,
duplicate keys) are rejected too. Lengths count characters (code points), the size limit counts bytes.

Item message (`items` topic): `item_id` (id rule), `title` (1-1024 printable characters), `categories`
(list of 0-64 strings, each 1-256 printable characters), optional `text` (newlines and tabs allowed, other
control characters not).

Reason codes (`Reason`, a `str` enum whose values never change), in the order the checks run; the first
failing check wins:

==================  ==========================================================================
reason              meaning
==================  ==========================================================================
bad_payload_type    the payload is neither bytes nor str (a caller bug; never from Kafka)
too_large           payload longer than 64 KiB (UTF-8 bytes)
not_utf8            payload is not valid UTF-8 (or a str with lone surrogates)
not_json            not strict JSON (also NaN/Infinity, overflowing numbers, nesting too deep)
not_object          valid JSON but not an object at the top level
duplicate_field     the same key twice in the top-level object
missing_field       a required field is absent (or null)
bad_type            a field has the wrong JSON type (ts as a string or float, rating as a string)
bad_id              an id (event_id, user_id, item_id, session_id) empty, too long or unprintable
bad_event_type      event_type is a string but not one of the five types
ts_out_of_range     ts is an integer outside [2000-01-01, 2100-01-01)
bad_rating          rating is a number but not finite or outside [0.5, 5]
unexpected_rating   a rating on an event whose type is not "rating"
bad_context         context cannot be re-serialised as UTF-8 JSON (e.g. lone surrogate escapes)
unknown_field       a top-level key outside the contract
bad_title           (items) title empty, too long or not printable
bad_categories      (items) categories not a list of valid category strings
bad_text            (items) text with control characters other than newline/tab/CR
bad_control         (control) unknown kind, or a model record's path / sha256 malformed
internal_error      a bug in this validator (caught so the job keeps running); should never appear
==================  ==========================================================================
"""

from __future__ import annotations

import base64
import enum
import json
import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

MAX_MESSAGE_BYTES: Final = 64 * 1024  # contract: largest message, in UTF-8 bytes
MAX_ID_CHARS: Final = 256  # contract: longest id, in characters (code points)
MAX_TITLE_CHARS: Final = 1024  # contract: longest item title
MAX_CATEGORIES: Final = 64  # contract: most categories per item
TS_MIN_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z, inclusive
TS_MAX_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z, exclusive
RATING_MIN: Final = 0.5
RATING_MAX: Final = 5.0
RAW_KEEP_BYTES: Final = 1024  # how much of a rejected payload a Rejection keeps

# One shared encoder: json.dumps with options builds a new encoder per call, which dominates bulk writes.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

EVENT_TYPES: Final = ("view", "click", "cart", "purchase", "rating")
EVENT_FIELDS: Final = (
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "ts",
    "rating",
    "session_id",
    "context",
)
ITEM_FIELDS: Final = ("item_id", "title", "categories", "text", "available")
# Control topic records (`kind` selects the shape): a model to switch to, or a user to erase.
CONTROL_MODEL_FIELDS: Final = ("kind", "version", "path", "sha256", "ts")
CONTROL_ERASE_FIELDS: Final = ("kind", "user_id", "request_id", "ts")
_ID_FIELDS: Final = ("event_id", "user_id", "item_id")
_TEXT_CONTROL_OK: Final = frozenset("\n\t\r")


class Reason(enum.StrEnum):
    """Machine-readable rejection reasons; the values are a stable interface (see the module docstring)."""

    BAD_PAYLOAD_TYPE = "bad_payload_type"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    DUPLICATE_FIELD = "duplicate_field"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    BAD_ID = "bad_id"
    BAD_EVENT_TYPE = "bad_event_type"
    TS_OUT_OF_RANGE = "ts_out_of_range"
    BAD_RATING = "bad_rating"
    UNEXPECTED_RATING = "unexpected_rating"
    BAD_CONTEXT = "bad_context"
    UNKNOWN_FIELD = "unknown_field"
    BAD_TITLE = "bad_title"
    BAD_CATEGORIES = "bad_categories"
    BAD_TEXT = "bad_text"
    BAD_CONTROL = "bad_control"  # a control record of unknown kind or with a malformed field
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class Event:
    """One valid behaviour event. `context` is a plain dict: treat it as read-only."""

    event_id: str
    user_id: str
    item_id: str
    event_type: str
    ts: int  # epoch milliseconds
    rating: float | None = None  # set iff event_type == "rating"
    session_id: str | None = None
    context: dict[str, Any] | None = field(default=None, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Contract-shaped dict; absent optional fields are left out (not null)."""
        d: dict[str, Any] = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type,
            "ts": self.ts,
        }
        if self.rating is not None:
            d["rating"] = self.rating
        if self.session_id is not None:
            d["session_id"] = self.session_id
        if self.context is not None:
            d["context"] = self.context
        return d

    def to_json(self) -> str:
        """Compact JSON (no spaces, non-ASCII kept); `parse_event(e.to_json()) == e`."""
        return _ENCODER.encode(self.to_dict())


@dataclass(frozen=True, slots=True)
class ItemMeta:
    """Item metadata record of the `items` topic."""

    item_id: str
    title: str
    categories: tuple[str, ...] = ()
    text: str | None = None
    available: bool = True  # False: never recommend this item (until a later record says True)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "item_id": self.item_id,
            "title": self.title,
            "categories": list(self.categories),
        }
        if self.text is not None:
            d["text"] = self.text
        if not self.available:
            d["available"] = False
        return d

    def to_json(self) -> str:
        return _ENCODER.encode(self.to_dict())


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was refused, plus enough of it to debug (the dead-letter record)."""

    reason: Reason
    message: str  # for humans
    field: str | None  # the offending field, when there is one
    raw: str  # the first RAW_KEEP_BYTES of the payload: text if valid UTF-8, else base64
    raw_encoding: str  # "utf-8" or "base64"
    raw_truncated: bool  # True when the payload was longer than what `raw` keeps
    raw_size: int  # payload size in bytes (-1 if the payload was not bytes/str)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason.value,
            "message": self.message,
            "field": self.field,
            "raw": self.raw,
            "raw_encoding": self.raw_encoding,
            "raw_truncated": self.raw_truncated,
            "raw_size": self.raw_size,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))


class _Invalid(Exception):
    """Internal: a failed check, turned into a Rejection at the boundary."""

    def __init__(self, reason: Reason, message: str, field_name: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field_name = field_name


def _raw_preview(payload: bytes) -> tuple[str, str, bool]:
    head = payload[:RAW_KEEP_BYTES]
    truncated = len(payload) > RAW_KEEP_BYTES
    # A cut may split a multi-byte character: back off up to 3 bytes before giving up on text.
    for cut in range(0, 4 if truncated else 1):
        try:
            return head[: len(head) - cut].decode("utf-8"), "utf-8", truncated
        except UnicodeDecodeError:
            continue
    return base64.b64encode(head).decode("ascii"), "base64", truncated


def _reject(payload: bytes | None, reason: Reason, message: str, field_name: str | None = None) -> Rejection:
    if payload is None:
        return Rejection(reason, message, field_name, "", "utf-8", False, -1)
    raw, enc, truncated = _raw_preview(payload)
    return Rejection(reason, message, field_name, raw, enc, truncated, len(payload))


def _strict_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(f"number out of range: {s[:40]}")
    return v


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


class _Pairs(dict[str, Any]):
    """A dict that remembers the first key it saw twice (json's object_pairs_hook keeps the last value)."""

    dup: str | None = None


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Pairs:
    d = _Pairs(pairs)  # as `d[k] = v` in order: a repeated key keeps its first place and its last value
    if len(d) < len(pairs):  # a key came twice: the first one seen again
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                d.dup = k
                break
            seen.add(k)
    return d


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs_hook, parse_float=_strict_float, parse_constant=_no_constants
)


def _decode(raw: Any) -> tuple[bytes | None, Any]:
    """Payload checks shared by events and items: returns (payload bytes, decoded JSON object)."""
    if isinstance(raw, bytearray | memoryview):
        raw = bytes(raw)
    if isinstance(raw, bytes):
        payload = raw
        if len(payload) > MAX_MESSAGE_BYTES:
            raise _Invalid(
                Reason.TOO_LARGE, f"message is {len(payload)} bytes; the limit is {MAX_MESSAGE_BYTES}"
            )
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Invalid(Reason.NOT_UTF8, f"not UTF-8: {e.reason} at byte {e.start}") from None
    elif isinstance(raw, str):
        try:
            payload = raw.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _Invalid(Reason.NOT_UTF8, f"string has a lone surrogate at index {e.start}") from None
        if len(payload) > MAX_MESSAGE_BYTES:
            raise _Invalid(
                Reason.TOO_LARGE, f"message is {len(payload)} bytes; the limit is {MAX_MESSAGE_BYTES}"
            )
        text = raw
    else:
        raise _Invalid(Reason.BAD_PAYLOAD_TYPE, f"payload must be bytes or str, got {type(raw).__name__}")
    try:
        obj = _DECODER.decode(text)
    except RecursionError:
        raise _Invalid(Reason.NOT_JSON, "JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, our strict number hooks, int-digit limits
        raise _Invalid(Reason.NOT_JSON, f"not valid JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise _Invalid(Reason.NOT_OBJECT, f"top level is a JSON {_json_type(obj)}, not an object")
    if isinstance(obj, _Pairs) and obj.dup is not None:
        raise _Invalid(Reason.DUPLICATE_FIELD, f"key {obj.dup!r} appears more than once", _short(obj.dup))
    return payload, obj


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _short(s: str) -> str:
    """A field name safe to echo back (unknown keys can be anything)."""
    out = s[:64].encode("utf-8", "backslashreplace").decode("utf-8")
    return out if out.isprintable() else repr(out)


def _check_id(d: Mapping[str, Any], name: str, required: bool) -> str | None:
    v = d.get(name)
    if v is None:
        if required:
            raise _Invalid(Reason.MISSING_FIELD, f"{name} is required", name)
        return None
    if not isinstance(v, str):
        raise _Invalid(Reason.BAD_TYPE, f"{name} must be a string, got {_json_type(v)}", name)
    if not 1 <= len(v) <= MAX_ID_CHARS:
        raise _Invalid(Reason.BAD_ID, f"{name} must be 1-{MAX_ID_CHARS} characters, got {len(v)}", name)
    if not v.isprintable():
        raise _Invalid(Reason.BAD_ID, f"{name} contains non-printable characters", name)
    return v


def _check_unknown(d: Mapping[str, Any], known: tuple[str, ...]) -> None:
    for k in d:
        if k not in known:
            raise _Invalid(
                Reason.UNKNOWN_FIELD, f"unknown field {_short(k)!r}; allowed: {', '.join(known)}", _short(k)
            )


def _check_rating(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Invalid(Reason.BAD_TYPE, f"rating must be a number, got {_json_type(v)}", "rating")
    r = float(v) if not isinstance(v, int) or abs(v) < 2**53 else math.inf
    if not math.isfinite(r) or not RATING_MIN <= r <= RATING_MAX:
        raise _Invalid(
            Reason.BAD_RATING, f"rating must be in [{RATING_MIN}, {RATING_MAX}], got {str(v)[:40]}", "rating"
        )
    return r


def _validate_event(d: Mapping[str, Any]) -> Event:
    event_id = _check_id(d, "event_id", True)
    user_id = _check_id(d, "user_id", True)
    item_id = _check_id(d, "item_id", True)
    et = d.get("event_type")
    if et is None:
        raise _Invalid(Reason.MISSING_FIELD, "event_type is required", "event_type")
    if not isinstance(et, str):
        raise _Invalid(Reason.BAD_TYPE, f"event_type must be a string, got {_json_type(et)}", "event_type")
    if et not in EVENT_TYPES:
        raise _Invalid(
            Reason.BAD_EVENT_TYPE,
            f"event_type {et[:40]!r} is not one of {', '.join(EVENT_TYPES)}",
            "event_type",
        )
    ts = _check_ts(d)
    raw_rating = d.get("rating")
    rating: float | None = None
    if et == "rating":
        if raw_rating is None:
            raise _Invalid(Reason.MISSING_FIELD, "rating is required when event_type is 'rating'", "rating")
        rating = _check_rating(raw_rating)
    elif raw_rating is not None:
        raise _Invalid(
            Reason.UNEXPECTED_RATING, f"rating is only allowed on 'rating' events, not {et!r}", "rating"
        )
    session_id = _check_id(d, "session_id", False)
    context = d.get("context")
    if context is not None:
        if not isinstance(context, dict):
            raise _Invalid(
                Reason.BAD_TYPE, f"context must be an object, got {_json_type(context)}", "context"
            )
        try:
            json.dumps(context, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (UnicodeEncodeError, ValueError, RecursionError) as e:
            raise _Invalid(
                Reason.BAD_CONTEXT, f"context cannot be re-encoded: {str(e)[:120]}", "context"
            ) from None
        context = dict(context)
    _check_unknown(d, EVENT_FIELDS)
    assert event_id is not None and user_id is not None and item_id is not None
    return Event(event_id, user_id, item_id, et, ts, rating, session_id, context)


def _validate_item(d: Mapping[str, Any]) -> ItemMeta:
    item_id = _check_id(d, "item_id", True)
    title = d.get("title")
    if title is None:
        raise _Invalid(Reason.MISSING_FIELD, "title is required", "title")
    if not isinstance(title, str):
        raise _Invalid(Reason.BAD_TYPE, f"title must be a string, got {_json_type(title)}", "title")
    if not 1 <= len(title) <= MAX_TITLE_CHARS or not title.isprintable():
        raise _Invalid(Reason.BAD_TITLE, f"title must be 1-{MAX_TITLE_CHARS} printable characters", "title")
    cats = d.get("categories")
    if cats is None:
        raise _Invalid(Reason.MISSING_FIELD, "categories is required (may be an empty list)", "categories")
    if not isinstance(cats, list):
        raise _Invalid(Reason.BAD_TYPE, f"categories must be a list, got {_json_type(cats)}", "categories")
    if len(cats) > MAX_CATEGORIES:
        raise _Invalid(
            Reason.BAD_CATEGORIES, f"at most {MAX_CATEGORIES} categories, got {len(cats)}", "categories"
        )
    for c in cats:
        if not isinstance(c, str) or not 1 <= len(c) <= MAX_ID_CHARS or not c.isprintable():
            raise _Invalid(
                Reason.BAD_CATEGORIES,
                f"each category must be a string of 1-{MAX_ID_CHARS} printable characters",
                "categories",
            )
    text = d.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise _Invalid(Reason.BAD_TYPE, f"text must be a string, got {_json_type(text)}", "text")
        if any(unicodedata.category(ch) in ("Cc", "Cs") and ch not in _TEXT_CONTROL_OK for ch in text):
            raise _Invalid(Reason.BAD_TEXT, "text contains control or unencodable characters", "text")
    available = d.get("available", True)
    if not isinstance(available, bool):
        raise _Invalid(Reason.BAD_TYPE, f"available must be true or false, got {_json_type(available)}", "available")
    _check_unknown(d, ITEM_FIELDS)
    assert item_id is not None
    return ItemMeta(item_id, title, tuple(cats), text, available)


@dataclass(frozen=True, slots=True)
class ModelUpdate:
    """Control record: switch every parallel instance to the artefact at `path` (verified against `sha256`)."""

    version: str
    path: str
    sha256: str
    ts: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "model", "version": self.version, "path": self.path, "sha256": self.sha256, "ts": self.ts}


@dataclass(frozen=True, slots=True)
class EraseRequest:
    """Control record: forget `user_id` (state, Cassandra rows, the compacted recommendations topic)."""

    user_id: str
    request_id: str
    ts: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "erase", "user_id": self.user_id, "request_id": self.request_id, "ts": self.ts}


def _check_ts(d: Mapping[str, Any]) -> int:
    ts = d.get("ts")
    if ts is None:
        raise _Invalid(Reason.MISSING_FIELD, "ts is required", "ts")
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise _Invalid(Reason.BAD_TYPE, f"ts must be an integer (epoch ms), got {_json_type(ts)}", "ts")
    if not TS_MIN_MS <= ts < TS_MAX_MS:
        raise _Invalid(
            Reason.TS_OUT_OF_RANGE, f"ts {str(ts)[:40]} is outside [{TS_MIN_MS}, {TS_MAX_MS}) epoch ms", "ts"
        )
    return ts


def _validate_control(d: Mapping[str, Any]) -> ModelUpdate | EraseRequest:
    kind = d.get("kind")
    if kind is None:
        raise _Invalid(Reason.MISSING_FIELD, "kind is required (model | erase)", "kind")
    if kind == "model":
        _check_unknown(d, CONTROL_MODEL_FIELDS)
        version = _check_id(d, "version", True)
        path, sha = d.get("path"), d.get("sha256")
        if not isinstance(path, str) or not 1 <= len(path) <= 4096 or not path.isprintable():
            raise _Invalid(Reason.BAD_CONTROL, "path must be a non-empty printable string", "path")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _Invalid(Reason.BAD_CONTROL, "sha256 must be 64 lowercase hex digits", "sha256")
        assert version is not None
        return ModelUpdate(version, path, sha, _check_ts(d))
    if kind == "erase":
        _check_unknown(d, CONTROL_ERASE_FIELDS)
        user_id = _check_id(d, "user_id", True)
        request_id = _check_id(d, "request_id", True)
        assert user_id is not None and request_id is not None
        return EraseRequest(user_id, request_id, _check_ts(d))
    raise _Invalid(Reason.BAD_CONTROL, f"unknown control kind {_short(str(kind))!r} (model | erase)", "kind")


def _guard(raw: Any, decode: bool, validate: Any) -> Any:
    """Run a validator and turn every failure, expected or not, into a Rejection."""
    payload: bytes | None = None
    try:
        if decode:
            payload, raw = _decode(raw)
        return validate(raw)
    except _Invalid as e:
        if payload is None and decode:
            payload = _payload_of(raw)
        return _reject(payload, e.reason, e.message, e.field_name)
    except Exception as e:  # noqa: BLE001 - the stream must survive a validator bug; the code flags it
        msg = f"validator error: {type(e).__name__}: {e}"[:300]
        return _reject(_payload_of(raw) if decode else None, Reason.INTERNAL_ERROR, msg)


def parse_event(raw: bytes | str) -> Event | Rejection:
    """Validate one event message. Never raises: any failure is a `Rejection`."""
    out: Event | Rejection = _guard(raw, True, _validate_event)
    return out


def parse_item(raw: bytes | str) -> ItemMeta | Rejection:
    """Validate one item-metadata message. Never raises: any failure is a `Rejection`."""
    out: ItemMeta | Rejection = _guard(raw, True, _validate_item)
    return out


def parse_control(raw: bytes | str) -> ModelUpdate | EraseRequest | Rejection:
    """Validate one control-topic message. Never raises: any failure is a `Rejection`."""
    out: ModelUpdate | EraseRequest | Rejection = _guard(raw, True, _validate_control)
    return out


def event_from_mapping(d: Mapping[str, Any]) -> Event | Rejection:
    """Validate a decoded mapping: loaders build events this way so one rule set applies everywhere."""
    out: Event | Rejection = _guard(d, False, _validate_event)
    return out


def item_from_mapping(d: Mapping[str, Any]) -> ItemMeta | Rejection:
    """Validate a decoded item mapping."""
    out: ItemMeta | Rejection = _guard(d, False, _validate_item)
    return out


def _payload_of(raw: Any) -> bytes | None:
    """Best-effort bytes of any payload, for the Rejection preview only."""
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    return None
