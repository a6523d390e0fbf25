"""Item text → sentence embedding in the stream (issue 15; no Flink import: tested alone).

The job keys `items` records by item shard; this operator passes every record on at once (categories and
availability take effect without waiting) and queues the text of each item whose text changed, keyed by item id
(the latest text wins). The queue is embedded in one encoder call when the Flink function's timer fires
(`content.batch_delay_ms` of processing time after the first queued text: I/O pacing, like the Cassandra sink's
flush, not event logic), and each result leaves as an `ItemEmbedding`, broadcast to every user-operator instance
beside the item record. The user operator projects it into its model's item space (`UserOperator.apply_embedding`,
the artefact's `content_projection.npy`); the embedding itself does not depend on the model, so a hot-swapped model
re-projects the same vectors.

An item's text is embedded again only when it changed: the shard's state keeps a digest of the text last embedded
per item (`EmbedState.digests`); a republished catalogue costs no encoder calls.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from operators.schema import ItemMeta

Encode = Callable[[list[str]], np.ndarray]  # texts → embeddings [N, C] float32


def item_text_of(meta: ItemMeta) -> str | None:
    """The text an item is embedded by (title, categories, description: `model_export.content.item_text`, as in
    training), or None when the record carries no text at all."""
    from model_export.content import item_text

    text = item_text(meta.title or "", meta.categories, meta.text)
    return text or None


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class ItemEmbedding:
    """An item's text embedding made in the stream, and which encoder made it (its weights' sha256)."""

    item_id: str
    vector: np.ndarray  # [C] float32
    encoder: str
    digest: str  # of the text embedded

    def to_dict(self) -> dict[str, Any]:
        raw = np.ascontiguousarray(self.vector, dtype="<f4").tobytes()
        return {"item_id": self.item_id, "encoder": self.encoder, "digest": self.digest,
                "vector": base64.b64encode(raw).decode("ascii")}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ItemEmbedding:
        vec = np.frombuffer(base64.b64decode(d["vector"]), dtype="<f4").astype(np.float32)
        if vec.ndim != 1 or not len(vec) or not np.isfinite(vec).all():
            raise ValueError(f"embedding of {d.get('item_id')!r}: not a finite vector")
        return cls(str(d["item_id"]), vec, str(d["encoder"]), str(d["digest"]))


class Digests(Protocol):
    """item id → digest of the text last embedded (a dict, or the Flink function's MapState)."""

    def get(self, key: str) -> str | None: ...

    def __setitem__(self, key: str, value: str) -> None: ...


@dataclass
class EmbedState:
    """One item shard's embedding work: texts waiting for the next encoder call, and the digest of the text last
    embedded per item."""

    pending: dict[str, str] = field(default_factory=dict)  # item id → text to embed (latest wins)
    digests: Digests = field(default_factory=lambda: dict[str, str]())


class ItemEmbedder:
    """`step` per `items` record (the record itself, and whether a flush is now due); `flush` embeds the queue."""

    def __init__(self, encode: Encode, encoder: str, max_batch: int = 32) -> None:
        self.encode = encode
        self.encoder = encoder
        self.max_batch = max(1, max_batch)

    def step(self, state: EmbedState, meta: ItemMeta) -> tuple[EmbedState, list[ItemMeta]]:
        """Pass the record on; queue its text if it differs from the text last embedded for the item."""
        text = item_text_of(meta)
        if text is not None and state.digests.get(meta.item_id) != text_digest(text):
            state.pending[meta.item_id] = text
        else:
            state.pending.pop(meta.item_id, None)  # its latest text is embedded already (or it has none)
        return state, [meta]

    def flush(self, state: EmbedState) -> tuple[EmbedState, list[ItemEmbedding]]:
        """Embed every queued text (in encoder calls of at most `max_batch` texts), in queue order."""
        items = list(state.pending.items())
        state.pending = {}
        out: list[ItemEmbedding] = []
        for s in range(0, len(items), self.max_batch):
            chunk = items[s : s + self.max_batch]
            vecs = np.asarray(self.encode([t for _, t in chunk]), dtype=np.float32)  # [n, C]
            if vecs.shape[0] != len(chunk):
                raise ValueError(f"encoder returned {vecs.shape[0]} vectors for {len(chunk)} texts")
            for (item, text), v in zip(chunk, vecs, strict=True):
                d = text_digest(text)
                state.digests[item] = d
                out.append(ItemEmbedding(item, v, self.encoder, d))
        return state, out
