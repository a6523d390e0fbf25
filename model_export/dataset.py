"""From an event stream to index sequences: vocabulary, per-user histories, the fixed leave-last-out split,
training windows and the training-data fingerprint.

Consumes `streamrec.data.Event`-shaped objects (anything with `user_id, item_id, event_type, ts`); parsing
files
is `streamrec.data.load_events`'s job, not ours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# Event types the model knows, in embedding order; index 0 is padding (see `event_type_index`).
EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase", "rating")
TYPE_PAD = 0


class EventLike(Protocol):
    """The fields of `streamrec.data.Event` the model uses."""

    @property
    def user_id(self) -> Any: ...
    @property
    def item_id(self) -> Any: ...
    @property
    def event_type(self) -> str: ...
    @property
    def ts(self) -> int: ...


class DataError(ValueError):
    """Input events the model cannot be trained or evaluated on (with the reason)."""


def event_type_index(event_type: str) -> int:
    """1-based index of an event type (0 = padding); unknown types are an error, never silently mapped."""
    try:
        return EVENT_TYPES.index(event_type) + 1
    except ValueError:
        raise DataError(f"unknown event_type {event_type!r}; expected one of {EVENT_TYPES}") from None


@dataclass(frozen=True)
class Vocab:
    """External item id <-> contiguous index. Items are 0..n_items-1; `pad` = n_items; `unk` = n_items + 1."""

    item_ids: tuple[str, ...]  # external id (as str) of each index

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def pad(self) -> int:
        return len(self.item_ids)

    @property
    def unk(self) -> int:
        return len(self.item_ids) + 1

    def index_map(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.item_ids)}

    def to_json(self) -> dict[str, Any]:
        return {
            "item_ids": list(self.item_ids),
            "pad_index": self.pad,
            "unknown_index": self.unk,
            "n_items": self.n_items,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Vocab:
        v = Vocab(tuple(str(s) for s in data["item_ids"]))
        if data.get("pad_index", v.pad) != v.pad or data.get("unknown_index", v.unk) != v.unk:
            raise DataError("vocab.json: pad/unknown indices do not match n_items")
        return v


def build_vocab(events: Iterable[EventLike]) -> Vocab:
    """Items in order of first appearance in the (time-sorted) stream: deterministic for a given stream."""
    seen: dict[str, None] = {}
    for e in events:
        seen.setdefault(str(e.item_id), None)
    if not seen:
        raise DataError("no events: cannot build an item vocabulary")
    return Vocab(tuple(seen))


@dataclass(frozen=True)
class UserSeq:
    """One user's interactions in stream order (stable by ts, ties in input order)."""

    user_id: str
    items: np.ndarray  # (n,) int64 item indices (unk for items outside the vocab)
    types: np.ndarray  # (n,) int64 event-type indices (1-based)
    ts: np.ndarray  # (n,) int64 ms


def user_sequences(events: Sequence[EventLike], vocab: Vocab) -> list[UserSeq]:
    """Group events per user; the sort is stable so ties keep input order (ML-100K has many)."""
    imap = vocab.index_map()
    per: dict[str, list[tuple[int, int, int, int]]] = {}
    for pos, e in enumerate(events):
        if not isinstance(e.ts, int | np.integer):
            raise DataError(f"event #{pos}: ts must be integer ms, got {e.ts!r}")
        per.setdefault(str(e.user_id), []).append(
            (int(e.ts), pos, imap.get(str(e.item_id), vocab.unk), event_type_index(e.event_type))
        )
    out = []
    for uid, rows in per.items():
        rows.sort(key=lambda r: (r[0], r[1]))
        arr = np.asarray(rows, dtype=np.int64)
        out.append(UserSeq(uid, arr[:, 2].copy(), arr[:, 3].copy(), arr[:, 0].copy()))
    return out


@dataclass(frozen=True)
class Split:
    """Leave-last-out: last = test target, second-to-last = validation target, the rest training.

    Users with fewer than 3 interactions have no targets; all their interactions are training data.
    """

    users: list[UserSeq]  # every user
    eval_users: list[int]  # indices into `users` of users with >= 3 interactions

    def train_part(self, u: int) -> UserSeq:
        s = self.users[u]
        n = len(s.items) - 2 if len(s.items) >= 3 else len(s.items)
        return UserSeq(s.user_id, s.items[:n], s.types[:n], s.ts[:n])

    def inputs(self, phase: str) -> tuple[list[UserSeq], np.ndarray]:
        """Per evaluated user: the history fed to a model and the target index, for 'valid' or 'test'."""
        if phase not in ("valid", "test"):
            raise ValueError(f"phase must be 'valid' or 'test', got {phase!r}")
        cut = 2 if phase == "valid" else 1
        hist, tgt = [], []
        for u in self.eval_users:
            s = self.users[u]
            n = len(s.items) - cut
            hist.append(UserSeq(s.user_id, s.items[:n], s.types[:n], s.ts[:n]))
            tgt.append(s.items[n])
        return hist, np.asarray(tgt, dtype=np.int64)


def make_split(users: list[UserSeq]) -> Split:
    return Split(users, [i for i, s in enumerate(users) if len(s.items) >= 3])


def fingerprint(events: Iterable[EventLike]) -> str:
    """sha256 over the event stream (user, item, type, ts per event, in order): the training data's id."""
    h = hashlib.sha256()
    for e in events:
        h.update(f"{e.user_id}\x1f{e.item_id}\x1f{e.event_type}\x1f{int(e.ts)}\n".encode())
    return h.hexdigest()


def left_pad(seqs: Sequence[UserSeq], max_len: int, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Last `max_len` events of each sequence, left-padded: items (B, L) with `pad`, types and ts with 0."""
    b = len(seqs)
    items = np.full((b, max_len), pad, dtype=np.int64)
    types = np.zeros((b, max_len), dtype=np.int64)
    ts = np.zeros((b, max_len), dtype=np.int64)
    for r, s in enumerate(seqs):
        n = min(len(s.items), max_len)
        if n:
            items[r, -n:] = s.items[-n:]
            types[r, -n:] = s.types[-n:]
            ts[r, -n:] = s.ts[-n:]
    return items, types, ts


def exclusion_mask(seqs: Sequence[UserSeq], n_items: int, targets: np.ndarray | None = None) -> np.ndarray:
    """(B, N) bool: items already in each history. NOTE: the target is never excluded (repeats)."""
    mask = np.zeros((len(seqs), n_items), dtype=bool)
    for r, s in enumerate(seqs):
        known = s.items[s.items < n_items]
        mask[r, known] = True
        if targets is not None and targets[r] < n_items:
            mask[r, targets[r]] = False
    return mask


@dataclass(frozen=True)
class Windows:
    """All training windows: every position of every training history predicts its next item."""

    items: np.ndarray  # (W, L) int64 inputs, left-padded with pad
    types: np.ndarray  # (W, L) int64
    ts: np.ndarray  # (W, L) int64
    targets: np.ndarray  # (W, L) int64 next item, -100 where there is none (ignored by the loss)


def training_windows(seqs: Sequence[UserSeq], max_len: int, pad: int, unk: int, all_windows: bool = True) -> Windows:
    """Cut each history into right-aligned chunks of `max_len` (input t -> target t+1), all chunks kept.

    NOTE: SASRec trains on the last chunk only; we keep every chunk of long histories. Unknown-item targets
    are ignored by the loss (they have no output row).
    """
    rows_i, rows_t, rows_s, rows_y = [], [], [], []
    for s in seqs:
        m = len(s.items)
        e = m - 1
        while e > 0:
            st = max(0, e - max_len)
            n = e - st
            it = np.full(max_len, pad, dtype=np.int64)
            ty = np.zeros(max_len, dtype=np.int64)
            tt = np.zeros(max_len, dtype=np.int64)
            yy = np.full(max_len, -100, dtype=np.int64)
            it[-n:] = s.items[st:e]
            ty[-n:] = s.types[st:e]
            tt[-n:] = s.ts[st:e]
            y = s.items[st + 1 : e + 1].copy()
            y[y >= unk] = -100
            yy[-n:] = y
            rows_i.append(it)
            rows_t.append(ty)
            rows_s.append(tt)
            rows_y.append(yy)
            e = st if all_windows else 0
    if not rows_i:
        raise DataError("no training windows: every user has fewer than 2 training interactions")
    return Windows(np.stack(rows_i), np.stack(rows_t), np.stack(rows_s), np.stack(rows_y))
