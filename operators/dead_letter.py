"""Dead-letter records: what the job writes for a message it cannot process, with a stable reason code."""

from __future__ import annotations

import hashlib
from typing import Any

from operators.schema import Rejection

# Reasons the operators themselves add next to the validator's (`operators.schema.Reason`).
OPERATOR_BAD_INPUT = "operator_bad_input"  # step() got something that is not an Event / item-event dict
OPERATOR_ERROR = "operator_error"  # a bug in an operator, caught so the job keeps running


def dead_letter(rejection: Rejection, source: str, offset: Any = None) -> dict[str, Any]:
    """JSON-serialisable record of a rejected message: reason code, message, field, raw preview (truncated).

    The id is a hash of source + raw preview + reason, so a replay after failover rewrites the same record.
    """
    rid = hashlib.sha256(
        f"{source}\x00{rejection.reason.value}\x00{rejection.raw_encoding}\x00{rejection.raw}\x00{offset}".encode(
            "utf-8", "surrogatepass"
        )
    ).hexdigest()[:32]
    return {
        "kind": "dead_letter",
        "id": rid,
        "source": source,
        "offset": offset,
        **rejection.to_dict(),
    }


def operator_dead_letter(reason: str, message: str, source: str, raw: Any) -> dict[str, Any]:
    """Dead letter for input an operator refused (not from the validator): the repr of what arrived."""
    try:
        full = repr(raw)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not take the job down
        full = f"<unrepresentable {type(raw).__name__}>"
    text = full.encode("utf-8", "backslashreplace").decode("utf-8")[:1024]
    rid = hashlib.sha256(f"{source}\x00{reason}\x00{text}".encode()).hexdigest()[:32]
    return {
        "kind": "dead_letter",
        "id": rid,
        "source": source,
        "offset": None,
        "reason": reason,
        "message": message[:300],
        "field": None,
        "raw": text,
        "raw_encoding": "repr",
        "raw_truncated": len(full) > 1024,
        "raw_size": -1,
    }
