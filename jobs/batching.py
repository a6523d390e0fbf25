"""Batch records between the job's operators (no Flink import: unit-tested alone).

The JVM groups raw events by shard (`jobs/java/ShardBatcher.java`), so each Python operator call handles a batch,
and per-user state lives in a MapState under the shard's key. Users and items are spread over `n` shards by CRC-32
of the id's UTF-8 bytes, shard i keyed in Flink by `keys[i]` (`ShardKeys.table` in Java chooses them spread over
the key groups). Java and Python must agree on `shard_of`: `tests/unit/test_batching.py` checks both.

Frames (big-endian):
- event batch, from the JVM: b"SRB1", int32 shard key, int32 n, n × (int32 length, raw event bytes);
- erase request, from `ParseControl`: b"SRE1", int32 shard key, the request as JSON.
Outputs leave a Python operator as one string per batch, records joined by U+001E (`BatchSplitter.java` splits
them in the JVM; `json.dumps` never writes that character unescaped).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Sequence

BATCH_MAGIC = b"SRB1"
ERASE_MAGIC = b"SRE1"
SEP = "\x1e"
_HEAD = struct.Struct(">4sii")
_LEN = struct.Struct(">i")


class FrameError(ValueError):
    """A batch record that is not a frame this module writes (a wiring bug, never user input)."""


def shard_of(ident: str, n: int) -> int:
    """The shard of a user or item id (as `ShardKeys.shardOf` in Java)."""
    return zlib.crc32(ident.encode("utf-8", "surrogatepass")) % n


def shard_key(ident: str, keys: Sequence[int]) -> int:
    """The Flink key of the shard holding `ident`."""
    return keys[shard_of(ident, len(keys))]


def frame_key(frame: bytes) -> int:
    """The shard key a frame is addressed to (also the key of the Row it travels in)."""
    return int(struct.unpack_from(">i", frame, 4)[0])


def encode_batch(key: int, events: Sequence[bytes]) -> bytes:
    """An event batch as the JVM writes it (tests and tools; the job's batches come from `ShardBatcher`)."""
    parts = [_HEAD.pack(BATCH_MAGIC, key, len(events))]
    for e in events:
        parts.append(_LEN.pack(len(e)))
        parts.append(e)
    return b"".join(parts)


def decode_batch(frame: bytes) -> list[bytes]:
    """The raw events of an event batch, in arrival order."""
    if len(frame) < _HEAD.size:
        raise FrameError(f"batch frame of {len(frame)} bytes")
    magic, _key, n = _HEAD.unpack_from(frame, 0)
    if magic != BATCH_MAGIC:
        raise FrameError(f"not an event batch: {bytes(magic)!r}")
    out: list[bytes] = []
    pos = _HEAD.size
    mv = memoryview(frame)
    for _ in range(n):
        (size,) = _LEN.unpack_from(frame, pos)
        pos += 4
        out.append(bytes(mv[pos : pos + size]))
        pos += size
    if pos != len(frame):
        raise FrameError(f"batch frame of {len(frame)} bytes holds {pos} bytes of {n} events")
    return out


def encode_erase(key: int, request: dict[str, object]) -> bytes:
    return _HEAD.pack(ERASE_MAGIC, key, 0) + json.dumps(request, separators=(",", ":")).encode("utf-8")


def is_erase(frame: bytes) -> bool:
    return frame[:4] == ERASE_MAGIC


def decode_erase(frame: bytes) -> dict[str, object]:
    if not is_erase(frame):
        raise FrameError(f"not an erase frame: {bytes(frame[:4])!r}")
    got = json.loads(frame[_HEAD.size :])
    if not isinstance(got, dict):
        raise FrameError("erase frame without a JSON object")
    return got


def join_records(records: Iterable[str]) -> str:
    """Output records of one batch as one string (split in the JVM by `BatchSplitter`)."""
    return SEP.join(records)
