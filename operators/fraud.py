"""User-level fraud detectors: pure functions of a user's state (event time only).

A state's `ts` is sorted (the operator inserts a late event in order: `operators.user.UserOperator._update`), so
the windowed detectors find their window by bisection instead of walking the whole history.

Each returns a `Detection` (score in [0, 1], evidence) or None when it cannot judge yet. The score is
r / (1 + r) where r is how far the statistic is past its threshold (r = 1 at the threshold: score 0.5), so
scores of different detectors read alike and `flag_threshold` 0.5 means "past the configured threshold".
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

import numpy as np

from operators.config import UserFraudConf
from operators.state import EVENT_TYPES, UserState
from operators.state import NATIVE_MODULE as _native

# Detector names double as reason codes; their index is the slot in `UserState.flag_last`.
VELOCITY = "velocity_burst"
REGULARITY = "regular_gaps"
SURPRISE = "model_surprise"
RATING = "rating_anomaly"
USER_DETECTORS = (VELOCITY, REGULARITY, SURPRISE, RATING)
_RATING_CODE = EVENT_TYPES.index("rating") + 1


@dataclass(frozen=True)
class Detection:
    detector: str  # one of USER_DETECTORS (also the reason code)
    score: float  # r / (1 + r), r = statistic relative to its threshold
    evidence: dict[str, Any]  # the numbers behind the score, JSON-serialisable


def _score(r: float) -> float:
    r = max(0.0, r)
    return 1.0 if math.isinf(r) else r / (1.0 + r)


_CODES: dict[tuple[str, ...], frozenset[int]] = {}


def _codes(types: Any) -> frozenset[int]:
    """1-based codes of the configured event types (memoised: the config is fixed for a worker's life)."""
    key = tuple(types)
    got = _CODES.get(key)
    if got is None:
        if len(_CODES) > 64:
            _CODES.clear()
        got = _CODES[key] = frozenset(EVENT_TYPES.index(t) + 1 for t in key if t in EVENT_TYPES)
    return got


def velocity(s: UserState, conf: UserFraudConf, now: int, floor: float = 0.0) -> Detection | None:
    """Too many engagement events in a short window (ratings excluded: onboarding flows rate in bursts).

    `floor` (every detector here): None instead of a detection scoring below it (the operator passes its flag
    threshold: what it would drop anyway is not built)."""
    codes = _codes(conf.velocity_event_types)
    # events with lo < ts <= now (ts sorted): the slice between the two bisections
    lo, ts = now - conf.velocity_window_ms, s.ts
    n = sum(map(codes.__contains__, s.types[bisect_right(ts, lo) : bisect_right(ts, now)]))
    if n == 0:
        return None
    score = _score(n / max(conf.velocity_max_events, 1))
    if score < floor:
        return None
    return Detection(VELOCITY, score, {"events_in_window": n, "window_ms": conf.velocity_window_ms,
                                       "max_events": conf.velocity_max_events})  # fmt: skip


def regularity(s: UserState, conf: UserFraudConf, floor: float = 0.0) -> Detection | None:
    """Machine-regular inter-event gaps: a tiny coefficient of variation over the last gaps."""
    k = conf.regular_min_gaps
    if len(s.ts) < k + 1:
        return None
    if _native is not None and 0.0 < floor < 1.0 and k >= 1:
        # the usual answer, at once: gaps far from machine-regular (C: the exact median, a plain-order cv). Only a
        # ratio clearly below the floor's returns here (cv summed in another order differs from numpy's in the last
        # bits: a margin of 1e-6, and cv above 1e-6, where those bits are far smaller); the rest takes the path below
        got = _native.gap_stats(s.ts, k)
        if got is not None:
            med, cv = got
            if not conf.regular_min_gap_ms <= med <= conf.regular_max_gap_ms:
                return None
            if cv > 1e-6 and conf.regular_max_cv / cv < floor / (1.0 - floor) * (1.0 - 1e-6):
                return None
    if k >= 1:
        # plain-Python gaps and median: the same float64 values as np.diff / np.median (the median of k values
        # is the middle one, or the mean of the two middle ones), without numpy's per-call overhead
        tf = [float(t) for t in s.ts[-(k + 1) :]]
        gl = [b - a for a, b in zip(tf, tf[1:], strict=False)]
        srt = sorted(gl)
        med = srt[k // 2] if k % 2 else (srt[k // 2 - 1] + srt[k // 2]) / 2
        if not conf.regular_min_gap_ms <= med <= conf.regular_max_gap_ms:
            return None
        gaps = np.array(gl, dtype=np.float64)
    else:
        gaps = np.diff(np.asarray(s.ts[-(k + 1) :], dtype=np.float64))
        med = float(np.median(gaps))
        if not conf.regular_min_gap_ms <= med <= conf.regular_max_gap_ms:
            return None
    cv = _cv(gaps)
    score = _score(conf.regular_max_cv / max(cv, 1e-9))
    if score < floor:
        return None
    return Detection(REGULARITY, score, {"gaps": k, "median_gap_ms": med, "cv": round(cv, 5),
                                         "max_cv": conf.regular_max_cv})  # fmt: skip


def _cv(gaps: np.ndarray) -> float:
    """`float(gaps.std() / max(gaps.mean(), 1e-9))` for a 1-D float64 array, with the very ufunc calls numpy's
    `_mean` / `_var` make (add.reduce, true divide, subtract, multiply, add.reduce, sqrt) and none of the
    wrapper overhead."""
    n = gaps.shape[0]
    if n == 0:
        return float(gaps.std() / max(gaps.mean(), 1e-9))  # nan, with numpy's warnings
    mean = np.add.reduce(gaps) / np.intp(n)
    d = gaps - mean
    std = np.sqrt(np.add.reduce(d * d) / np.intp(n))
    return float(std / max(mean, 1e-9))


def surprise_stats(logprobs: np.ndarray, n_items: int, conf: UserFraudConf) -> tuple[float, float, int] | None:
    """(mean log P(next item), ratio, transitions) of a user's sequence, or None when too few transitions are
    defined. The ratio is the mean over log(1 / n_items): 1 = as likely as a uniform guess, above = less likely."""
    if isinstance(logprobs, np.ndarray) and logprobs.ndim == 1 and len(logprobs) < conf.surprise_min_events:
        return None  # the filter below only drops positions: too few to judge either way
    lp = np.asarray(logprobs, dtype=np.float64)
    lp = lp[(lp != 0.0) & np.isfinite(lp)]  # 0 = undefined position (unknown item, first event)
    if len(lp) < conf.surprise_min_events or n_items < 2:
        return None
    mean = float(lp.mean())
    return mean, mean / math.log(1.0 / n_items), len(lp)


def surprise_detection(stats: tuple[float, float, int], threshold: float, n_items: int,
                       learned: bool = False) -> Detection:  # fmt: skip
    """The model finds the user's own sequence improbable: its ratio (`surprise_stats`) past `threshold` (the
    configured factor, or the one learned from the feed's accounts: `baserates.ShardRates.surprise_threshold`)."""
    mean, ratio, n = stats
    r = ratio / threshold if threshold > 0 else 0.0
    return Detection(SURPRISE, _score(r), {"mean_logprob": round(mean, 4),
                                           "limit": round(threshold * math.log(1.0 / n_items), 4),
                                           "ratio": round(ratio, 4), "threshold": round(threshold, 4),
                                           "learned": learned, "transitions": n})  # fmt: skip


def surprise(logprobs: np.ndarray, n_items: int, conf: UserFraudConf) -> Detection | None:
    """`surprise_detection` at the configured factor (`surprise_factor`), None when it cannot judge."""
    stats = surprise_stats(logprobs, n_items, conf)
    return None if stats is None else surprise_detection(stats, conf.surprise_factor, n_items)


def rating_anomaly(s: UserState, conf: UserFraudConf, now: int, engaged_feed: bool = True,
                   floor: float = 0.0) -> Detection | None:  # fmt: skip
    """A burst of ratings that no genuine account produces. Two rules, the stronger one reports:

    - extreme: many ratings in a short window, nearly all extreme (the crude shill: every rating a 1 or a 5);
    - unverified (`engaged_feed`: the feed's learned engagement share is at least
      `unverified_min_engagement_share`, so genuine ratings there follow an engagement): many ratings in the window
      from an account whose kept history holds no view, click, cart or purchase at all. Such an account rates what
      it never engaged with: the fake-review account of a shilling campaign, whatever ratings it gives.

    `rating_min` 0 turns the extreme rule off.
    """
    rc = _RATING_CODE
    k = conf.unverified_min_ratings
    unverified = engaged_feed and k > 0 and s.types.count(rc) == len(s.types)  # a history of ratings alone
    if conf.rating_min <= 0 and not unverified:
        return None  # neither rule can report: nothing to count
    i = bisect_right(s.ts, now - conf.rating_window_ms)  # the events after the window's start (ts sorted)
    vals = [r for c, r in zip(s.types[i:], s.ratings[i:], strict=True) if c == rc and r > 0]
    if not vals:
        return None
    best: Detection | None = None
    if conf.rating_min > 0 and len(vals) >= conf.rating_min:
        ext = sum(1 for v in vals if v <= conf.rating_low or v >= conf.rating_high)
        share = ext / len(vals)
        r = share / max(conf.rating_extreme_share, 1e-9)
        best = Detection(RATING, _score(r), {"rule": "extreme", "ratings": len(vals), "extreme": ext,
                                             "share": round(share, 3), "window_ms": conf.rating_window_ms})  # fmt: skip
    if unverified and len(vals) >= k:
        r = len(vals) / k
        if best is None or _score(r) > best.score:
            best = Detection(RATING, _score(r), {"rule": "unverified", "ratings": len(vals), "engagement_events": 0,
                                                 "min_ratings": k, "window_ms": conf.rating_window_ms})  # fmt: skip
    return None if best is not None and best.score < floor else best


def flag_id(subject_kind: str, subject: str, detector: str, event_id: str) -> str:
    """Deterministic: the same detection on the same event (a replay) gives the same id."""
    key = "\x00".join((subject_kind, subject, detector, event_id))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
