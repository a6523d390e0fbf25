"""`streamrec data attack`: inject literature-standard shilling attack profiles into a rating data set.

Real rating data (MovieLens) has no labelled abuse, and the simulator's campaigns are our own invention; the attack
models below are the ones the shilling literature evaluates detectors against, so a detector's numbers on them can
be compared with published ones.

- Lam & Riedl 2004, "Shilling recommender systems for fun and profit" (WWW 2004): the **random** attack (filler
  ratings ~ N(global mean, global sd)) and the **average** attack (filler item i ~ N(mean_i, sd_i)).
- Mobasher, Burke, Bhaumik & Williams 2007, "Toward trustworthy recommender systems: an analysis of attack models
  and algorithm robustness" (ACM TOIT 7(4)): the **bandwagon** attack (the most popular items rated r_max, random
  filler), and the two sizes every result is reported against: *attack size* (profiles as a share of the genuine
  users) and *filler size* (share of the catalogue each profile rates besides the targets and selected items).

Every profile rates each target r_max (push) or r_min (nuke) of the data set's own rating scale. Filler items are
drawn uniformly from the catalogue without replacement, excluding targets and selected items; filler ratings are
rounded to the scale's step and clipped to [r_min, r_max].

NOTE: where this departs from the papers or adds what they leave open:
- Item statistics (mean_i, sd_i) are those of the genuine data, the full-knowledge attacker of both papers; items
  with fewer than 2 ratings use the global mean and sd. SDs are sample SDs (ddof 1).
- Bandwagon "popular" = most-rated items (Mobasher et al. also allow "widely liked"), skipping targets; they are
  rated r_max in nuke attacks too (the papers' nuke variant, the reverse bandwagon with disliked items at r_min, is
  not implemented).
- Targets (the papers pick them by hand or at random from a popularity band): uniform among items with at least
  `MIN_TARGET_RATINGS` ratings whose mean is <= the global mean (push) or >= it (nuke): an item worth pushing or
  nuking, with enough ratings that its mean means something.
- Time, which the papers do not model (their profiles are inserted at once): the attack starts at a fraction `at`
  of the genuine data's time span; profiles start within `burst_hours` of it (burst) or uniformly over
  `spread_days` (spread); a profile's ratings form one session, with exponential gaps of mean `gap_s` seconds, in
  random order. Attacker ids continue the data set's own numbering, in order of first rating (new accounts).
- Attack events carry no session id (MovieLens ratings have none) and, if the data's timestamps are whole seconds,
  whole-second timestamps: nothing but their behaviour tells them apart.

Deterministic: a pure function of the data and the options (seed included). Targets are drawn from their own
random stream, so the same seed picks the same targets for every kind, size and timing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from operators.schema import Event, ItemMeta

if TYPE_CHECKING:  # numpy is imported where it is used: the CLI imports this module to register its options
    import numpy as np

KINDS = ("random", "average", "bandwagon")
DIRECTIONS = ("push", "nuke")
TIMINGS = ("burst", "spread")
MIN_TARGET_RATINGS = 10  # ratings a target needs (its mean must mean something)
GROUP_ID = "attack-0"

REFERENCES = (
    "Lam & Riedl 2004, 'Shilling recommender systems for fun and profit' (WWW 2004): random and average attacks; "
    "Mobasher, Burke, Bhaumik & Williams 2007, 'Toward trustworthy recommender systems' (ACM TOIT 7(4)): "
    "bandwagon attack, attack size and filler size"
)


class AttackError(ValueError):
    """Options or data that cannot make the requested attack."""


@dataclass(frozen=True)
class AttackOptions:
    """One attack: the model, its sizes, its direction and its timing."""

    kind: str = "random"  # attack model: random | average | bandwagon
    size: float = 0.03  # attack profiles as a share of the genuine users, in (0, 1]: round(size * users)
    filler: float = 0.05  # filler items per profile as a share of the catalogue, in (0, 1]
    direction: str = "push"  # push: targets rated r_max; nuke: targets rated r_min
    targets: int = 1  # target items; every profile rates all of them
    timing: str = "burst"  # burst: profiles start within burst_hours; spread: over spread_days
    seed: int = 0  # random seed (targets, profiles, times)
    at: float = 0.5  # attack start, as a fraction of the genuine data's time span, in [0, 1]
    burst_hours: float = 6.0  # burst: every profile starts within this many hours of the attack start
    spread_days: float = 28.0  # spread: profile starts uniform over this many days from the attack start
    gap_s: float = 20.0  # mean gap (exponential) between a profile's consecutive ratings, seconds
    bandwagon_items: int = 3  # bandwagon: most-rated items every profile rates r_max

    def check(self) -> None:
        """Raise AttackError naming the first bad option."""
        if self.kind not in KINDS:
            raise AttackError(f"unknown attack kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.direction not in DIRECTIONS:
            raise AttackError(f"unknown direction {self.direction!r}: use push or nuke")
        if self.timing not in TIMINGS:
            raise AttackError(f"unknown timing {self.timing!r}: use burst or spread")
        for name in ("size", "filler"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 < v <= 1):
                raise AttackError(f"--{name} must be in (0, 1] (a share), got {v}")
        if not (math.isfinite(self.at) and 0 <= self.at <= 1):
            raise AttackError(f"--at must be in [0, 1] (a fraction of the data's time span), got {self.at}")
        if self.targets < 1:
            raise AttackError(f"--targets must be >= 1, got {self.targets}")
        if self.bandwagon_items < 1 and self.kind == "bandwagon":
            raise AttackError(f"--bandwagon-items must be >= 1 for a bandwagon attack, got {self.bandwagon_items}")
        for name in ("burst_hours", "spread_days", "gap_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise AttackError(f"--{name.replace('_', '-')} must be > 0, got {v}")
        if self.seed < 0:
            raise AttackError(f"--seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class Dataset:
    """A genuine data set as loaded: events in original time (sorted by ts), item metadata, its source."""

    events: list[Event]
    items: list[ItemMeta]
    source: str  # the path as given (recorded in labels)
    movielens: bool  # a MovieLens directory/file (attack event ids then follow its `ml-...` pattern)


@dataclass(frozen=True)
class Attack:
    """The attacked data set: every event (shifted into the contract, sorted by ts), items, labels."""

    events: list[Event]
    items: list[ItemMeta]
    labels: dict[str, Any]
    shift_ms: int


def load_dataset(path: str | Path) -> Dataset:
    """The data set at `path` (any format `load_events` reads)."""
    from streamrec.data import load_events, load_items, movielens

    return Dataset(load_events(path), load_items(path), str(path), movielens.detect(path) is not None)


def _id_key(s: str) -> tuple[int, int, str]:
    return (0, int(s), "") if s.isascii() and s.isdigit() else (1, 0, s)


def _scale(values: np.ndarray) -> tuple[float, float, float | None]:
    """(r_min, r_max, step) of the observed ratings; step None if they are neither whole nor half stars."""
    import numpy as np

    lo, hi = float(values.min()), float(values.max())
    if np.all(values == np.round(values)):
        return lo, hi, 1.0
    if np.all(values * 2 == np.round(values * 2)):
        return lo, hi, 0.5
    return lo, hi, None


def _round_to_scale(v: np.ndarray, lo: float, hi: float, step: float | None) -> np.ndarray:
    import numpy as np

    if step is not None:
        v = np.round(v / step) * step
    return np.clip(v, lo, hi)


_ID_RE = re.compile(r"([^0-9]*)([0-9]+)")


def new_user_ids(existing: list[str], n: int) -> list[str]:
    """`n` ids that continue the data set's numbering (MovieLens: max id + 1, ...), none colliding with `existing`."""
    matches = [_ID_RE.fullmatch(u) for u in existing]
    prefixes = {m.group(1) for m in matches if m is not None}
    if not existing or any(m is None for m in matches) or len(prefixes) != 1:
        raise AttackError(
            "cannot make attacker ids that look like the genuine ones: user ids must all be a common prefix and a "
            "number (MovieLens: integers)"
        )
    ms = [m for m in matches if m is not None]
    prefix = prefixes.pop()
    widths = {len(m.group(2)) for m in ms}
    width = widths.pop() if len(widths) == 1 and any(m.group(2).startswith("0") for m in ms) else 0
    start = max(int(m.group(2)) for m in ms) + 1
    out = [f"{prefix}{start + k:0{width}d}" for k in range(n)]
    if set(out) & set(existing):  # cannot happen (numbers above the max); a bug if it does
        raise AssertionError("attacker ids collide with genuine ones")
    return out


@dataclass(frozen=True)
class _Stats:
    """What a full-knowledge attacker knows of the genuine ratings, per catalogue index."""

    catalogue: list[str]  # item ids, natural order
    count: np.ndarray  # (n_items,) ratings
    mean: np.ndarray  # (n_items,) mean rating (global mean if unrated)
    sd: np.ndarray  # (n_items,) sample sd (global sd if < 2 ratings)
    g_mean: float
    g_sd: float
    r_min: float
    r_max: float
    step: float | None


def _stats(ds: Dataset) -> _Stats:
    import numpy as np

    ratings = [e for e in ds.events if e.event_type == "rating" and e.rating is not None]
    if not ratings:
        raise AttackError(f"{ds.source}: no rating events; a shilling attack needs a rating data set")
    ids = {it.item_id for it in ds.items} | {e.item_id for e in ds.events}
    catalogue = sorted(ids, key=_id_key)
    index = {it: i for i, it in enumerate(catalogue)}
    idx = np.array([index[e.item_id] for e in ratings], dtype=np.int64)
    vals = np.array([float(e.rating) for e in ratings if e.rating is not None], dtype=np.float64)
    n = len(catalogue)
    g_mean = float(vals.mean())
    g_sd = float(vals.std(ddof=1)) if len(vals) > 1 else 1.0
    count = np.bincount(idx, minlength=n)
    sums = np.bincount(idx, weights=vals, minlength=n)
    sq = np.bincount(idx, weights=vals * vals, minlength=n)
    mean = np.where(count > 0, sums / np.maximum(count, 1), g_mean)
    var = (sq - count * mean * mean) / np.maximum(count - 1, 1)
    sd = np.where(count >= 2, np.sqrt(np.maximum(var, 0.0)), g_sd)
    mean = np.where(count >= 2, mean, g_mean)  # Lam & Riedl's average attack: item stats need >= 2 ratings
    r_min, r_max, step = _scale(vals)
    return _Stats(catalogue, count, mean, sd, g_mean, g_sd, r_min, r_max, step)


def _pick_targets(st: _Stats, opts: AttackOptions) -> np.ndarray:
    import numpy as np

    ok = st.count >= MIN_TARGET_RATINGS  # such items' st.mean is their own mean
    ok &= st.mean <= st.g_mean if opts.direction == "push" else st.mean >= st.g_mean
    eligible = np.flatnonzero(ok)
    if len(eligible) < opts.targets:
        cmp = "<=" if opts.direction == "push" else ">="
        raise AttackError(
            f"{len(eligible)} items have >= {MIN_TARGET_RATINGS} ratings and a mean {cmp} the global mean "
            f"({st.g_mean:.3f}): not enough for {opts.targets} {opts.direction} target(s)"
        )
    rng = np.random.default_rng([opts.seed, 1])
    return np.sort(rng.choice(eligible, size=opts.targets, replace=False))


def _pick_selected(st: _Stats, opts: AttackOptions, targets: np.ndarray) -> np.ndarray:
    import numpy as np

    if opts.kind != "bandwagon":
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(st.count)), -st.count))  # most rated first, ties in catalogue order
    order = order[~np.isin(order, targets) & (st.count[order] > 0)]
    if len(order) < opts.bandwagon_items:
        raise AttackError(f"only {len(order)} rated non-target items for {opts.bandwagon_items} bandwagon items")
    return order[: opts.bandwagon_items]


def inject(ds: Dataset, opts: AttackOptions) -> Attack:
    """The data set with one attack's profiles added, and its labels (the simulator's format)."""
    import numpy as np

    opts.check()
    if not ds.events:
        raise AttackError(f"{ds.source}: no events")
    st = _stats(ds)
    n_cat = len(st.catalogue)
    genuine_users = sorted({e.user_id for e in ds.events}, key=_id_key)
    n_profiles = round(opts.size * len(genuine_users))
    if n_profiles < 1:
        raise AttackError(
            f"--size {opts.size} x {len(genuine_users)} genuine users rounds to 0 attack profiles: raise --size"
        )
    targets = _pick_targets(st, opts)
    selected = _pick_selected(st, opts, targets)
    pool = np.setdiff1d(np.arange(n_cat), np.concatenate([targets, selected]))
    n_fill = min(round(opts.filler * n_cat), len(pool))
    if n_fill < 1:
        raise AttackError(
            f"--filler {opts.filler} x {n_cat} catalogue items rounds to 0 filler items (or no item is left "
            "besides targets and selected items): raise --filler"
        )
    extreme = st.r_max if opts.direction == "push" else st.r_min

    t0, t1 = ds.events[0].ts, ds.events[-1].ts
    whole_s = all(e.ts % 1000 == 0 for e in ds.events)
    start = t0 + round(opts.at * (t1 - t0))
    start -= start % 1000 if whole_s else 0  # so whole-second ratings never fall before it
    window_ms = opts.burst_hours * 3_600_000 if opts.timing == "burst" else opts.spread_days * 86_400_000
    rng = np.random.default_rng([opts.seed, 2])
    starts = np.sort(start + rng.uniform(0, window_ms, n_profiles))  # ids follow arrival order
    user_ids = new_user_ids(genuine_users, n_profiles)

    fixed_items = np.concatenate([targets, selected])
    fixed_vals = np.concatenate([np.full(len(targets), extreme), np.full(len(selected), st.r_max)])
    attack: list[Event] = []
    user_since: dict[str, int] = {}
    item_since: dict[int, int] = {}
    for uid, a0 in zip(user_ids, starts.tolist(), strict=True):
        filler = rng.choice(pool, size=n_fill, replace=False)
        if opts.kind == "average":
            fill = rng.normal(st.mean[filler], st.sd[filler])
        else:  # random, and bandwagon's filler (Mobasher et al.: random-attack filler)
            fill = rng.normal(st.g_mean, st.g_sd, n_fill)
        items = np.concatenate([fixed_items, filler])
        vals = np.concatenate([fixed_vals, _round_to_scale(fill, st.r_min, st.r_max, st.step)])
        order = rng.permutation(len(items))
        items, vals = items[order], vals[order]
        offs = np.concatenate([[0.0], np.cumsum(rng.exponential(opts.gap_s * 1000, len(items) - 1))])
        ts = np.floor(a0 + offs).astype(np.int64)
        if whole_s:
            ts = ts // 1000 * 1000
        for i, r, t in zip(items.tolist(), vals.tolist(), ts.tolist(), strict=True):
            item = st.catalogue[i]
            eid = f"ml-{uid}-{item}-{t}" if ds.movielens else f"attack-{uid}-{item}-{t}"
            attack.append(Event(eid, uid, item, "rating", t, float(r)))
        user_since[uid] = int(ts.min())
        for ti in targets.tolist():
            item_since[ti] = min(item_since.get(ti, 2**62), int(ts[items == ti].min()))

    from streamrec.data.loaders import shift_into_contract

    merged = sorted([*ds.events, *attack], key=lambda e: e.ts)  # stable: genuine first on ties
    try:
        events, shift = shift_into_contract(merged)
    except ValueError as err:
        raise AttackError(str(err)) from None
    seen: set[str] = set()
    for e in events:
        if e.event_id in seen:
            raise AttackError(f"event id {e.event_id!r} repeats (the input has colliding ids)")
        seen.add(e.event_id)

    labels = _labels(ds, opts, st, user_ids, targets, selected, n_fill, extreme, start, shift, len(attack))
    labels["users"] = {
        u: {"kind": "shilling", "group": GROUP_ID, "since": user_since[u] + shift, "attack": opts.kind}
        for u in user_ids
    }
    labels["items"] = {
        st.catalogue[t]: {"kind": "shilling_target", "direction": opts.direction, "group": GROUP_ID,
                          "since": item_since[t] + shift}
        for t in targets.tolist()
    }  # fmt: skip
    labels["counts"] = {
        "events": len(events),
        "genuine_events": len(ds.events),
        "abuse_events": {"shilling": len(attack)},
        "users": len(genuine_users) + n_profiles,
        "genuine_users": len(genuine_users),
        "abuse_users": {"shilling": n_profiles},
        "items": n_cat,
        "abuse_items": len(targets),
    }
    return Attack(events, ds.items, labels, shift)


def _labels(
    ds: Dataset,
    opts: AttackOptions,
    st: _Stats,
    user_ids: list[str],
    targets: np.ndarray,
    selected: np.ndarray,
    n_fill: int,
    extreme: float,
    start: int,
    shift: int,
    n_events: int,
) -> dict[str, Any]:
    def item_info(i: int) -> dict[str, Any]:
        return {"item_id": st.catalogue[i], "ratings": int(st.count[i]), "mean": round(float(st.mean[i]), 4)}

    return {
        "seed": opts.seed,
        "config": {"data": ds.source, **dataclasses.asdict(opts)},
        "references": REFERENCES,
        "period": {"start_ts": ds.events[0].ts + shift, "end_ts": ds.events[-1].ts + shift, "shift_ms": shift},
        "ratings": {
            "scale": [st.r_min, st.r_max],
            "step": st.step,
            "global_mean": round(st.g_mean, 4),
            "global_sd": round(st.g_sd, 4),
        },
        "groups": [
            {
                "id": GROUP_ID,
                "kind": "shilling",
                "attack": opts.kind,
                "direction": opts.direction,
                "rating": extreme,
                "timing": opts.timing,
                "start_ts": start + shift,
                "accounts": user_ids,
                "targets": [st.catalogue[t] for t in targets.tolist()],
                "target_stats": [item_info(t) for t in targets.tolist()],
                "selected": [st.catalogue[t] for t in selected.tolist()],
                "selected_stats": [item_info(t) for t in selected.tolist()],
                "filler_items": n_fill,
                "events": n_events,
            }
        ],
    }


def write_outputs(att: Attack, out: Path) -> dict[str, Path]:
    """DIR/events.jsonl, DIR/items.jsonl (as `data convert` writes them) and DIR/labels.json."""
    from streamrec.data.loaders import write_events_jsonl

    out.mkdir(parents=True, exist_ok=True)
    paths = write_events_jsonl(att.events, att.items, out / "events.jsonl")
    lp = out / "labels.json"
    lp.write_text(json.dumps(att.labels, indent=1) + "\n", encoding="utf-8")
    return {**paths, "labels": lp}
