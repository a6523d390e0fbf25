"""The per-user operator: dedup, state update, recommendations (debounced), user-level fraud flags, erasure.

`UserOperator.step(state_bytes, event)` is everything the Flink keyed function does per event; the function
only loads the state, calls step, stores `result.state` (None = clear), registers `result.timer_ts` and
routes the output lists. It never raises: bad input becomes a dead-letter record, an unreadable state is
replaced by a fresh one (`state_reset=True`).

`step_many(states, events)` is the same code over a batch of events (many users, several events of one user, in
arrival order), with the same results as `step` event by event. Each event runs in two phases:

- the per-event phase (`_event_phase`, `_timer_phase`): load the state, dedupe, update it, fraud detectors, decide
  whether a list is due. It is a generator: where it needs a list (or the surprise detector's log-probs) it yields a
  `_ListOrder` (or `_LogProbs`) and is resumed with the answer;
- the per-list phase (`_serve`): the scoring of the lists a round asked for (one onnxruntime call per graph), then
  candidates, MMR re-rank and the list record (`_list_phase`), across the round's lists at once.

The driver (`_run`) keeps one queue per user: round k holds the k-th pending need of every user (a user's next event
starts once its previous one finished), so a batch of N users with one due list each costs one model call. A user's
state is decoded once per call: between its events the queue keeps it decoded (`state.settle`: the very values the
bytes would give back) and encodes it after its last one (`_finish`).

`step_many` pipelines the lists (`_Pipe`): an event waits for its list only when the surprise detector judges it (it
needs the list's log-probs); any other list is built with the next round's, from a copy of what it reads, so a user's
many events in a call cost one round, not one each. Any failure in such a call runs it again with the plain driver.
"""

from __future__ import annotations

import copy
import hashlib
import math
import weakref
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from operators import fraud
from operators.baserates import RatesView, ShardRates
from operators.cf import decayed_mass, heaviest_first, prev_items
from operators.config import OperatorsConf
from operators.dead_letter import OPERATOR_BAD_INPUT, OPERATOR_ERROR, dead_letter, operator_dead_letter
from operators.privacy import Pseudonymizer
from operators.recs import intra_list_diversity_many, knn_candidates, mmr_many, normalise_rows
from operators.schema import EVENT_TYPES, Event, ItemMeta, Rejection, event_from_mapping, parse_event
from operators.scorer import Scorer, ScoreRequest, ScoreResult
from operators.state import (
    _FIRST,
    StateError,
    UserState,
    decode,
    encode,
    id_hash,
    item_hash,
    settle,
    type_code,
)
from operators.state import NATIVE_MODULE as _native

if TYPE_CHECKING:
    from model_export.artifact import ModelArtifact
    from model_export.content import ContentPart
    from operators.cf import CfUpdate
    from operators.embed import ItemEmbedding

SOURCE = "user_operator"
_RATING_CODE = EVENT_TYPES.index("rating") + 1


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__
class StepResult:
    """What one event (timer, erasure) did for its user. `state` is its new state, bytes (None: clear it).

    Within `step_many`, a user's results but its last one hold their state decoded (`stored`: the state the user's
    next event went on from) and encode it when `state` is first read; the job reads only the final `states`."""

    stored: bytes | UserState | None  # the new state: bytes, None (clear it) or decoded (read it as `state`)
    recommendations: list[dict[str, Any]] = field(default_factory=list)  # to Kafka (compacted) + Cassandra
    fraud_flags: list[dict[str, Any]] = field(default_factory=list)  # to the fraud topic / table
    deletions: list[dict[str, Any]] = field(default_factory=list)  # erasure records for the sinks
    item_events: list[dict[str, Any]] = field(default_factory=list)  # to the item operator, keyed by item_id
    timer_ts: int | None = None  # event-time timer to register (debounced update)
    duplicate: bool = False  # the event id was seen recently: dropped, counted
    dead_letters: list[dict[str, Any]] = field(default_factory=list)  # input the operator refused
    state_reset: bool = False  # the stored state was unreadable or expired (TTL) and was started afresh
    activated: bool = False  # the account became active with this event (new, or quiet for alarm.window_ms)

    @property
    def state(self) -> bytes | None:
        """The new state's bytes (None: clear it)."""
        st = self.stored
        if isinstance(st, UserState):
            st = encode(st)
            object.__setattr__(self, "stored", st)  # encoded once
        return st


# Buffers behind the arrays `_appended` returns, with the rows in use: only the array ending at a buffer's last row in
# use may grow into it (an older, shorter view of the same buffer gets a new buffer instead).
_ROWS_IN_USE: dict[int, int] = {}  # id(buffer) → rows in use; an entry goes with its buffer (weakref.finalize)


def _appended(arr: np.ndarray, row: Any) -> np.ndarray:
    """`arr` with `row` appended (cast to its dtype), in amortised O(1) instead of a copy of every row: the result is
    a view of a buffer with room to spare (grown by an eighth when full: at most 12.5 % of a large catalogue's rows
    held spare, a copy of every row once per n / 8 new items). `arr` is never written, and neither is any
    row an array handed out earlier holds: the new row goes past the end of every earlier view, so whoever holds an
    earlier array (a list being built) keeps the rows it started with, as with a copy."""
    n = arr.shape[0]
    buf = arr.base
    if not (isinstance(buf, np.ndarray) and _ROWS_IN_USE.get(id(buf)) == n and n < buf.shape[0]
            and arr.ctypes.data == buf.ctypes.data):  # fmt: skip
        buf = np.empty((n + max(16, n >> 3), *arr.shape[1:]), dtype=arr.dtype)
        buf[:n] = arr
        weakref.finalize(buf, _ROWS_IN_USE.pop, id(buf), None)
    buf[n] = row
    _ROWS_IN_USE[id(buf)] = n + 1
    return buf[: n + 1]


def _extends(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether `a` holds `b`'s rows and maybe more: both views from the start of one `_appended` buffer, whose rows
    are never rewritten."""
    return b.base is not None and a.base is b.base and a.ctypes.data == b.ctypes.data and a.shape[0] >= b.shape[0]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _reserve(chosen: list[int], picks: list[int], slots: int, cf_new: set[int],
             src: dict[int, str] | None = None) -> list[int]:  # fmt: skip
    """A re-ranked list with at least `slots` of `picks` (one kind of reserved candidates, best first: content
    items by SASRec logit, or stream CF items by CF score) where there are any: the best the re-rank left out
    replace the list's last items that hold no reserved place (model, item-KNN, popular)."""
    kind = set(picks)
    room = slots - sum(c in kind for c in chosen)
    missing = [c for c in picks[:slots] if c not in chosen][: max(0, room)]
    if not missing:
        return chosen
    out = list(chosen)
    reserved = kind | cf_new
    if src is not None:
        reserved |= {c for c in out if src.get(c) == "content"}
    pos = [i for i in range(len(out) - 1, -1, -1) if out[i] not in reserved]
    for i, c in zip(pos, missing, strict=False):
        out[i] = c
    return out


def _kept(state: Any) -> bytes | UserState | None:
    """The state an event that changed nothing leaves (dead letters): the stored bytes (or the state a previous event
    of the call left, decoded), anything else is cleared."""
    return state if isinstance(state, bytes | UserState) else None


@dataclass(slots=True)
class _ListOrder:
    """What the per-event phase asks of the per-list phase: one recommendation list for `s`. The event is suspended
    meanwhile, so `s` does not change under the per-list phase (which reads it: fallback interests, last list)."""

    s: _ListInput  # what the per-list phase reads (a deferred order: a copy of it, taken when ordered)
    user_key: str
    event_id: str
    event_ts: int
    now: int
    debounced: bool
    known: list[int]  # the history's known item indices
    consumed: list[int]  # items excluded as consumed
    req: ScoreRequest | None  # the model's input; None: a cold-start list (no model call)
    need_logprob: bool  # score with the full graph (the surprise detector judges this event)
    may_judge: bool = True  # the event may still ask for a judgement (`_Judge`) after this list (False: it will not)
    fill: _Built | None = None  # a deferred order: the answer its event went on with, filled in when it is built


@dataclass(slots=True)
class _ListView:
    """A deferred order's copy of what the per-list phase reads of the state as it stood when the list was ordered
    (the event goes on changing the state meanwhile; the order's model input is copied too). `last_recs` is the
    previous list's hashes object itself: if that list is deferred too, it is filled in before this one is built
    (`_Pipe`)."""

    items: list[int]
    cats: dict[int, float]
    key_id: str
    last_recs: list[int]


@dataclass(slots=True)
class _LogProbs:
    """The surprise detector's own model call (the event's list was not scored by the model): full-graph log-probs."""

    req: ScoreRequest
    need_logprob: bool = True


@dataclass(slots=True)
class _Judge:
    """The surprise detector asks for its threshold on the feed (`ShardRates.surprise_threshold`) for a sequence of
    this ratio, which then joins the feed's base rate. Answered in arrival order across the call's users (`_judge`),
    so the threshold an event meets does not depend on how the stream was cut into calls."""

    ratio: float


@dataclass(slots=True)
class _Built:
    """The per-list phase's answer to a `_ListOrder`."""

    rec: dict[str, Any]  # the recommendation record
    hashes: list[int]  # the list's item hashes (the state's `last_recs`)
    logprob: np.ndarray | None  # the model's log-probs (None: cold start; empty: the fast graph scored the list)


_ListInput = UserState | _ListView  # what the per-list phase reads of a user's state (`_ListOrder.s`)
_R = TypeVar("_R")
# A phase of one event (or timer): yields what it needs from the per-list phase, is resumed with the answer
# (`_Built` for a `_ListOrder`, `ScoreResult` for `_LogProbs`), returns its result.
_Phase = Generator["_ListOrder | _LogProbs | _Judge", Any, _R]
# One unit of work of a queue: (result position, start it from the user's current state, its result if it raises).
# `start` returns the result at once (nothing to score: e.g. a dead letter) or the phase to drive.
_Task = tuple[int, Callable[[Any], "StepResult | _Phase[StepResult]"], Callable[[Any, Exception], "StepResult"]]


@dataclass(slots=True)
class _Queue:
    """One user's tasks of a call, run one after the other on its state (threaded from one task to the next)."""

    state: Any  # the state the next task starts from (after the call: the user's final state)
    tasks: deque[_Task]
    index: int = -1  # the running task's result position
    gen: _Phase[StepResult] | None = None  # the running task's phase (None: between tasks)
    before: Any = None  # the state the running task started from (kept if it fails)
    fail: Callable[[Any, Exception], StepResult] | None = None  # the running task's result if it raises
    need: _ListOrder | _LogProbs | _Judge | None = None  # what the running task waits for (None: the queue is done)
    expect: list[int] | None = None  # pipelined: the hashes object of the user's last deferred list (see `_Pipe`)


class _Redo(Exception):
    """A pipelined call met what only the plain driver handles (a failure, a state that did not settle in place):
    the call is run again without pipelining, from the states and rates it started with."""


class _Pipe:
    """Pipelined lists (`UserOperator.step_many`). An event whose list needs no log-probs (every list but the ones
    the surprise detector judges) does not wait for it: the driver takes a copy of what the per-list phase reads
    (`_ListView`), answers the order at once with an empty `_Built` (its record dict and hashes list) and the event
    goes on; the list is built with the next round's (`_list_phase` fills the record and the hashes in place). So a
    user's many events in one call no longer cost one round (one onnxruntime call) each: the rounds are only the
    ones the surprise detector's log-probs need.

    The event's state records the empty hashes list as `last_recs`; the user's later states share that very object
    (`UserState.copy` shares `last_recs`, `state.settle` keeps it in place), so once filled every state holds the
    list's hashes. `verify` checks that for each result of a queue with a deferred list (else: `_Redo`); states are
    encoded only after every list is filled."""

    __slots__ = ("deferred", "checks")

    def __init__(self) -> None:
        self.deferred: list[_ListOrder] = []  # ordered, not built yet (in order: a user's come in event order)
        self.checks: list[tuple[StepResult, list[int]]] = []  # (result, the last_recs object its state must hold)

    def defer(self, q: _Queue, o: _ListOrder) -> _Built:
        s, req = o.s, o.req
        o.s = _ListView(s.items.copy(), s.cats.copy(), s.key_id, s.last_recs)
        if req is not None:  # its types and times are the state's own lists
            o.req = ScoreRequest(req.items, list(req.types), list(req.ts), req.exclude, req.extra_exclude)
        o.fill = _Built({}, [], None)  # logprob None: a deferred order asked for none (its event never reads it)
        self.deferred.append(o)
        q.expect = o.fill.hashes
        return o.fill

    def take(self) -> list[_ListOrder]:
        got, self.deferred = self.deferred, []
        return got

    def verify(self) -> None:
        for res, hashes in self.checks:
            st = res.stored
            if not isinstance(st, UserState) or st.last_recs is not hashes:
                raise _Redo("a state did not keep its deferred list's hashes")


def _copy_rates(rates: ShardRates) -> ShardRates:
    """A copy of the base rates a pipelined call starts from (its fields are numbers and lists of numbers)."""
    c = copy.copy(rates)
    for k, v in vars(c).items():
        if isinstance(v, list):
            setattr(c, k, v.copy())
    return c


def _claimed_user(event: Any) -> str | None:
    """The user an event that is not a valid Event still names (its queue: its result carries that user's state)."""
    user = event.user_id if isinstance(event, Event) else None
    return user if isinstance(user, str) and user else None


def _rows_or_each(fn: Callable[..., Sequence[_R]], *cols: Sequence[Any]) -> list[_R | Exception]:
    """`fn` over all rows at once (columns `cols`, one item per row); if that raises, row by row, so that a failing
    row gets its exception and the others their results."""
    n = len(cols[0])
    if n == 0:
        return []
    try:
        got = fn(*cols)
    except Exception as e:  # noqa: BLE001
        if n == 1:
            return [e]
    else:
        if len(got) == n:
            return list(got)
        if n == 1:
            return [ValueError(f"{len(got)} results for 1 row")]
    out: list[_R | Exception] = []
    for j in range(n):
        try:
            one = fn(*(c[j : j + 1] for c in cols))
            out.append(one[0] if len(one) == 1 else ValueError(f"{len(one)} results for 1 row"))
        except Exception as e:  # noqa: BLE001
            out.append(e)
    return out


class UserOperator:
    """Keyed by user_id. Holds the artefact-derived lookups; per-user data lives only in the state bytes."""

    def __init__(
        self, artifact: ModelArtifact, conf: OperatorsConf, pseudonymizer: Pseudonymizer, scorer: Scorer
    ) -> None:
        self.art = artifact
        self.conf = conf
        self.pseud = pseudonymizer
        self.scorer = scorer
        self.version = artifact.version
        self.n_items = artifact.n_items
        self.unk = artifact.unknown_index
        self.hash_to_index: dict[int, int] = {}
        for i, iid in enumerate(artifact.vocab.item_ids):
            self.hash_to_index.setdefault(item_hash(iid), i)
        cats = artifact.item_categories
        self.item_cats: list[tuple[int, ...]] = (
            [tuple(item_hash(c) for c in cs) for cs in cats] if cats is not None else [()] * self.n_items
        )
        self.unit_emb = normalise_rows(artifact.item_embeddings)
        # per-artefact lookups used for every emitted list (index -> external id / state hash)
        self.item_ids: list[str] = [artifact.item_id(i) for i in range(self.n_items)]
        self.index_hash: list[int] = [item_hash(iid) for iid in self.item_ids]
        self.static_exclude = self._business_mask()
        self._static_excluded: list[bool] = self.static_exclude.tolist()  # the same mask, for scalar lookups
        self.popular = [int(i) for i in artifact.popular if 0 <= i < self.n_items and not self.static_exclude[i]]
        # Content candidates (issue 15): items the model never saw but knows by their text (the artefact's content
        # part, `streamrec train --content` / `--cold-items`), scored by the user vector through the text projection.
        # They take the indices after the model's (n_items, n_items + 1, ...) in the lists' candidates only.
        # Items embedded in the stream (`apply_embedding`) join them, projected by the same part's projection.
        self.content_part = self._content_part()
        self.content_ids, self.content_vec, self.content_bias = self._content_items()
        self.content_hash = {item_hash(i): k for k, i in enumerate(self.content_ids)}
        self.content_banned = np.zeros(len(self.content_ids), dtype=bool)
        self._live: tuple[np.ndarray, ...] | None = None  # `_content_live`'s cache
        if self.content_ids:
            self.unit_emb = np.vstack([self.unit_emb, normalise_rows(self.content_vec)])
            self.item_ids += self.content_ids
            self.index_hash += [item_hash(i) for i in self.content_ids]
        self.embeddings: dict[str, ItemEmbedding] = {}  # stream embeddings received, by item (kept across hot-swaps)
        # Item-item CF learned in the stream (operators/cf.py): published predecessors P(j) by item, inverted into
        # successors S(i): item hash → {item index: weight}, for the fallback's candidates.
        self.cf_updates: dict[str, CfUpdate] = {}
        self.cf_succ: dict[int, dict[int, float]] = {}
        self.cf_new: dict[int, dict[int, float]] = {}  # the same, only successors outside the model's vocabulary
        self.cf_in: dict[int, list[int]] = {}  # item index → the predecessor hashes it is a successor of
        # content row → (summed weights of its last published predecessors, their event time): the stream's evidence
        # on an item the model never saw (`recs.content_evidence`); `_evidence`'s arrays cached until it changes
        self.cf_mass: dict[int, tuple[float, int]] = {}
        self._mass_arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # Catalogue updates from the `items` topic, in arrival order (re-applied when the model is swapped).
        self.catalog: dict[str, ItemMeta] = {}
        self.catalog_version = 0  # item updates applied so far (carried by every recommendation)
        self.event_weight = {type_code(t): float(w) for t, w in conf.state.event_weights.items() if t in EVENT_TYPES}
        self.strong = {type_code(t) for t in conf.debounce.strong_events if t in EVENT_TYPES}
        # the feed's base rates for callers that keep none per shard (tests, a single-stream replay)
        self.rates = ShardRates()
        # `step_many` defers the lists that need no log-probs (`_Pipe`); False: the plain driver (the same results).
        # `step` (one event, what the plain consumer and `streamrec replay` call) always runs the plain driver
        self.pipeline = True

    def _content_part(self) -> ContentPart | None:
        """The artefact's content part (`streamrec train --content`); None without one or when
        `recs.content_candidates` is 0."""
        path = getattr(self.art, "path", None)
        if self.conf.recs.content_candidates <= 0 or path is None or not (path / "content.json").exists():
            return None
        from model_export.content import load_content

        return load_content(path)

    def _content_items(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The artefact's content items outside its vocabulary (ids, projected item vectors (m, d), biases (m,)),
        without those the business rules exclude; none when there is no content part."""
        d = self.art.item_embeddings.shape[1]
        none: tuple[list[str], np.ndarray, np.ndarray] = ([], np.zeros((0, d), np.float32), np.zeros(0, np.float32))
        part = self.content_part
        if part is None:
            return none
        path = self.art.path
        imap = self.art.vocab.index_map()
        banned = set(self.conf.recs.unavailable_items)
        rows = [r for r, i in enumerate(part.item_ids) if i not in imap and i not in banned]
        if not rows:
            return none
        vec, bias = part.projection.apply(part.embeddings[rows])
        if vec.shape[1] != d:
            raise ValueError(f"{path}: content projection gives {vec.shape[1]}-dim vectors, the model has {d}")
        return [part.item_ids[r] for r in rows], vec, bias

    def _business_mask(self) -> np.ndarray:
        r = self.conf.recs
        mask = np.zeros(self.n_items, dtype=bool)
        for iid in r.unavailable_items:
            i = self.art.item_index(iid)
            if 0 <= i < self.n_items:
                mask[i] = True
        allow = {item_hash(c) for c in r.allow_categories}
        deny = {item_hash(c) for c in r.deny_categories}
        if allow or deny:
            for i, cs in enumerate(self.item_cats):
                if deny and deny.intersection(cs):
                    mask[i] = True
                if allow and not allow.intersection(cs):
                    mask[i] = True
        return mask

    # ---------------------------------------------------------------- control plane

    def apply_item(self, meta: ItemMeta) -> bool:
        """An `items` topic update: availability (business filter) and categories (interests, fallback boost).
        Takes effect from the next list built. Returns whether the item is in this model's vocabulary."""
        self.catalog[meta.item_id] = meta
        self.catalog_version += 1
        c = self.content_hash.get(item_hash(meta.item_id), -1)
        if c >= 0 and self.content_ids[c] == meta.item_id and self.content_banned[c] != (not meta.available):
            banned_c = self.content_banned.copy()  # copy: as the static mask below
            banned_c[c] = not meta.available
            self.content_banned = banned_c
        i = self.art.item_index(meta.item_id)
        if not 0 <= i < self.n_items:
            return False
        self.item_cats[i] = tuple(item_hash(c) for c in meta.categories)
        banned = not meta.available or bool(self._business_mask_one(i))
        if banned != self._static_excluded[i]:
            mask = self.static_exclude.copy()  # copy: a list being built elsewhere keeps the mask it started with
            mask[i] = banned
            self.static_exclude = mask
            self._static_excluded[i] = banned
            self.popular = [int(j) for j in self.art.popular if 0 <= j < self.n_items and not mask[j]]
        return True

    def apply_embedding(self, emb: ItemEmbedding) -> bool:
        """A text embedding made in the stream (`operators.embed`): an item this model never saw becomes a content
        candidate (or its content vector is replaced), projected by the artefact's content projection. Returns
        whether it did; it does not for an item in the model's vocabulary, without a content part, for an embedding
        of another encoder than the part's, or a business-excluded item. Kept either way: a hot-swapped model
        re-applies it (`adopt_catalog`)."""
        self.embeddings[emb.item_id] = emb
        part = self.content_part
        if part is None or emb.encoder != part.encoder.get("weights_sha256"):
            return False
        if 0 <= self.art.item_index(emb.item_id) < self.n_items or emb.item_id in self.conf.recs.unavailable_items:
            return False
        if emb.vector.shape != (part.embeddings.shape[1],):
            return False
        vec, bias = part.projection.apply(emb.vector[None, :].astype(np.float64))  # [1, d], [1]
        unit = normalise_rows(vec)
        c = self.content_hash.get(item_hash(emb.item_id), -1)
        if c >= 0 and self.content_ids[c] == emb.item_id:  # copies: a list being built keeps what it started with
            cv, cb, ue = self.content_vec.copy(), self.content_bias.copy(), self.unit_emb.copy()
            cv[c], cb[c], ue[self.n_items + c] = vec[0], bias[0], unit[0]
            self.content_vec, self.content_bias, self.unit_emb = cv, cb, ue
            return True
        self._append_item(emb.item_id, vec[0], float(bias[0]), unit[0])
        if emb.item_id in self.cf_updates:  # its CF neighbours arrived before it had an index
            self.apply_cf(self.cf_updates[emb.item_id])
        return True

    def _append_item(self, item_id: str, vec: np.ndarray, bias: float, unit: np.ndarray) -> int:
        """A new item outside the model's vocabulary: the next content row (index n_items + row); a stream item
        known only by its CF neighbours gets a zero vector and bias -inf (never a content candidate; in the
        re-rank, similar to nothing) until an embedding replaces them. Copies: a list being built keeps what it
        started with: the arrays grow by `_appended` (amortised O(1): a copy of every row per new item cost ~7 ms on
        a 100,000-item model), the id lists in place (a list being built reads them only at indices its arrays
        had)."""
        meta = self.catalog.get(item_id)
        row = len(self.content_ids)
        self.content_hash.setdefault(item_hash(item_id), row)
        self.content_ids.append(item_id)
        self.content_vec = _appended(self.content_vec, vec)
        self.content_bias = _appended(self.content_bias, bias)
        self.content_banned = _appended(self.content_banned, meta is not None and not meta.available)
        self.unit_emb = _appended(self.unit_emb, unit)
        self.item_ids.append(item_id)
        self.index_hash.append(item_hash(item_id))
        return self.n_items + row

    def apply_cf(self, update: CfUpdate) -> bool:
        """Published predecessors of an item (`operators.cf`): the item becomes a successor of each of them, for
        the fallback's candidates and, outside the model's vocabulary, the lists' reserved CF place (`cf.slots`).
        An item neither in the vocabulary nor a content item is added as a stream item. Kept (a hot-swapped model
        re-applies it); False only for a business-excluded item."""
        self.cf_updates[update.item_id] = update
        j = self._list_index(update.item_id)
        if j is None:
            if update.item_id in self.conf.recs.unavailable_items:
                return False
            d = self.unit_emb.shape[1]
            j = self._append_item(update.item_id, np.zeros(d, np.float32), -np.inf, np.zeros(d, np.float32))
        if j >= self.n_items:
            self.cf_mass[j - self.n_items] = (update.mass, int(update.ts))
            self._mass_arrays = None
        cap = self.conf.cf.max_neighbours
        if _native is not None:  # the code below in C (operators/_native.c), the same dict operations
            _native.cf_apply(self.cf_succ, self.cf_new, self.cf_in, j, update.preds, cap, self.n_items)
            return True
        for h in self.cf_in.pop(j, []):
            self.cf_succ.get(h, {}).pop(j, None)
            self.cf_new.get(h, {}).pop(j, None)
        for h, w in update.preds:
            succ = self.cf_succ.setdefault(h, {})
            succ[j] = w
            if len(succ) > cap:  # bounded too: the lightest successor goes (of equal weights, the highest index)
                m = min(succ.values())
                gone = max(x for x, v in succ.items() if v == m)
                del succ[gone]
                self.cf_new.get(h, {}).pop(gone, None)
            if j >= self.n_items and j in succ:
                self.cf_new.setdefault(h, {})[j] = w
        self.cf_in[j] = [h for h, _ in update.preds]
        return True

    def _list_index(self, item_id: str) -> int | None:
        """The index lists use for an item: its vocabulary index, or n_items + its content row; None if neither."""
        i = self.art.item_index(item_id)
        if 0 <= i < self.n_items:
            return int(i)
        c = self.content_hash.get(item_hash(item_id), -1)
        return self.n_items + c if c >= 0 and self.content_ids[c] == item_id else None

    def adopt_catalog(self, other: UserOperator) -> None:
        """Carry the catalogue updates, stream embeddings and stream CF another operator (the previous model's) has
        applied."""
        for meta in other.catalog.values():
            self.apply_item(meta)
        for emb in other.embeddings.values():
            self.apply_embedding(emb)
        for upd in other.cf_updates.values():
            self.apply_cf(upd)
        self.catalog_version = other.catalog_version

    def _business_mask_one(self, i: int) -> bool:
        """The static business rules (conf `recs`) for item index `i`, with its current categories."""
        r = self.conf.recs
        if self.item_ids[i] in r.unavailable_items:
            return True
        cs = self.item_cats[i]
        deny = {item_hash(c) for c in r.deny_categories}
        allow = {item_hash(c) for c in r.allow_categories}
        return bool((deny and deny.intersection(cs)) or (allow and not allow.intersection(cs)))

    # ---------------------------------------------------------------- entry points (never raise)

    def step(self, state: bytes | None, event: Any, rates: ShardRates | None = None) -> StepResult:
        """Process one event for its user. `event` is an `Event` (also accepted: a raw message or mapping).
        `rates`: the base rates of the event's shard (default: the operator's own, one stream)."""
        rates = self.rates if rates is None else rates
        _, ts, task = self._event_task(0, event, rates)
        valid = [] if ts is None else [(0, ts)]
        return self._settle(rates, valid, self._run([_Queue(state, deque([task]))], 1, rates))[0]

    def step_many(
        self, states: dict[str, bytes | None], events: Sequence[Any], rates: ShardRates | None = None
    ) -> list[StepResult]:
        """`step` over a batch, in arrival order: the results `step` gives event by event, each user's state threaded
        through its events. `states` maps user_id to its stored state before the batch (missing: None) and is updated
        in place to each user's final state (None: clear it). An event that is not a valid `Event` gives its dead
        letter and touches no state (its result carries its user's state at that point, when it names a user, else
        None). Lists are scored across users: one onnxruntime call per graph and round (see the module docstring).
        `rates`: the base rates of the batch's shard (default: the operator's own), updated in place: each event is
        judged on the rates as they stood before it, and the alarm sees the results in arrival order."""
        rates = self.rates if rates is None else rates
        if self.pipeline and len(events) > 1:  # (one event: as `step`, the very same model calls)
            saved = _copy_rates(rates)
            try:
                return self._step_many(states, events, rates, _Pipe())
            except _Redo:
                vars(rates).update(vars(saved))  # as the call found them
        return self._step_many(states, events, rates, None)

    def _step_many(self, states: dict[str, bytes | None], events: Sequence[Any], rates: ShardRates,
                   pipe: _Pipe | None) -> list[StepResult]:  # fmt: skip
        queues: dict[str, _Queue] = {}
        alone: list[_Queue] = []  # events that name no user
        valid: list[tuple[int, int]] = []  # (position, event time) of the valid events, in arrival order
        for i, event in enumerate(events):
            user, ts, task = self._event_task(i, event, rates)
            if ts is not None:
                valid.append((i, ts))
            if user is None:
                alone.append(_Queue(None, deque([task])))
                continue
            q = queues.get(user)
            if q is None:
                q = queues[user] = _Queue(states.get(user), deque())
            q.tasks.append(task)
        out = self._run([*queues.values(), *alone], len(events), rates, pipe)
        final: dict[str, bytes | None] = {}
        for user, q in queues.items():
            # decoded if the user's last events left the state a previous one settled (duplicates, dead letters), or
            # pipelined with a deferred list (encoded once it is filled)
            if isinstance(q.state, UserState):
                try:
                    final[user] = encode(q.state)
                except Exception as e:  # noqa: BLE001 - the plain driver fails the event that made the state
                    if pipe is None:
                        raise
                    raise _Redo("a final state did not encode") from e
            else:
                final[user] = q.state
        states.update(final)
        return self._settle(rates, valid, out)

    def on_timer(self, state: bytes | None, ts: int) -> StepResult:
        """A debounce timer fired at event time `ts`: emit the suppressed update; clear state past its TTL."""
        return self.on_timer_many([(state, ts)])[0]

    def on_timer_many(self, fired: Sequence[tuple[bytes | None, int]]) -> list[StepResult]:
        """`on_timer` for each (state, ts), in order (the caller threads each result's state; one timer per user and
        call), with the lists scored together."""
        queues = [_Queue(state, deque([self._timer_task(i, ts)])) for i, (state, ts) in enumerate(fired)]
        return self._run(queues, len(queues), self.rates)  # timers never judge

    def erase(self, state: bytes | None, user_id: str, ts: int) -> StepResult:
        """Right to erasure: clear the state and tell every sink to delete what it holds for this user."""
        try:
            key = self.pseud.pseudonym(str(user_id))
        except Exception as e:  # noqa: BLE001
            dl = operator_dead_letter(OPERATOR_BAD_INPUT, f"erase: {type(e).__name__}: {e}", SOURCE, user_id)
            return StepResult(state if isinstance(state, bytes) else None, dead_letters=[dl])
        base = {"user_key": key, "key_id": self.pseud.key_id, "event_ts": int(ts) if isinstance(ts, int) else 0,
                "model_version": self.version, "event_id": None}  # fmt: skip
        deletions: list[dict[str, Any]] = [
            {"kind": "deletion", "target": "cassandra", "table": "recommendations_by_user", **base},
            {
                "kind": "deletion",
                "target": "cassandra",
                "table": "fraud_flags",
                "subject_kind": "user",
                "subject": key,
                **base,
            },  # fmt: skip
            {"kind": "tombstone", "target": "kafka", "topic": "recommendations", "key": key, **base},
        ]
        for d in deletions:
            d["deletion_id"] = _digest("erase", key, str(d["kind"]), str(d.get("table") or d.get("topic")), str(ts))
        return StepResult(None, deletions=deletions)

    # ---------------------------------------------------------------- internals

    def _event_task(self, i: int, event: Any, rates: ShardRates) -> tuple[str | None, int | None, _Task]:
        """The user an event belongs to (None: it names none), its event time (None: not a valid Event) and its
        task: the per-event phase, or its dead letter. Exceptions become OPERATOR_ERROR dead letters, state
        unchanged. A valid event is judged on `rates` as they stand now, then added to them (called in arrival
        order)."""

        def failed(state: Any, e: Exception) -> StepResult:
            dl = operator_dead_letter(OPERATOR_ERROR, f"{type(e).__name__}: {e}", SOURCE, event)
            return StepResult(_kept(state), dead_letters=[dl])

        try:
            ev = self._as_event(event)
        except Exception as e:  # noqa: BLE001 - one bad event must not stop the job; the record says why
            return _claimed_user(event), None, (i, partial(failed, e=e), failed)
        if isinstance(ev, dict):
            return _claimed_user(event), None, (i, lambda state: StepResult(_kept(state), dead_letters=[ev]), failed)
        view = rates.view(self.conf.base_rates)
        rates.observe(ev.event_type, ev.ts, self.conf.base_rates)
        return ev.user_id, ev.ts, (i, lambda state: self._event_phase(state, ev, view), failed)

    def _settle(self, rates: ShardRates, valid: list[tuple[int, int]], out: list[StepResult]) -> list[StepResult]:
        """The alarm's pass over the valid events' results, in arrival order (`ShardRates.settle`): a miscalibrated
        detector's user flags are withheld, an alarm record joins the result of the event that raised it."""
        alarm = self.conf.alarm
        for i, ts in valid:
            res = out[i]
            flags = rates.settle(fraud.USER_DETECTORS, ts, res.activated, res.fraud_flags, alarm, self.version)
            if flags is not res.fraud_flags:
                object.__setattr__(res, "fraud_flags", flags)
        return out

    def _timer_task(self, i: int, ts: int) -> _Task:
        def failed(state: Any, e: Exception) -> StepResult:
            dl = operator_dead_letter(OPERATOR_ERROR, f"on_timer: {type(e).__name__}: {e}", SOURCE, ts)
            return StepResult(_kept(state), dead_letters=[dl])

        return i, lambda state: self._timer_phase(state, ts), failed

    def _run(self, queues: list[_Queue], n: int, rates: ShardRates, pipe: _Pipe | None = None) -> list[StepResult]:
        """Drive the queues' tasks to their `n` results. Each round answers the current need of every queue at once
        (the per-list phase, `_serve`), then resumes each task until its next need; a finished task starts its queue's
        next one. Judgements against the feed's base rates (`_Judge`) are answered in arrival order in between
        (`_judge`). Never raises: a failing task (or a failing answer) is its own OPERATOR_ERROR dead letter.
        With `pipe`, lists that need no log-probs are deferred (`_Pipe`) and built with the next round's; any failure
        raises `_Redo` instead."""
        out: list[StepResult | None] = [None] * n
        for q in queues:
            self._advance(q, out, None, pipe)
        while True:
            self._judge(queues, out, rates, pipe)
            waiting = [q for q in queues if q.need is not None and not isinstance(q.need, _Judge)]
            deferred = pipe.take() if pipe is not None else []
            if not waiting and not deferred:
                break
            # a user's deferred lists come before its waiting need: each list's "changed" sees the one before it
            needs = [*deferred, *(q.need for q in waiting)]
            try:
                answers = self._serve(needs)  # type: ignore[arg-type]
            except Exception as e:  # noqa: BLE001 - a bug in the round: every event of it fails, alone
                answers = [e] * len(needs)
            if pipe is not None and any(isinstance(a, Exception) for a in answers):
                raise _Redo("a list failed")
            for q, answer in zip(waiting, answers[len(deferred) :], strict=True):
                self._advance(q, out, answer, pipe)
        assert all(r is not None for r in out) and all(q.need is None for q in queues)
        if pipe is not None:
            pipe.verify()
        return cast(list[StepResult], out)

    def _judge(self, queues: list[_Queue], out: list[StepResult | None], rates: ShardRates,
               pipe: _Pipe | None = None) -> None:  # fmt: skip
        """Answer the `_Judge` needs whose turn it is, oldest event first: a judgement waits until every earlier event
        of the call (any user's: results are indexed in arrival order) has finished, waits for its own judgement or
        is known never to ask for one.
        Each answer is the threshold before the judgement; its ratio then joins the base rate."""
        fc, br = self.conf.user_fraud, self.conf.base_rates
        while True:
            # earlier events that may still judge hold a judgement back: a running one (unless it waits for a list
            # and will not judge after it), and the next event of a queue whose running one will not judge
            blocking = 1 << 62
            for q in queues:
                nd = q.need
                if nd is None or isinstance(nd, _Judge):
                    continue
                if not isinstance(nd, _ListOrder) or nd.may_judge:
                    blocking = min(blocking, q.index)
                elif q.tasks:
                    blocking = min(blocking, q.tasks[0][0])
            ready = [q for q in queues if isinstance(q.need, _Judge) and q.index < blocking]
            if not ready:
                return
            q = min(ready, key=lambda x: x.index)
            need = q.need
            assert isinstance(need, _Judge)
            answer: Any
            try:
                answer = rates.surprise_threshold(fc)
                rates.add_ratio(need.ratio, br)
            except Exception as e:  # noqa: BLE001 - as a failing answer of the per-list phase
                answer = e
            if pipe is not None and isinstance(answer, Exception):
                raise _Redo("a judgement failed")
            self._advance(q, out, answer, pipe)

    @staticmethod
    def _advance(q: _Queue, out: list[StepResult | None], answer: Any, pipe: _Pipe | None = None) -> None:
        """Resume the queue's running task with `answer` (an exception: raised in it) until it needs something again;
        record each task that finishes and start the next one. With `pipe`: a list that needs no log-probs is
        deferred and the task goes on at once; a failing task raises `_Redo`."""
        while True:
            if q.gen is None:
                if not q.tasks:
                    q.need = None
                    return
                q.index, start, q.fail = q.tasks.popleft()
                q.before = q.state
                answer = None
                try:
                    got = start(q.state)
                except Exception as e:  # noqa: BLE001
                    if pipe is not None:
                        raise _Redo("an event failed") from e
                    got = q.fail(q.before, e)
                if isinstance(got, StepResult):
                    UserOperator._finish(q, out, got, pipe)
                    continue
                q.gen = got
            try:
                need = q.gen.throw(answer) if isinstance(answer, Exception) else q.gen.send(answer)
            except StopIteration as stop:
                res: StepResult = stop.value
            except Exception as e:  # noqa: BLE001 - one bad event must not stop the job; the record says why
                if pipe is not None:
                    raise _Redo("an event failed") from e
                assert q.fail is not None
                res = q.fail(q.before, e)
            else:
                if pipe is not None and type(need) is _ListOrder:
                    if not need.need_logprob:
                        answer = pipe.defer(q, need)
                        continue
                    q.expect = None  # its answer gives the state the list's own hashes
                q.need = need
                return
            q.gen = None
            UserOperator._finish(q, out, res, pipe)

    @staticmethod
    def _finish(q: _Queue, out: list[StepResult | None], res: StepResult, pipe: _Pipe | None = None) -> None:
        """Record a finished task's result. A state the task changed (the phase's own decoded `UserState`) is stored:
        encoded after the queue's last task, else settled (`state.settle`: decoded as the bytes would give it back,
        without them) for the next task. A failure to store it (what `encode` raises) fails the task.
        Pipelined, a queue with a deferred list settles its last state too (encoded once the list is filled)."""
        st = res.stored
        if isinstance(st, UserState) and st is not q.before:
            try:
                st = settle(st) if q.tasks or q.expect is not None else encode(st)
            except Exception as e:  # noqa: BLE001 - as the phase's own exceptions
                if pipe is not None:
                    raise _Redo("a state did not settle") from e
                assert q.fail is not None
                res = q.fail(q.before, e)
                st = res.stored
            else:
                object.__setattr__(res, "stored", st)
        if pipe is not None and q.expect is not None:
            pipe.checks.append((res, q.expect))
        out[q.index], q.state = res, st

    # ---------------------------------------------------------------- the per-list phase

    def _serve(self, needs: Sequence[_ListOrder | _LogProbs]) -> list[Any]:
        """Answer one round's needs (any users'), in order: the model first (one call per graph for all the round's
        requests), then the lists (`_list_phase`, across the round's lists). A need whose part fails gets its
        exception as the answer (its event alone becomes a dead letter)."""
        answers: list[Any] = [None] * len(needs)
        graphs: tuple[list[int], list[int]] = ([], [])  # the needs the fast graph scores, those the full one does
        for i, nd in enumerate(needs):
            if nd.req is not None:
                graphs[nd.need_logprob].append(i)
        for full, pos in zip((False, True), graphs, strict=True):
            if pos:
                scored = _rows_or_each(partial(self.scorer.score, need_logprob=full), [needs[i].req for i in pos])
                for i, res in zip(pos, scored, strict=True):
                    answers[i] = res
        pos = [i for i, nd in enumerate(needs) if isinstance(nd, _ListOrder) and not isinstance(answers[i], Exception)]
        if pos:
            built = _rows_or_each(self._list_phase, [needs[i] for i in pos], [answers[i] for i in pos])
            for i, b in zip(pos, built, strict=True):
                answers[i] = b
        return answers

    def _list_phase(self, orders: Sequence[_ListOrder], scored: Sequence[ScoreResult | None]) -> list[_Built]:
        """The lists of a round: candidates (the model's top ones, topped up from the fallback; or the cold-start
        fallback), MMR re-rank, the list record. Reads each order's state, changes none (its event records the list)."""
        r = self.conf.recs
        cands: list[list[int]] = []
        rels: list[list[float]] = []
        srcs: list[dict[int, str]] = []  # each candidate's source: model, content, cf (item-KNN) or popular
        cf_new: set[int] = set()  # stream CF candidates outside the model's vocabulary (the reserved CF place)
        content = len(self._content_live()[0]) > 0  # rows with a text embedding: without them no item is "content"
        for o, res in zip(orders, scored, strict=True):
            if res is None:
                cand, rel = self._fallback(o.s, o.known, o.consumed)
                src = {c: "cf" if x >= 2.0 else "popular" for c, x in zip(cand, rel, strict=True)}  # see _fallback
            else:
                ok = np.isfinite(res.scores)
                cand = res.items[ok][: r.candidates].tolist()
                rel = res.scores[ok][: r.candidates].tolist()
                src = dict.fromkeys(cand, "model")
                if len(cand) < r.k:  # tiny catalogues / heavy filters: top up from the fallback
                    more, more_rel = self._fallback(o.s, o.known, o.consumed + cand)
                    src.update({c: "cf" if x >= 2.0 else "popular" for c, x in zip(more, more_rel, strict=True)})
                    lo = min(rel) if rel else 0.0
                    cand += more
                    rel += [lo - 1.0 - i * 1e-3 for i in range(len(more))]
                if cand and content:
                    for c, x in self._content_candidates(o.s, res.user_vector, cand, rel, o.now):
                        cand.append(c)
                        rel.append(x)
                        src[c] = "content"
                if self.cf_new and cand and self.conf.cf.slots > 0:
                    # items the model never saw, known from the stream's co-occurrence: below every model
                    # candidate (no model score to compare), in the list only through the reserved place
                    lo = min(rel)
                    news = [j for j, x in self._cf_scores(o.s, new_only=True) if j not in src
                            and x >= self.conf.cf.slot_min_score
                            and not self.content_banned[j - self.n_items]][: self.conf.cf.slots]  # fmt: skip
                    for k, j in enumerate(news):
                        cand.append(j)
                        rel.append(lo - 1.0 - k * 1e-3)
                        src[j] = "cf"
                        cf_new.add(j)
            cands.append(cand)
            rels.append(rel)
            srcs.append(src)
        chosen = mmr_many(cands, rels, self.unit_emb, r.k, r.mmr_lambda)
        if r.content_slots > 0 and content:
            chosen = [_reserve(ch, [c for c in cand if src.get(c) == "content"], r.content_slots, cf_new)
                      for ch, cand, src in zip(chosen, cands, srcs, strict=True)]  # fmt: skip
        if cf_new:
            chosen = [_reserve(ch, [c for c in cand if c in cf_new], self.conf.cf.slots, cf_new, srcs[j])
                      for j, (ch, cand) in enumerate(zip(chosen, cands, strict=True))]  # fmt: skip
        # every list's fields before any record is built (a deferred order's record is filled in place below)
        fields = [self._list_fields(*args) for args in zip(chosen, cands, rels, srcs, strict=True)]
        # the lists after and before the re-rank, in one call (per list the same value as alone)
        ild = intra_list_diversity_many([*chosen, *(c[: r.k] for c in cands)], self.unit_emb)
        diversity, diversity_before = ild[: len(chosen)], ild[len(chosen) :]
        out = []
        for j, o in enumerate(orders):
            ids, hashes, scores, sources = fields[j]
            rec = {
                "kind": "recommendation",
                "rec_id": _digest("rec", o.user_key, o.event_id),
                "user_key": o.user_key,
                "key_id": o.s.key_id or self.pseud.key_id,
                "items": ids,
                "scores": scores,
                "source": "cold_start" if scored[j] is None else "model",
                "sources": sources,
                "model_version": self.version,
                "catalog_version": self.catalog_version,
                "event_id": o.event_id,
                "event_ts": o.event_ts,
                "emitted_ts": o.now,
                "debounced": o.debounced,
                "changed": hashes != o.s.last_recs,
                "intra_list_diversity": round(diversity[j], 6),
                "intra_list_diversity_before_rerank": round(diversity_before[j], 6),
                "mmr_lambda": r.mmr_lambda,
            }
            res = scored[j]
            if o.fill is not None:  # deferred: its event holds these objects (later orders read the hashes)
                o.fill.rec.update(rec)
                o.fill.hashes[:] = hashes
                out.append(o.fill)
            else:
                out.append(_Built(rec, hashes, None if res is None else res.next_item_logprob))
        return out

    def _list_fields(self, chosen: list[int], cand: list[int], rel: list[float], src: dict[int, str]
                     ) -> tuple[list[str], list[int], list[float], list[str]]:  # fmt: skip
        """A list record's per-item fields: external ids, their hashes (raises for an index the artefact does not
        know), the candidates' relevances rounded, their sources."""
        if _native is not None:  # the code below in C (operators/_native.c) for the usual lists, else None
            got = _native.list_fields(chosen, cand, rel, src, self.item_ids, self.index_hash)
            if got is not None:
                return cast(tuple[list[str], list[int], list[float], list[str]], got)
        n = len(self.item_ids)  # the model's items, then the content items
        score_of = dict(zip(cand, rel, strict=True))
        return ([self.item_ids[i] if 0 <= i < n else self.art.item_id(i) for i in chosen],
                [self.index_hash[i] for i in chosen],
                [round(float(score_of[i]), 6) for i in chosen],
                [src[i] for i in chosen])  # fmt: skip

    # ---------------------------------------------------------------- the per-event phase

    def _as_event(self, event: Any) -> Event | dict[str, Any]:
        if isinstance(event, Event):
            ok = (
                isinstance(event.ts, int)
                and not isinstance(event.ts, bool)
                and event.event_type in EVENT_TYPES
                and all(isinstance(x, str) and x for x in (event.event_id, event.user_id, event.item_id))
                and (event.rating is None or isinstance(event.rating, float | int))
            )
            if ok:
                return event
            return operator_dead_letter(OPERATOR_BAD_INPUT, "Event with invalid fields", SOURCE, event)
        if isinstance(event, bytes | bytearray | str):
            got: Event | Rejection = parse_event(bytes(event) if isinstance(event, bytearray) else event)
        elif isinstance(event, dict):
            got = event_from_mapping(event)
        else:
            return operator_dead_letter(
                OPERATOR_BAD_INPUT, f"expected an Event, got {type(event).__name__}", SOURCE, event
            )
        return dead_letter(got, SOURCE) if isinstance(got, Rejection) else got

    def _load(self, state: bytes | UserState | None, now: int) -> tuple[UserState, bool]:
        """The state to work on (the phase's own: decoded, or a copy of the one a previous event of the call left),
        or a fresh one (flag True) if it is unreadable or older than the TTL."""
        if state is None:
            return UserState(), False
        try:
            s = state.copy() if isinstance(state, UserState) else decode(state)
        except StateError:
            return UserState(), True
        if s.last_ts and now - s.last_ts > self.conf.state.ttl_ms:
            return UserState(), True
        return s, False

    def _event_phase(self, state: bytes | UserState | None, ev: Event, view: RatesView) -> _Phase[StepResult]:
        """One event's work: dedupe, state update, fraud detectors, debounce; its list (if due) and the surprise
        detector's log-probs are asked of the per-list phase (`yield from`). `view`: the feed's base rates before
        the event."""
        s, reset = self._load(state, ev.ts)
        h = id_hash(ev.event_id)
        if h in map(_FIRST, s.dedup):  # the event-id hashes remembered (`_update`)
            return StepResult(state, duplicate=True)
        activated = s.last_ts == 0 or ev.ts - s.last_ts >= self.conf.alarm.window_ms
        engaged_feed = view.engagement_share >= self.conf.user_fraud.unverified_min_engagement_share
        recs: list[dict[str, Any]] = []
        deb = self.conf.debounce
        if s.pending_ts and deb.interval_ms > 0 and ev.ts >= s.last_emit_ts + deb.interval_ms and s.user_key:
            # The pending list's debounce timer is due at or before this event: the list is built here, as that timer
            # builds it (from the state before this event, at the timer's time), whether or not the watermark has
            # fired the timer yet; the timer then finds nothing pending. So which lists a user gets is a function of
            # the user's events alone (as the fraud flags are), whatever batching and recovery do to the order of
            # events and watermarks: a restored job rebuilds the very lists the failed run wrote to Cassandra. Only a
            # user's last pending list (no later event) waits for the watermark.
            due_at = s.last_emit_ts + deb.interval_ms
            rec, _ = yield from self._recommend(s, s.user_key, s.pending_event_id, s.pending_ts, due_at,
                                                debounced=True, need_logprob=False)  # fmt: skip
            recs.append(rec)
        cf = self.conf.cf
        prev = prev_items(s.items, s.ts, ev.ts, item_hash(ev.item_id), cf) if cf.enabled else []
        self._update(s, ev, h)
        user_key = self.pseud.pseudonym(ev.user_id)
        s.user_key, s.key_id = user_key, self.pseud.key_id
        flags = self._user_flags(s, ev, user_key, engaged_feed)

        timer: int | None = None
        lp: np.ndarray | None = None
        scored = False  # this event's own model list was scored (its log-probs are the surprise input)
        due = s.last_emit_ts == 0 or ev.ts - s.last_emit_ts >= deb.interval_ms
        if due or type_code(ev.event_type) in self.strong or deb.interval_ms <= 0:
            # the model's log-probs (the full graph) only for an event the surprise detector judges
            due_surprise = self._surprise_due(s)  # the event is judged after its list, or never
            rec, lp = yield from self._recommend(s, user_key, ev.event_id, ev.ts, ev.ts, debounced=False,
                                                 need_logprob=due_surprise, may_judge=due_surprise)  # fmt: skip
            recs.append(rec)
            scored = True
        else:
            s.pending_ts, s.pending_event_id = ev.ts, ev.event_id
            timer = s.last_emit_ts + deb.interval_ms
        if self._surprise_due(s):
            flags += yield from self._surprise_flag(s, ev.event_id, ev.ts, user_key, lp, scored)

        # Flagged (quarantined) users still reach the item operator, marked: they never feed an item's baselines
        # there, but their clicks and ratings stay evidence of a farm or campaign they belong to.
        items: list[dict[str, Any]] = [
            {"kind": "item_event", "item_id": ev.item_id, "user_key": user_key, "key_id": self.pseud.key_id,
             "event_id": ev.event_id, "event_type": ev.event_type, "ts": ev.ts, "rating": ev.rating,
             "account_first_ts": s.first_ts, "account_events": s.n_events,
             "quarantined": s.flagged_until > ev.ts, "unverified": engaged_feed and self._unverified(s, ev)}
        ]  # fmt: skip
        if prev:
            items[0]["prev"] = prev
        # s: the driver stores it (`_finish`)
        return StepResult(s, recommendations=recs, fraud_flags=flags, item_events=items, timer_ts=timer,
                          state_reset=reset, activated=activated)  # fmt: skip

    def _timer_phase(self, state: bytes | None, ts: int) -> _Phase[StepResult]:
        """One debounce timer's work: the suppressed list (asked of the per-list phase), or nothing."""
        if state is None:
            return StepResult(None)
        try:
            s = decode(state)
        except StateError:
            return StepResult(None, state_reset=True)
        if s.last_ts and ts - s.last_ts > self.conf.state.ttl_ms:
            return StepResult(None, state_reset=True)
        if not s.pending_ts or ts < s.last_emit_ts + self.conf.debounce.interval_ms:
            return StepResult(state)
        user_key = s.user_key
        # no fraud flags here: which lists a timer emits follows the watermark, the detectors follow the events
        rec, _ = yield from self._recommend(s, user_key, s.pending_event_id, s.pending_ts, ts, debounced=True,
                                            need_logprob=False)  # fmt: skip
        return StepResult(s, recommendations=[rec])  # s: stored by the driver (`_finish`)

    def _update(self, s: UserState, ev: Event, h: int) -> None:
        c = self.conf.state
        ih = item_hash(ev.item_id)
        idx = self.hash_to_index.get(ih, self.unk)
        code = type_code(ev.event_type)
        # the code below in C (operators/_native.c) for the usual states
        if _native is not None and _native.update(
                s, ev.ts, ih, code, float(ev.rating) if ev.rating is not None else 0.0, h,
                self.item_cats[idx] if 0 <= idx < self.n_items else None, self.event_weight.get(code, 1.0),
                max(c.interest_half_life_ms, 1), c.history_len, c.dedup_window_ms, c.dedup_max_ids,
                c.top_categories):  # fmt: skip
            return
        if s.first_ts == 0:
            s.first_ts = ev.ts
        new_last = max(s.last_ts, ev.ts)
        # decay interests to the new reference time, then add this event's weight to its item's categories
        if s.cats and new_last > s.last_ts:
            f = 0.5 ** ((new_last - s.last_ts) / max(c.interest_half_life_ms, 1))
            s.cats = {k: v * f for k, v in s.cats.items()}
        if 0 <= idx < self.n_items:
            w = self.event_weight.get(code, 1.0) * 0.5 ** ((new_last - ev.ts) / max(c.interest_half_life_ms, 1))
            for ch in self.item_cats[idx]:
                s.cats[ch] = s.cats.get(ch, 0.0) + w
            if len(s.cats) > c.top_categories:
                s.cats = dict(sorted(s.cats.items(), key=lambda kv: -kv[1])[: c.top_categories])
        s.last_ts = new_last
        s.n_events += 1
        # the sequence stays sorted by event time (late events are inserted, not appended)
        pos = len(s.ts)
        while pos > 0 and s.ts[pos - 1] > ev.ts:
            pos -= 1
        s.items.insert(pos, ih)
        s.ts.insert(pos, ev.ts)
        s.types.insert(pos, code)
        s.ratings.insert(pos, float(ev.rating) if ev.rating is not None else 0.0)
        if len(s.items) > c.history_len:
            cut = len(s.items) - c.history_len
            del s.items[:cut], s.ts[:cut], s.types[:cut], s.ratings[:cut]
        s.dedup.append((h, ev.ts))
        lo = s.last_ts - c.dedup_window_ms
        s.dedup = [d for d in s.dedup if d[1] >= lo][-c.dedup_max_ids :]

    # ---------------------------------------------------------------- recommendations

    def _indices(self, s: UserState) -> list[int]:
        return [self.hash_to_index.get(h, self.unk) for h in s.items]

    def _recommend(
        self,
        s: UserState,
        user_key: str,
        event_id: str,
        event_ts: int,
        now: int,
        debounced: bool,
        need_logprob: bool,
        may_judge: bool = True,
    ) -> _Phase[tuple[dict[str, Any], np.ndarray | None]]:
        """Ask the per-list phase for one recommendation list and record it in the state: the list record + the
        model's log-probs (None for a cold-start list; with `need_logprob` those of the full graph, else empty: the
        fast graph scored the list, the same items and scores)."""
        r = self.conf.recs
        idx = self._indices(s)
        known = [i for i in idx if 0 <= i < self.n_items]
        consumed = sorted(set(known)) if r.exclude_consumed else []
        req = None
        if len(known) >= r.min_history:  # else a cold-start list
            req = ScoreRequest(idx, s.types, s.ts, consumed, extra_exclude=self.static_exclude)
        built: _Built = yield _ListOrder(s, user_key, event_id, event_ts, now, debounced, known, consumed, req,
                                         need_logprob, may_judge)  # fmt: skip
        s.last_emit_ts = now
        s.pending_ts, s.pending_event_id = 0, ""
        s.last_recs = built.hashes
        return built.rec, built.logprob

    def _content_live(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, their vectors, their biases) of the content items that can be candidates: those with a finite bias
        (a text embedding; a stream item known only by its CF neighbours has -inf until one arrives). Compacted once
        per change of the content arrays, which are replaced on change, never written in place; when they only
        grew (`_append_item`: the same buffer, longer), the rows added since are checked alone."""
        c = self._live
        bias, vec = self.content_bias, self.content_vec
        if c is not None and c[0] is bias and c[1] is vec:
            return c[2], c[3], c[4]
        if c is not None and _extends(bias, c[0]) and _extends(vec, c[1]):
            k = c[0].shape[0]
            rows, live_vec, live_bias = c[2], c[3], c[4]
            for r in (k + np.flatnonzero(np.isfinite(bias[k:]))).tolist():
                rows, live_vec = _appended(rows, r), _appended(live_vec, vec[r])
                live_bias = _appended(live_bias, bias[r])
        else:
            rows = np.flatnonzero(np.isfinite(bias))
            live_vec, live_bias = np.ascontiguousarray(vec[rows]), bias[rows]
        self._live = (bias, vec, rows, live_vec, live_bias)
        return rows, live_vec, live_bias

    def _content_candidates(self, s: _ListInput, user_vector: np.ndarray, cand: list[int],
                            rel: list[float], now: int) -> list[tuple[int, float]]:  # fmt: skip
        """Up to `recs.content_candidates` content items (not consumed, not unavailable) with the relevance of the
        slot SASRec alone would give them among the model's candidates: item j scores u · ê_j + b̂_j, plus
        `recs.content_evidence` × log(1 + m_j) once the stream has seen it consumed (`_evidence`: the text's guess
        at its logit, corrected by what the stream saw); if p of the model's candidates score higher on the SASRec
        logit (u · e_i + b_i, without the item-KNN blend, which no new item can have), j gets a relevance just
        above the p-th candidate's; below all of them it is left out. The blended scores of the model's candidates
        stay as they are."""
        k = self.conf.recs.content_candidates
        rows, vec, bias = self._content_live()  # (m,) content rows with a text embedding, ascending
        if not len(rows):
            return []
        u = np.asarray(user_vector, dtype=np.float32)
        logit = vec @ u + bias  # (m,)
        beta = self.conf.recs.content_evidence
        if beta and self.cf_mass:
            logit = logit + np.float32(beta) * self._evidence(rows, now)
        banned = self.content_banned[rows]
        if banned.any():
            logit[banned] = -np.inf
        get = self.content_hash.get
        seen = [c for c in map(get, s.items) if c is not None]
        if seen:
            logit[np.isin(rows, seen)] = -np.inf  # consumed
        if k < len(logit):
            top = np.argpartition(-logit, k - 1)[:k]
            top = top[np.argsort(-logit[top], kind="stable")]
        else:
            top = np.argsort(-logit, kind="stable")
        top = top[np.isfinite(logit[top])]
        if not len(top):
            return []
        model = np.asarray(cand, dtype=np.int64)  # the model's candidates and the fallback's: all < n_items
        warm = self.art.item_embeddings[model] @ u + self.art.item_bias[model]  # (len(cand),)
        slots = (warm[None, :] > logit[top][:, None]).sum(axis=1)  # (len(top),) model candidates above each
        return [(self.n_items + int(j), float(rel[p]) + 1e-6)
                for j, p in zip(rows[top].tolist(), slots.tolist(), strict=True) if p < len(rel)]

    def _evidence(self, rows: np.ndarray, now: int) -> np.ndarray:
        """(len(rows),) float32: log(1 + m) per content row, m its CF mass (`cf_mass`) decayed by `cf.half_life_ms`
        from its publication's time to `now` (never grown: a publication after `now` counts undecayed); 0 for a row
        with no publication."""
        if self._mass_arrays is None:
            keys = sorted(self.cf_mass)
            self._mass_arrays = (np.array(keys, dtype=np.int64),
                                 np.array([self.cf_mass[r][0] for r in keys], dtype=np.float64),
                                 np.array([self.cf_mass[r][1] for r in keys], dtype=np.int64))  # fmt: skip
        mrows, mass, ts = self._mass_arrays
        out = np.zeros(len(rows), dtype=np.float32)
        pos = np.searchsorted(rows, mrows)
        ok = pos < len(rows)
        ok[ok] = rows[pos[ok]] == mrows[ok]
        if ok.any():
            out[pos[ok]] = np.log1p(decayed_mass(mass[ok], ts[ok], now, self.conf.cf.half_life_ms))
        return out

    def _cf_candidates(self, s: _ListInput, scores: dict[int, float]) -> None:
        """Add to `scores` (item index → score, item-KNN's) the best `cf.candidates` stream CF successors."""
        for j, x in self._cf_scores(s)[: self.conf.cf.candidates]:
            scores[j] = scores.get(j, 0.0) + x

    def _cf_scores(self, s: _ListInput, decay: float = 0.8, new_only: bool = False) -> list[tuple[int, float]]:
        """The stream CF successors of the user's most recent items (`recs.knn_recent`, distinct), best first:
        each history item's successors scaled to its heaviest, times `cf.weight` and decay^age; none the user has
        consumed. `new_only`: only those outside the model's vocabulary."""
        cf = self.conf.cf
        pool = self.cf_new if new_only else self.cf_succ
        if _native is not None:  # the code below up to the sort, in C (operators/_native.c), for the usual inputs
            got = _native.cf_scores(s.items, pool, self.cf_succ, cf.weight, decay, self.conf.recs.knn_recent,
                                    self.index_hash)  # fmt: skip
            if got is not None:
                return heaviest_first(got)
        recent: list[int] = []
        for h in reversed(s.items):
            if h not in recent:
                recent.append(h)
            if len(recent) >= self.conf.recs.knn_recent:
                break
        add: dict[int, float] = {}
        for age, h in enumerate(recent):
            succ = pool.get(h)
            if not succ:
                continue
            top = max(self.cf_succ[h].values()) or 1.0
            w = cf.weight * decay**age / top
            for j, x in succ.items():
                add[j] = add.get(j, 0.0) + w * x
        if add:
            seen = set(s.items)
            index_hash = self.index_hash
            add = {j: x for j, x in add.items() if index_hash[j] not in seen}
        return heaviest_first(add)  # best first, ties by index

    def _fallback(self, s: _ListInput, known: list[int], exclude: list[int]) -> tuple[list[int], list[float]]:
        """Cold start: item-KNN neighbours of the recent known items first, then popular items boosted by the
        user's category interests. Relevance puts every KNN candidate above every popular one."""
        r = self.conf.recs
        banned = set(exclude)
        knn = knn_candidates(
            known, self.art.knn_neighbours, self.art.knn_similarities, self.n_items, r.knn_recent, r.knn_per_item
        )
        if self.cf_succ:
            self._cf_candidates(s, knn)
        cand: list[int] = []
        rel: list[float] = []
        n = self.n_items
        for j, sc in sorted(knn.items(), key=lambda kv: -kv[1]):
            if j not in banned and not (self._static_excluded[j] if j < n else self.content_banned[j - n]):
                cand.append(j)
                rel.append(2.0 + sc)
                banned.add(j)
        need = max(r.candidates - len(cand), r.k)
        total = sum(s.cats.values()) or 1.0
        pops: list[tuple[float, int]] = []
        n_pop = max(len(self.popular), 1)
        cats = s.cats
        item_cats = self.item_cats
        for rank, j in enumerate(self.popular):
            if j in banned:
                continue
            # sum(map(...)) adds the very same terms in the same order as a generator would, without its frames
            interest = sum(map(cats.get, item_cats[j], repeat(0.0))) / total if cats else 0.0
            pops.append(((1.0 - rank / n_pop) * (1.0 + r.category_boost * interest), j))
            if len(pops) >= 4 * need:
                break
        pops.sort(key=lambda t: -t[0])
        for sc, j in pops[:need]:
            cand.append(j)
            rel.append(min(sc / (1.0 + r.category_boost), 1.0))
        return cand, rel

    # ---------------------------------------------------------------- fraud

    def _raise(
        self, s: UserState, det: fraud.Detection, event_id: str, event_ts: int, user_key: str
    ) -> list[dict[str, Any]]:
        """A flag dict if the detection is past threshold and the detector is not in its cooldown."""
        fc = self.conf.user_fraud
        if det.score < fc.flag_threshold:
            return []
        slot = fraud.USER_DETECTORS.index(det.detector)
        if s.flag_last[slot] and event_ts - s.flag_last[slot] < fc.cooldown_ms:
            s.flagged_until = max(s.flagged_until, event_ts + fc.quarantine_ms)
            return []
        s.flag_last[slot] = event_ts
        s.flagged_until = max(s.flagged_until, event_ts + fc.quarantine_ms)
        return [
            {"kind": "fraud_flag", "flag_id": fraud.flag_id("user", user_key, det.detector, event_id),
             "subject_kind": "user", "subject": user_key, "user_key": user_key, "key_id": self.pseud.key_id,
             "detector": det.detector, "score": round(det.score, 4), "reasons": [det.detector],
             "evidence": det.evidence, "model_version": self.version, "event_id": event_id,
             "event_ts": event_ts}
        ]  # fmt: skip

    def _unverified(self, s: UserState, ev: Event) -> bool:
        """A rating with no view/click/cart/purchase of its item in the kept history (judged only on feeds whose
        genuine ratings follow one: the caller checks the feed's engagement share)."""
        if ev.event_type != "rating":
            return False
        ih = item_hash(ev.item_id)
        return not any(h == ih and c != _RATING_CODE for h, c in zip(s.items, s.types, strict=True))

    def _user_flags(self, s: UserState, ev: Event, user_key: str, engaged_feed: bool) -> list[dict[str, Any]]:
        fc = self.conf.user_fraud
        if not fc.enabled:
            return []
        out: list[dict[str, Any]] = []
        floor = fc.flag_threshold  # `_raise` drops a detection below it: none is built
        for det in (fraud.velocity(s, fc, ev.ts, floor), fraud.regularity(s, fc, floor),
                    fraud.rating_anomaly(s, fc, ev.ts, engaged_feed, floor)):  # fmt: skip
            if det is not None:
                out += self._raise(s, det, ev.event_id, ev.ts, user_key)
        return out

    def _surprise_due(self, s: UserState) -> bool:
        """Whether the surprise detector judges the user's current event (every `surprise_every`-th event of the
        user): then, and only then, the event's list is scored by the full graph, for its log-probs."""
        fc = self.conf.user_fraud
        return fc.enabled and fc.surprise_every > 0 and s.n_events % fc.surprise_every == 0

    def _surprise_flag(
        self, s: UserState, event_id: str, event_ts: int, user_key: str, lp: np.ndarray | None, scored: bool
    ) -> _Phase[list[dict[str, Any]]]:
        """Model surprise on a fixed schedule: every `surprise_every`-th event of the user (its event count), judged
        on the model's log-probs for the sequence as of that event, so a flag is a function of the user's events
        alone. When the event's own list was scored those log-probs are reused (the very same model input);
        otherwise one extra model call (asked of the per-list phase). Lists scored by debounce timers are never used:
        when a timer fires follows the watermark. Called for an event the detector judges (`_surprise_due`)."""
        fc = self.conf.user_fraud
        if not scored:
            idx = self._indices(s)
            known = [i for i in idx if 0 <= i < self.n_items]
            # the model path of `_recommend` needs min_history known items; fewer known items (or a shorter model
            # input) than surprise_min_events can never give enough transitions, so the call is skipped
            need = max(self.conf.recs.min_history, fc.surprise_min_events)
            if len(known) < need or min(len(idx), self.art.max_len) - 1 < fc.surprise_min_events:
                return []
            consumed = sorted(set(known)) if self.conf.recs.exclude_consumed else []  # as `_recommend` asks
            req = ScoreRequest(idx, s.types, s.ts, consumed, extra_exclude=self.static_exclude)
            res: ScoreResult = yield _LogProbs(req)
            lp = res.next_item_logprob
        if lp is None:
            return []
        stats = fraud.surprise_stats(lp, self.n_items, fc)
        if stats is None:
            return []
        threshold, learned = yield _Judge(stats[1])  # the feed's base rate, in arrival order
        # with surprise_confirm, the user's previous judgement must have been past the threshold too: the lower
        # of the two ratios is judged (one odd stretch of a genuine history is not enough)
        prev = s.surprise / math.log(1.0 / self.n_items) if s.surprise_n and self.n_items > 1 else None
        judged = stats
        if fc.surprise_confirm:
            judged = (stats[0], min(stats[1], prev) if prev is not None else 0.0, stats[2])
        det = fraud.surprise_detection(judged, threshold, self.n_items, learned)
        s.surprise = stats[0] if math.isfinite(stats[0]) else 0.0
        s.surprise_n = stats[2]
        return self._raise(s, det, event_id, event_ts, user_key)
