"""Operator thresholds (`conf/operators.yaml`): frozen dataclasses, loaded with `streamrec.config.load`.

Every scalar can be overridden from the environment: `STREAMREC_<SECTION>_<FIELD>`, e.g.
`STREAMREC_DEBOUNCE_INTERVAL_MS=0`. Times are event-time milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StateConf:
    history_len: int = 50  # recent events kept per user (the model input; also surprise/velocity windows)
    ttl_ms: int = 30 * 86_400_000  # state older than this (event time) counts as a new user
    dedup_window_ms: int = 86_400_000  # keep event-id hashes at least this long...
    dedup_max_ids: int = 1000  # ...but never more than this many (bounds bot state)
    top_categories: int = 8  # decayed category interests kept per user
    interest_half_life_ms: int = 7 * 86_400_000  # half-life of category interest weights
    event_weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "cart": 3.0, "purchase": 5.0, "rating": 2.0}
    )  # interest added per event type


@dataclass(frozen=True)
class RecsConf:
    k: int = 10  # recommendations per list
    candidates: int = 50  # model top candidates the re-ranker chooses from (<= artefact top_k)
    min_history: int = 2  # fewer known-item events than this: cold-start fallback instead of the model
    exclude_consumed: bool = True  # never recommend items already in the user's kept history
    mmr_lambda: float = 0.7  # MMR relevance weight (1 = no diversity re-rank)
    unavailable_items: tuple[str, ...] = ()  # item ids never to recommend (business filter)
    allow_categories: tuple[str, ...] = ()  # if non-empty, only items with one of these categories
    deny_categories: tuple[str, ...] = ()  # items with any of these categories are never recommended
    knn_per_item: int = 20  # neighbours per history item used by the cold-start fallback
    knn_recent: int = 5  # most recent known items the fallback expands
    category_boost: float = 0.5  # fallback: weight of the user's category interests on popular items
    # content items (known to the artefact by their text only, `streamrec train --content`) added to each model
    # list's candidates, at the slot SASRec alone would give them (operators/user.py); 0: none
    content_candidates: int = 5
    # list places reserved for content items: the best content candidates (by that slot) the re-rank left out
    # replace the list's last items of other sources; 0: content items compete on their slot alone
    content_slots: int = 1
    # weight of the stream's evidence on a content item: its relevance gains weight × log(1 + m), m its stream CF
    # mass (the summed co-occurrence weights of its last published predecessors, decayed by cf.half_life_ms to the
    # list's time; 0 for an item nobody has consumed, so it changes nothing before the first interaction); 0: off
    content_evidence: float = 1.0


@dataclass(frozen=True)
class CfConf:
    enabled: bool = True  # item-item CF learned in the stream (operators/cf.py)
    window: int = 3  # previous items of the user an event pairs with (weights 1, 1/2, 1/3 by distance)
    max_gap_ms: int = 86_400_000  # ... consumed at most this long before it
    max_neighbours: int = 20  # predecessors kept per item (the lightest evicted): bounds the state
    half_life_ms: int = 7 * 86_400_000  # co-occurrence weights halve over this much event time
    publish_interval_ms: int = 60_000  # an item's changed neighbours are published at most this often (event time)
    candidates: int = 10  # successors of the user's recent items added to the fallback's candidates
    slots: int = 1  # list places reserved for successors outside the model's vocabulary (new items); 0: none
    slot_min_score: float = 0.5  # ... whose CF score (1.0: the heaviest successor of the latest item) is at least this
    weight: float = 1.0  # their score (scaled to [0, 1] per history item) next to item-KNN similarity


@dataclass(frozen=True)
class DebounceConf:
    interval_ms: int = 60_000  # at most one recommendation update per user per interval (event time)
    strong_events: tuple[str, ...] = ("purchase", "cart")  # these bypass the debounce


@dataclass(frozen=True)
class UserFraudConf:
    enabled: bool = True  # run the user-level detectors
    cooldown_ms: int = 86_400_000  # a detector re-flags a user at most once per this interval
    quarantine_ms: int = 7 * 86_400_000  # a flagged user's events stop feeding item baselines for this long
    velocity_window_ms: int = 60_000  # velocity: window length
    velocity_max_events: int = 20  # velocity: this many engagement events in the window is a burst
    velocity_event_types: tuple[str, ...] = ("view", "click", "cart", "purchase")  # counted (not ratings)
    regular_min_gaps: int = 15  # regularity: consecutive gaps inspected (and needed)
    regular_max_cv: float = 0.05  # regularity: coefficient of variation of the gaps below this is machine-like
    regular_min_gap_ms: int = 100  # regularity: median gap below this is ignored (timestamp ties, batches)
    regular_max_gap_ms: int = 600_000  # regularity: median gap above this is ignored (e.g. daily jobs)
    surprise_every: int = 20  # surprise: judged on every N-th event of a user (event count, not timers; 0 = off)
    surprise_min_events: int = 20  # surprise: known-item transitions needed before judging
    surprise_factor: float = 1.3  # surprise: flag if mean log P(next item) < factor * log(1/n_items), until the
    # shard has judged surprise_warmup accounts' sequences; from then on the factor is learned (base_rates)
    surprise_warmup: int = 50  # surprise: judgements per shard before the learned factor replaces surprise_factor
    surprise_spread: float = 4.0  # surprise: learned factor = median ratio + spread * (median - 1st quartile)
    surprise_min_factor: float = 1.0  # surprise: the learned factor is never below this (1 = a uniform guess)
    surprise_confirm: bool = True  # surprise: the user's previous judgement must be past the threshold too
    rating_min: int = 0  # rating anomaly (extreme rule): ratings in the window needed (0 = off: see conf)
    rating_window_ms: int = 3_600_000  # rating anomaly: ratings within this window count
    rating_extreme_share: float = 1.0  # rating anomaly (extreme rule): share of extreme ratings (<= low or >= high)
    rating_low: float = 1.0  # ratings at or below are extreme
    rating_high: float = 5.0  # ratings at or above are extreme
    unverified_min_engagement_share: float = 0.2  # the unverified rules judge only while at least this share of
    # the feed's events (learned: base_rates) are views/clicks/carts/purchases: there, genuine ratings follow an
    # engagement and a rating without one is "unverified". On a ratings-only feed (MovieLens: 0) they stay silent
    unverified_min_ratings: int = 5  # rating anomaly: this many ratings in the window from an account whose kept
    # history holds no engagement event at all (0 = off)
    flag_threshold: float = 0.5  # a detector's score at or above this raises a flag


@dataclass(frozen=True)
class BaseRatesConf:
    half_life_ms: int = 7 * 86_400_000  # the feed's rates (per user shard) decay with this half-life (event time)
    prior_events: float = 50.0  # the priors below weigh as much as this many events
    engagement_share_prior: float = 0.0  # prior share of engagement events (0: a feed is ratings-only until its
    # events show otherwise, so no account is judged "unverified" before the feed's habits are known)
    top_share_prior: float = 0.225  # prior share of ratings at the scale's top (item shards' rating base rate)
    bottom_share_prior: float = 0.075  # prior share of ratings at its bottom
    surprise_memory: float = 1000.0  # the surprise ratios of about this many recent judgements make its base rate


@dataclass(frozen=True)
class AlarmConf:
    window_ms: int = 86_400_000  # active accounts and flags are counted over this (decay half-life, event time)
    max_share: float = 0.3  # a user detector flagging more than this share of the active accounts is
    # miscalibrated: one detector_alarm record, its user flags withheld until the share is below half this (0: off)
    min_active: float = 30.0  # active accounts (decayed, per user shard) needed before a share is judged
    cooldown_ms: int = 86_400_000  # at most one alarm record per detector and shard per interval


@dataclass(frozen=True)
class ItemFraudConf:
    enabled: bool = True  # run the item-level detectors
    young_account_ms: int = 3 * 86_400_000  # an account younger than this (since its first event) is young
    window_ms: int = 6 * 3_600_000  # recent-contribution window per item
    max_recent: int = 256  # most recent clicks, and ratings, kept per item (bounds item state)
    baseline_half_life_ms: int = 7 * 86_400_000  # half-life of the item's baseline event rate
    baseline_ratio: float = 10.0  # burst: window clicks must exceed this many times the baseline expectation
    farm_min_accounts: int = 5  # click farm: distinct suspect (young or flagged) accounts clicking in the window
    farm_min_repeat: float = 2.0  # click farm: mean clicks per suspect account (genuine users click ~once)
    farm_member_min_clicks: int = 2  # an account with this many window clicks on the item is a member
    shill_window_ms: int = 48 * 3_600_000  # shilling: window for extreme ratings
    shill_min_accounts: int = 5  # shilling: distinct suspect accounts giving extreme ratings in the window
    shill_unverified_min_accounts: int = 3  # shilling: ...or this many, if their extreme ratings are unverified
    # (no engagement with the item first; marked only on feeds with engagement, see user_fraud; 0 = off)
    shill_min_share: float = 0.0  # shilling: share of window ratings that are extreme from suspect accounts (0: off)
    shill_max_chance: float = 1e-6  # shilling: the window's extreme ratings must be this unlikely given the item's
    # share of that value before the window, blended with the feed's (binomial tail; 0: off)
    shill_prior_weight: float = 10.0  # shilling: the feed's share weighs as much as this many of the item's ratings
    shill_min_deviation: float = 1.2  # shilling: |extreme rating - item's mean before the window|
    rating_prior_mean: float = 3.5  # prior of an item's mean rating (items with few earlier ratings)
    rating_prior_weight: float = 3.0  # weight of that prior, in ratings
    rating_low: float = 1.0  # extreme low rating
    rating_high: float = 5.0  # extreme high rating
    cooldown_ms: int = 86_400_000  # an item is re-flagged (new flag id) at most once per interval
    trending_every: int = 0  # emit a trending record every N item events (0: never)


@dataclass(frozen=True)
class ScorerConf:
    int8: bool = False  # use model.int8.onnx
    threads: int = 1  # onnxruntime intra-op threads per worker
    split_cost: int = 32  # without canonical widths: a call splits by history length when padding costs more (0: never)
    canonical_widths: bool = True  # each history padded to its length class's width, one class per call: a row's
    #   results do not depend on its batch (operators/scorer.py); false: pad to each call's longest, split_cost
    call_rows: int = 16  # a graph call scores at most this many rows (more: calls of equal size); 0 = no cap


@dataclass(frozen=True)
class PrivacyConf:
    allow_dev_key: bool = False  # demo only: fall back to a documented, public dev key if none is set


@dataclass(frozen=True)
class OperatorsConf:
    state: StateConf = field(default_factory=StateConf)  # per-user state layout bounds and TTL
    recs: RecsConf = field(default_factory=RecsConf)  # recommendation list, filters, re-rank
    debounce: DebounceConf = field(default_factory=DebounceConf)  # update rate limiting
    user_fraud: UserFraudConf = field(default_factory=UserFraudConf)  # user-level detectors
    item_fraud: ItemFraudConf = field(default_factory=ItemFraudConf)  # item-level detectors
    base_rates: BaseRatesConf = field(default_factory=BaseRatesConf)  # the feed's rates the detectors judge against
    alarm: AlarmConf = field(default_factory=AlarmConf)  # miscalibrated user detectors
    scorer: ScorerConf = field(default_factory=ScorerConf)  # onnxruntime session
    privacy: PrivacyConf = field(default_factory=PrivacyConf)  # pseudonymisation
    cf: CfConf = field(default_factory=CfConf)  # item-item CF learned in the stream


def load_operators_conf(path: str | Path = "operators.yaml") -> OperatorsConf:
    """`conf/operators.yaml` (or `path`) plus `STREAMREC_*` environment overrides."""
    from streamrec.config import load

    return load(OperatorsConf, path)
