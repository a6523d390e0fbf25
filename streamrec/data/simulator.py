"""Seeded, deterministic behaviour simulator with ground truth for recommendation and fraud flagging.

What it models (all sizes and rates in `conf/simulator.yaml`):

- A catalogue: categories, generated titles, Zipf popularity, a latent quality per item; part of it
  released at the start, the rest arriving uniformly over the simulated span.
- Users whose interests are a mixture over categories that drifts: every `drift_interval_days` a share
  `drift_strength` of the mixture is replaced by a fresh Dirichlet draw. Sessions focus on one category
  drawn from the current mixture and often step to a "neighbour" of the previous item, so the recent past
  predicts the next item far better than a user's whole history (a sequential model beats a static one).
- Sessions with a view -> click -> cart -> purchase funnel (conversion higher for items the user cares
  about) and ratings after purchases. New users join over time.
- Labelled abuse, by fresh accounts that do nothing else: click bots (machine-regular gaps, uniformly
  random items), click farms (many accounts clicking a few unpopular target items among camouflage
  clicks), and shilling campaigns (Lam & Riedl, "Shilling recommender systems for fun and profit",
  WWW 2004; Mobasher et al., "Toward trustworthy recommender systems", TOIT 2007): accounts created after
  the campaign starts give target items the extreme rating (push or nuke) plus filler ratings drawn as in
  the "random" attack (global rating distribution) or the "average" attack (the item's own mean).
- Optional noise for the stream job's tests: malformed lines (each labelled with the `Reason` the validator
  must give) and duplicate deliveries (the same event twice).

Determinism: one `numpy.random.Generator(PCG64(seed))`, no wall clock, no global RNG, no iteration over
sets; the same config gives byte-identical output files.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from operators.schema import EVENT_TYPES, MAX_MESSAGE_BYTES, Event, ItemMeta, Reason
from streamrec import config

CONF_FILE = "simulator.yaml"
DAY_MS = 86_400_000

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

_VIEW, _CLICK, _CART, _PURCHASE, _RATING = range(5)
_TYPE_NAMES = EVENT_TYPES  # index = type code above

_GENRES_WORDS = (
    "Action Comedy Drama Sci-Fi Horror Romance Documentary Animation Thriller Fantasy Crime Mystery Musical "
    "Western War Family History Sport Biography Adventure Music Noir Kids Travel Cooking Science Nature "
    "Reality Anime Indie"
)
_GENRES = tuple(_GENRES_WORDS.split())
_ADJ_WORDS = (
    "Silent Crimson Hidden Broken Golden Last Electric Wild Lonely Distant Secret Burning Frozen Velvet Iron "
    "Paper Midnight Hollow Bright Savage Gentle Lost"
)
_ADJ = tuple(_ADJ_WORDS.split())
_NOUN_WORDS = (
    "Harbor Garden Empire Signal River Machine Kingdom Winter Promise Horizon Mirror Station Orchard Voyage "
    "Frontier Lantern Canyon Citadel Echo Meadow Engine Tide"
)
_NOUN = tuple(_NOUN_WORDS.split())

MALFORMED_KINDS = (
    "not_json", "not_utf8", "not_object", "missing_field", "bad_type", "bad_id", "bad_event_type",
    "ts_out_of_range", "bad_rating", "unexpected_rating", "unknown_field", "duplicate_field", "too_large",
)  # fmt: skip


@dataclass(frozen=True)
class CatalogueConf:
    n_items: int = 3000  # items in the catalogue, initial plus arriving
    n_categories: int = 20  # categories (genre names, then "category-NN")
    zipf_exponent: float = 1.1  # popularity weight of the item of rank r is 1 / r**s
    initial_fraction: float = 0.7  # share of items released at the start; the rest arrive uniformly
    max_extra_categories: int = 2  # secondary categories per item: 0..this many
    quality_mean: float = 3.5  # mean of an item's latent mean rating
    quality_sd: float = 0.5  # spread of items' latent mean ratings


@dataclass(frozen=True)
class UsersConf:
    n_users: int = 2000  # genuine users, initial plus arriving
    initial_fraction: float = 0.6  # share of users present at the start; the rest join uniformly
    interest_alpha: float = (
        0.25  # Dirichlet concentration of interest mixtures (small = few favourite categories)
    )
    drift_interval_days: float = 5.0  # how often interests drift
    drift_strength: float = 0.5  # share of the interest mixture replaced at each drift step (0 = no drift)
    activity_sigma: float = 1.0  # lognormal sigma of per-user activity (heavy users vs occasional ones)


@dataclass(frozen=True)
class SessionsConf:
    mean_views: float = 6.0  # views per session: 1 + Poisson(mean_views - 1)
    max_views: int = 40  # cap on views per session
    focus_prob: float = 0.85  # a fresh view comes from the session's focus category (else from the mixture)
    neighbour_prob: float = 0.5  # a view after the first is a neighbour of the previous item
    neighbour_width: int = 3  # neighbours are within this many positions in the category's item list
    view_gap_s: float = 40.0  # mean gap between views (exponential)
    action_gap_s: float = 8.0  # mean extra gap for view->click->cart->purchase->rating (exponential, +1 s)
    p_click: float = 0.35  # click probability of a view, for the user's favourite category
    p_cart: float = 0.3  # cart probability of a click, for the favourite category
    p_purchase: float = 0.5  # purchase probability of a cart
    p_rate: float = 0.5  # rating probability of a purchase
    affinity_floor: float = 0.2  # click/cart multiplier for a category the user ignores (1 for the favourite)
    rating_affinity: float = 1.0  # rating bonus for the favourite category over an ignored one
    rating_noise: float = 0.6  # sd of the rating noise
    rating_step: float = 0.5  # ratings are rounded to multiples of this


@dataclass(frozen=True)
class ClickBotConf:
    n_bots: int = 4  # bot accounts
    event_share: float = 0.03  # share of all events made by bots
    period_min_ms: int = 500  # a bot clicks every `period` ms, drawn per bot in [min, max]
    period_max_ms: int = 3000
    jitter_ms: int = 10  # uniform +- jitter on each bot click


@dataclass(frozen=True)
class ClickFarmConf:
    n_farms: int = 2  # farms (groups)
    accounts_per_farm: int = 15  # accounts per farm
    targets_per_farm: int = 3  # promoted items per farm (drawn from the less popular half)
    event_share: float = 0.03  # share of all events made by farms (a view + click pair per action)
    target_prob: float = 0.8  # an action is on a target item (else a popular camouflage item)
    gap_s: float = 30.0  # mean gap between one account's actions (exponential)
    click_delay_s: float = 3.0  # mean extra view->click delay (exponential, +1 s)
    account_spread_h: float = 12.0  # accounts start within this many hours of the farm's start


@dataclass(frozen=True)
class ShillingConf:
    n_campaigns: int = 3  # campaigns (groups)
    targets_per_campaign: int = 2  # target items per campaign
    filler_per_account: int = 10  # filler ratings per account
    event_share: float = 0.005  # share of all events made by shilling accounts
    push_fraction: float = 0.5  # share of campaigns that push (the rest nuke)
    attacks: tuple[str, ...] = ("average", "random")  # filler models, used in turn: "average" or "random"
    push_rating: float = 5.0  # rating given to a pushed target
    nuke_rating: float = 1.0  # rating given to a nuked target
    account_spread_h: float = 24.0  # accounts start within this many hours of the campaign's start
    gap_s: float = 20.0  # mean gap between one account's ratings (exponential)


@dataclass(frozen=True)
class NoiseConf:
    malformed_rate: float = 0.0  # malformed lines per valid event (extra lines, not counted in n_events)
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS  # which kinds to plant, used in turn
    duplicate_rate: float = 0.0  # duplicate deliveries per valid event (extra lines)
    duplicate_max_lag: int = 5  # a duplicate follows its original within this many lines


@dataclass(frozen=True)
class ProducerConf:
    events_topic: str = "events"  # default --topic for `simulate --kafka`
    items_topic: str = "items"  # topic for item metadata
    rate: float = 1000.0  # default --rate, events per second
    linger_ms: int = 20  # producer linger.ms (batching)
    batch_size: int = 262144  # producer batch.size in bytes
    acks: str = "all"  # producer acks: "0", "1" or "all"
    compression: str = "none"  # producer compression: none, gzip, snappy, lz4, zstd
    flush_timeout_s: float = 60.0  # how long the final flush may take


@dataclass(frozen=True)
class SimulatorConf:
    seed: int = 42  # seed of the one random generator
    n_events: int = 100_000  # valid events (genuine + abuse), exactly
    start_ts: int = 1_704_067_200_000  # simulation start, epoch ms (2024-01-01T00:00Z)
    days: float = 60.0  # simulated span
    catalogue: CatalogueConf = CatalogueConf()
    users: UsersConf = UsersConf()
    sessions: SessionsConf = SessionsConf()
    click_bots: ClickBotConf = ClickBotConf()
    click_farms: ClickFarmConf = ClickFarmConf()
    shilling: ShillingConf = ShillingConf()
    noise: NoiseConf = NoiseConf()
    producer: ProducerConf = ProducerConf()


def load_conf(path: str | Path | None = None) -> SimulatorConf:
    """The config from `path` (default `conf/simulator.yaml`), with STREAMREC_SIM_* env overrides."""
    return config.load(SimulatorConf, path or config.CONF_DIR / CONF_FILE, prefix="STREAMREC_SIM")


def with_overrides(
    conf: SimulatorConf, events: int | None = None, users: int | None = None, seed: int | None = None
) -> SimulatorConf:
    """Apply the CLI's --events/--users/--seed."""
    if events is not None:
        conf = dataclasses.replace(conf, n_events=events)
    if users is not None:
        conf = dataclasses.replace(conf, users=dataclasses.replace(conf.users, n_users=users))
    if seed is not None:
        conf = dataclasses.replace(conf, seed=seed)
    return conf


def _check(conf: SimulatorConf) -> None:
    """Reject configs the generator cannot honour, with the key to fix."""
    errs: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            errs.append(msg)

    c, u, s = conf.catalogue, conf.users, conf.sessions
    need(conf.n_events >= 1, "n_events must be >= 1")
    need(conf.days > 0, "days must be > 0")
    need(conf.start_ts >= 946_684_800_000, "start_ts must be >= 2000-01-01 (the event contract)")
    need(conf.start_ts + conf.days * 2 * DAY_MS < 4_102_444_800_000, "start_ts + days must stay before 2100")
    need(c.n_categories >= 1, "catalogue.n_categories must be >= 1")
    need(c.n_items >= c.n_categories, "catalogue.n_items must be >= catalogue.n_categories")
    need(0 <= c.initial_fraction <= 1, "catalogue.initial_fraction must be in [0, 1]")
    need(u.n_users >= 1, "users.n_users must be >= 1")
    need(0 <= u.initial_fraction <= 1, "users.initial_fraction must be in [0, 1]")
    need(u.interest_alpha > 0, "users.interest_alpha must be > 0")
    need(u.drift_interval_days > 0, "users.drift_interval_days must be > 0")
    need(0 <= u.drift_strength <= 1, "users.drift_strength must be in [0, 1]")
    need(s.mean_views >= 1 and s.max_views >= 1, "sessions.mean_views and max_views must be >= 1")
    for name in (
        "focus_prob",
        "neighbour_prob",
        "p_click",
        "p_cart",
        "p_purchase",
        "p_rate",
        "affinity_floor",
    ):
        need(0 <= getattr(s, name) <= 1, f"sessions.{name} must be in [0, 1]")
    need(s.rating_step > 0, "sessions.rating_step must be > 0")
    b, f, sh, n = conf.click_bots, conf.click_farms, conf.shilling, conf.noise
    need(0 < b.period_min_ms <= b.period_max_ms, "click_bots: need 0 < period_min_ms <= period_max_ms")
    need(0 <= b.jitter_ms < b.period_min_ms / 4, "click_bots.jitter_ms must be below period_min_ms / 4")
    need(0 <= f.target_prob <= 1, "click_farms.target_prob must be in [0, 1]")
    need(all(a in ("average", "random") for a in sh.attacks) and len(sh.attacks) > 0,
         "shilling.attacks must be a non-empty list of 'average' / 'random'")  # fmt: skip
    need(0.5 <= sh.nuke_rating <= 5 and 0.5 <= sh.push_rating <= 5, "shilling ratings must be in [0.5, 5]")
    need(n.malformed_rate >= 0 and n.duplicate_rate >= 0, "noise rates must be >= 0")
    need(
        all(k in MALFORMED_KINDS for k in n.malformed_kinds),
        f"noise.malformed_kinds must be in {MALFORMED_KINDS}",
    )
    n_targets = f.n_farms * f.targets_per_farm + sh.n_campaigns * sh.targets_per_campaign
    need(n_targets <= c.n_items // 2, "too many abuse target items for the catalogue")
    for name, share in (
        ("click_bots", b.event_share),
        ("click_farms", f.event_share),
        ("shilling", sh.event_share),
    ):
        need(0 <= share < 1, f"{name}.event_share must be in [0, 1)")
    if errs:
        raise ValueError("invalid simulator config: " + "; ".join(errs))


@dataclass
class Simulation:
    """What `simulate` returns: valid events sorted by ts, the catalogue, the ground truth, the raw stream."""

    events: list[Event]
    items: list[ItemMeta]
    labels: dict[str, Any]
    # The message stream in order: (payload, key, timestamp ms). Valid events plus planted malformed lines and
    # duplicates; identical to the lines of events.jsonl.
    stream: list[tuple[bytes, bytes | None, int]] = field(default_factory=list)


@dataclass
class _Block:
    """Events of one generator, as parallel arrays (codes, not strings, until the end)."""

    ts: I64
    user: I64  # account index (genuine users first, then abuse accounts)
    item: I64
    etype: I64
    rating: F64  # NaN unless etype == rating
    session: I64  # session index

    @staticmethod
    def concat(blocks: Sequence[_Block]) -> _Block:
        return _Block(
            *(np.concatenate([getattr(b, f.name) for b in blocks]) for f in dataclasses.fields(_Block))
        )

    def take(self, idx: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> _Block:
        return _Block(*(getattr(self, f.name)[idx] for f in dataclasses.fields(_Block)))

    def __len__(self) -> int:
        return len(self.ts)


def _empty_block() -> _Block:
    z = np.zeros(0, dtype=np.int64)
    return _Block(z, z, z, z, np.zeros(0), z)


class _World:
    """Catalogue and users: the static part the generators sample from."""

    def __init__(self, conf: SimulatorConf, rng: np.random.Generator) -> None:
        c, u = conf.catalogue, conf.users
        self.conf = conf
        self.start = conf.start_ts
        self.span = int(conf.days * DAY_MS)
        self.end = self.start + self.span
        n, k = c.n_items, c.n_categories
        self.n_items, self.n_cats = n, k
        self.cat_names = [(_GENRES[i] if i < len(_GENRES) else f"category-{i:02d}") for i in range(k)]
        primary = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
        self.primary = primary.astype(np.int64)
        n_extra = rng.integers(0, c.max_extra_categories + 1, n)
        extra_draw = rng.integers(0, k, (n, max(c.max_extra_categories, 1)))
        self.categories: list[list[int]] = []
        for i in range(n):
            cats = [int(primary[i])]
            for x in extra_draw[i, : n_extra[i]]:
                if int(x) not in cats:
                    cats.append(int(x))
            self.categories.append(cats)
        released = rng.random(n) < c.initial_fraction
        released[:k] = True  # every category has an item from the start
        self.release = np.where(released, self.start, self.start + rng.integers(1, self.span, n)).astype(
            np.int64
        )
        rank = rng.permutation(n)
        self.weight = 1.0 / (rank + 1.0) ** c.zipf_exponent
        self.quality = np.clip(rng.normal(c.quality_mean, c.quality_sd, n), 1.0, 5.0)
        adj, noun = rng.integers(0, len(_ADJ), n), rng.integers(0, len(_NOUN), n)
        self.titles = [f"{_ADJ[a]} {_NOUN[b]} ({i})" for i, (a, b) in enumerate(zip(adj, noun, strict=True))]
        # Per category: items sorted by release, so the items released by t are a prefix of the list.
        order = np.lexsort((np.arange(n), self.release, self.primary))
        self.pool = order.astype(np.int64)  # global list, grouped by category, release order within
        self.pool_pos = np.empty(n, dtype=np.int64)
        self.pool_pos[order] = np.arange(n)
        bounds = np.searchsorted(self.primary[order], np.arange(k + 1))
        self.pool_lo = bounds[:-1].astype(np.int64)
        self.pool_rel = [self.release[order[bounds[j] : bounds[j + 1]]] for j in range(k)]
        self.pool_cum = [np.cumsum(self.weight[order[bounds[j] : bounds[j + 1]]]) for j in range(k)]
        # All items by release, for uniformly random or popularity picks among what exists at t.
        self.rel_order = np.lexsort((np.arange(n), self.release)).astype(np.int64)
        self.rel_sorted = self.release[self.rel_order]
        self.rel_cum = np.cumsum(self.weight[self.rel_order])

        m = u.n_users
        self.n_users = m
        joined = rng.random(m) < u.initial_fraction
        joined[0] = True
        self.join = np.where(joined, self.start, self.start + rng.integers(1, self.span, m)).astype(np.int64)
        self.activity = rng.lognormal(0.0, u.activity_sigma, m)
        self.user_order = np.lexsort((np.arange(m), self.join)).astype(np.int64)
        self.join_sorted = self.join[self.user_order]
        self.act_cum = np.cumsum(self.activity[self.user_order])
        # Interest keyframes: theta[u, j] is the mixture during drift period j.
        self.drift_ms = max(1, int(u.drift_interval_days * DAY_MS))
        n_periods = self.span // self.drift_ms + 2
        alpha = np.full(k, u.interest_alpha)
        theta = np.empty((m, n_periods, k))
        theta[:, 0] = rng.dirichlet(alpha, m)
        for j in range(1, n_periods):
            theta[:, j] = (1 - u.drift_strength) * theta[:, j - 1] + u.drift_strength * rng.dirichlet(
                alpha, m
            )
        self.theta = theta

    def period(self, ts: I64) -> I64:
        return np.clip((ts - self.start) // self.drift_ms, 0, self.theta.shape[1] - 1)

    def sample_cat(self, probs: F64, rng: np.random.Generator) -> I64:
        """One category per row of `probs` (n, K)."""
        cum = np.cumsum(probs, axis=1)
        r = rng.random(len(probs)) * cum[:, -1]
        return np.minimum((r[:, None] >= cum).sum(axis=1), self.n_cats - 1).astype(np.int64)

    def released_count(self, cats: I64, ts: I64) -> I64:
        """Items of each row's category released by its ts (>= 1: each category has one from the start)."""
        out = np.empty(len(cats), dtype=np.int64)
        for c in np.unique(cats):
            m = cats == c
            out[m] = np.searchsorted(self.pool_rel[c], ts[m], side="right")
        return np.maximum(out, 1)

    def sample_item_in_cat(self, cats: I64, ts: I64, rng: np.random.Generator) -> I64:
        """Popularity-weighted item of each row's category among items released by its ts."""
        r = rng.random(len(cats))
        out = np.empty(len(cats), dtype=np.int64)
        count = self.released_count(cats, ts)
        for c in np.unique(cats):
            m = cats == c
            cum = self.pool_cum[c]
            pos = np.searchsorted(cum, r[m] * cum[count[m] - 1], side="right")
            out[m] = self.pool[self.pool_lo[c] + np.minimum(pos, count[m] - 1)]
        return out

    def sample_item_any(self, ts: I64, rng: np.random.Generator, popular: bool) -> I64:
        """An item released by ts: popularity-weighted, or uniformly random (bots)."""
        count = np.maximum(np.searchsorted(self.rel_sorted, ts, side="right"), 1)
        r = rng.random(len(ts))
        if popular:
            pos = np.searchsorted(self.rel_cum, r * self.rel_cum[count - 1], side="right")
        else:
            pos = np.floor(r * count).astype(np.int64)
        return self.rel_order[np.minimum(pos, count - 1)]

    def sample_users(self, ts: I64, rng: np.random.Generator) -> I64:
        """Activity-weighted genuine user among those joined by ts."""
        count = np.maximum(np.searchsorted(self.join_sorted, ts, side="right"), 1)
        r = rng.random(len(ts)) * self.act_cum[count - 1]
        pos = np.minimum(np.searchsorted(self.act_cum, r, side="right"), count - 1)
        return self.user_order[pos]


def _round_rating(x: F64, step: float) -> F64:
    return np.clip(np.round(x / step) * step, 0.5, 5.0)


def _genuine(w: _World, budget: int, rng: np.random.Generator) -> tuple[_Block, int]:
    """Sessions of genuine users until `budget` events; returns the block and the number of sessions."""
    if budget <= 0:
        return _empty_block(), 0
    s = w.conf.sessions

    def gap(n: int) -> I64:
        return (1000 + rng.exponential(s.action_gap_s * 1000, n)).astype(np.int64)

    p_click, p_cart, p_buy, p_rate = s.p_click, s.p_cart, s.p_purchase, s.p_rate
    per_session = s.mean_views * (1 + p_click * (1 + p_cart * (1 + p_buy * (1 + p_rate))) * 0.6)
    blocks: list[_Block] = []
    n_sessions, total = 0, 0
    while total < budget:
        b = max(16, int((budget - total) / per_session * 1.1) + 1)
        t0 = w.start + rng.integers(0, w.span, b)
        users = w.sample_users(t0, rng)
        theta = w.theta[users, w.period(t0)]  # (b, K)
        focus = w.sample_cat(theta, rng)
        n_views = np.minimum(1 + rng.poisson(s.mean_views - 1, b), s.max_views)
        view_ts = t0[:, None] + np.cumsum(
            rng.exponential(s.view_gap_s * 1000, (b, s.max_views)), axis=1
        ).astype(np.int64)  # (b, V); column 0 is already one gap after t0
        items = np.full((b, s.max_views), -1, dtype=np.int64)
        for j in range(int(n_views.max())):
            act = np.flatnonzero(n_views > j)
            fresh_cat = np.where(
                rng.random(len(act)) < s.focus_prob, focus[act], w.sample_cat(theta[act], rng)
            )
            new = w.sample_item_in_cat(fresh_cat, t0[act], rng)
            if j > 0:
                prev = items[act, j - 1]
                pc = w.primary[prev]
                step = rng.integers(1, s.neighbour_width + 1, len(act)) * rng.choice([-1, 1], len(act))
                pos = w.pool_pos[prev] - w.pool_lo[pc] + step
                pos = np.clip(pos, 0, w.released_count(pc, t0[act]) - 1)
                neighbour = w.pool[w.pool_lo[pc] + pos]
                new = np.where(rng.random(len(act)) < s.neighbour_prob, neighbour, new)
            items[act, j] = new
        sess_idx, col = np.nonzero(items >= 0)
        v_item, v_ts, v_user = items[sess_idx, col], view_ts[sess_idx, col], users[sess_idx]
        th = theta[sess_idx]
        aff = th[np.arange(len(v_item)), w.primary[v_item]] / th.max(axis=1)  # 1 for the favourite category
        mult = s.affinity_floor + (1 - s.affinity_floor) * aff
        nv = len(v_item)
        clicked = rng.random(nv) < p_click * mult
        carted = clicked & (rng.random(nv) < p_cart * mult)
        bought = carted & (rng.random(nv) < p_buy)
        rated = bought & (rng.random(nv) < p_rate)
        c_ts = v_ts + gap(nv)
        k_ts = c_ts + gap(nv)
        p_ts = k_ts + gap(nv)
        r_ts = p_ts + gap(nv)
        value = w.quality[v_item] + s.rating_affinity * (aff - 0.5) + rng.normal(0, s.rating_noise, nv)
        value = _round_rating(value, s.rating_step)
        sess = sess_idx + n_sessions
        parts = []
        for mask, t, code in (
            (np.ones(nv, bool), v_ts, _VIEW), (clicked, c_ts, _CLICK), (carted, k_ts, _CART),
            (bought, p_ts, _PURCHASE), (rated, r_ts, _RATING),
        ):  # fmt: skip
            rating = np.where(code == _RATING, value, np.nan)[mask]
            parts.append(
                _Block(t[mask], v_user[mask], v_item[mask], np.full(mask.sum(), code), rating, sess[mask])
            )
        blocks.append(_Block.concat(parts))
        n_sessions += b
        total += len(blocks[-1])
    allb = _Block.concat(blocks)
    # Trim to exactly `budget`: sessions are iid, so drop whole sessions from the end of the generation order,
    # then keep a time-prefix of the boundary session (a prefix keeps the funnel consistent).
    counts = np.bincount(allb.session, minlength=n_sessions)
    cum = np.cumsum(counts)
    last = int(np.searchsorted(cum, budget))  # first session whose cumulative count reaches the budget
    keep_in_last = budget - (int(cum[last - 1]) if last > 0 else 0)
    before = allb.take(allb.session < last)
    boundary = allb.take(allb.session == last)
    boundary = boundary.take(np.argsort(boundary.ts, kind="stable")[:keep_in_last])
    return _Block.concat([before, boundary]), last + 1


class _Abuse:
    """Generates the abuse blocks and their ground truth; accounts are numbered after the genuine users."""

    def __init__(self, w: _World, rng: np.random.Generator, n_events: int, first_session: int) -> None:
        self.w, self.rng, self.n_events = w, rng, n_events
        self.next_account = w.n_users
        self.next_session = first_session
        self.blocks: list[_Block] = []
        self.groups: list[dict[str, Any]] = []
        self.user_labels: dict[int, dict[str, Any]] = {}  # account -> label
        self.item_labels: dict[int, dict[str, Any]] = {}  # item -> label
        self.used_targets = np.zeros(w.n_items, dtype=bool)

    def _accounts(self, n: int) -> list[int]:
        out = list(range(self.next_account, self.next_account + n))
        self.next_account += n
        return out

    def _session(self) -> int:
        self.next_session += 1
        return self.next_session - 1

    def _targets(self, n: int, at: int, unpopular: bool) -> list[int]:
        """Distinct target items released by `at`, not targeted before; farms prefer the less popular half."""
        w = self.w
        ok = (w.release <= at) & ~self.used_targets
        if unpopular:
            ok &= w.weight <= np.median(w.weight)
        cand = np.flatnonzero(ok)
        if len(cand) < n:
            cand = np.flatnonzero((w.release <= at) & ~self.used_targets)
        chosen = self.rng.choice(cand, size=min(n, len(cand)), replace=False)
        self.used_targets[chosen] = True
        return [int(x) for x in chosen]

    def click_bots(self) -> None:
        b, w, rng = self.w.conf.click_bots, self.w, self.rng
        total = round(b.event_share * self.n_events)
        if b.n_bots <= 0 or total <= 0:
            return
        per = [total // b.n_bots + (1 if i < total % b.n_bots else 0) for i in range(b.n_bots)]
        for i, n in enumerate(per):
            if n == 0:
                continue
            (acct,) = self._accounts(1)
            period = int(rng.integers(b.period_min_ms, b.period_max_ms + 1))
            dur = period * n
            start = w.start + int(rng.integers(0, max(1, w.span - dur)))
            jitter = rng.integers(-b.jitter_ms, b.jitter_ms + 1, n)
            ts = start + np.arange(n, dtype=np.int64) * period + jitter
            items = w.sample_item_any(ts, rng, popular=False)
            self._add(ts, acct, items, _CLICK, np.full(n, np.nan), self._session())
            gid = f"bot-{i}"
            self.groups.append(
                {"id": gid, "kind": "click_bot", "start_ts": int(ts.min()), "accounts": [acct], "targets": [],
                 "period_ms": period, "jitter_ms": b.jitter_ms, "events": n}
            )  # fmt: skip
            self.user_labels[acct] = {"kind": "click_bot", "group": gid, "since": int(ts.min())}

    def click_farms(self) -> None:
        f, w, rng = self.w.conf.click_farms, self.w, self.rng
        per_farm, actions = self._farm_plan()
        if per_farm == 0:
            return
        for i in range(f.n_farms):
            fstart = w.start + int(rng.integers(0, max(1, int(w.span * 0.7))))
            targets = self._targets(f.targets_per_farm, fstart, unpopular=True)
            accts = self._accounts(per_farm)
            gid = f"farm-{i}"
            first_touch: dict[int, int] = {}
            n_events = 0
            for acct in accts:
                a0 = fstart + int(rng.integers(0, max(1, int(f.account_spread_h * 3_600_000))))
                v_ts = a0 + np.cumsum(rng.exponential(f.gap_s * 1000, actions)).astype(np.int64)
                on_target = rng.random(actions) < f.target_prob
                camo = w.sample_item_any(v_ts, rng, popular=True)
                items = np.where(on_target, np.array(targets)[rng.integers(0, len(targets), actions)], camo)
                c_ts = v_ts + (1000 + rng.exponential(f.click_delay_s * 1000, actions)).astype(np.int64)
                sess = self._session()
                self._add(v_ts, acct, items, _VIEW, np.full(actions, np.nan), sess)
                self._add(c_ts, acct, items, _CLICK, np.full(actions, np.nan), sess)
                n_events += 2 * actions
                self.user_labels[acct] = {"kind": "click_farm", "group": gid, "since": int(v_ts.min())}
                for t in targets:
                    hit = items == t
                    if hit.any():
                        first_touch[t] = min(first_touch.get(t, 2**62), int(v_ts[hit].min()))
            for t in targets:
                if t in first_touch:
                    self.item_labels[t] = {"kind": "click_farm_target", "group": gid, "since": first_touch[t]}
            self.groups.append(
                {"id": gid, "kind": "click_farm", "start_ts": fstart, "accounts": accts, "targets": targets,
                 "events": n_events}
            )  # fmt: skip

    def shilling(self, genuine: _Block) -> None:
        sh, w, rng = self.w.conf.shilling, self.w, self.rng
        step = w.conf.sessions.rating_step
        per_account = sh.targets_per_campaign + sh.filler_per_account
        total = round(sh.event_share * self.n_events)
        if sh.n_campaigns <= 0 or per_account <= 0 or total <= 0:
            return
        n_acc = max(1, round(total / (sh.n_campaigns * per_account)))
        # Filler models need the observed rating distribution (what an attacker could scrape).
        rated = genuine.etype == _RATING
        g_vals = genuine.rating[rated]
        g_mean = float(g_vals.mean()) if len(g_vals) else w.conf.catalogue.quality_mean
        g_sd = float(g_vals.std()) if len(g_vals) > 1 else 1.0
        sums = np.bincount(genuine.item[rated], weights=g_vals, minlength=w.n_items)
        cnts = np.bincount(genuine.item[rated], minlength=w.n_items)
        item_mean = np.where(cnts > 0, sums / np.maximum(cnts, 1), w.quality)
        for i in range(sh.n_campaigns):
            push = bool(rng.random() < sh.push_fraction)
            attack = sh.attacks[i % len(sh.attacks)]
            cstart = w.start + int(w.span * 0.1) + int(rng.integers(0, max(1, int(w.span * 0.7))))
            targets = self._targets(sh.targets_per_campaign, cstart, unpopular=False)
            accts = self._accounts(n_acc)
            gid = f"campaign-{i}"
            extreme = sh.push_rating if push else sh.nuke_rating
            first_touch: dict[int, int] = {}
            for acct in accts:
                a0 = cstart + int(rng.integers(0, max(1, int(sh.account_spread_h * 3_600_000))))
                filler_pool = np.flatnonzero((w.release <= a0) & ~self.used_targets)
                n_fill = min(sh.filler_per_account, len(filler_pool))
                filler = rng.choice(filler_pool, size=n_fill, replace=False)
                items = np.concatenate([np.array(targets, dtype=np.int64), filler])
                if attack == "random":
                    fill_vals = rng.normal(g_mean, g_sd, n_fill)
                else:
                    fill_vals = rng.normal(item_mean[filler], g_sd)
                vals = np.concatenate([np.full(len(targets), extreme), _round_rating(fill_vals, step)])
                order = rng.permutation(len(items))
                items, vals = items[order], vals[order]
                ts = a0 + np.cumsum(rng.exponential(sh.gap_s * 1000, len(items))).astype(np.int64)
                self._add(ts, acct, items, _RATING, vals, self._session())
                self.user_labels[acct] = {"kind": "shilling", "group": gid, "since": int(ts.min())}
                for t in targets:
                    first_touch[t] = min(first_touch.get(t, 2**62), int(ts[items == t].min()))
            for t in targets:
                self.item_labels[t] = {
                    "kind": "shilling_target", "group": gid, "since": first_touch[t],
                    "direction": "push" if push else "nuke",
                }  # fmt: skip
            self.groups.append(
                {"id": gid, "kind": "shilling", "attack": attack, "direction": "push" if push else "nuke",
                 "rating": extreme, "start_ts": cstart, "accounts": accts, "targets": targets,
                 "events": n_acc * (len(targets) + sh.filler_per_account)}
            )  # fmt: skip

    def _farm_plan(self) -> tuple[int, int]:
        """(accounts per farm, actions per account): fewer accounts when the share is too small for all."""
        f = self.w.conf.click_farms
        total = round(f.event_share * self.n_events)
        if f.n_farms <= 0 or f.accounts_per_farm <= 0 or total < 2 * f.n_farms:
            return 0, 0
        per_farm = min(f.accounts_per_farm, total // (2 * f.n_farms))
        return per_farm, max(1, total // (2 * f.n_farms * per_farm))

    def planned_events(self) -> int:
        """Events the abuse generators will make (so genuine traffic can fill the rest exactly)."""
        conf, n = self.w.conf, self.n_events
        b, f, sh = conf.click_bots, conf.click_farms, conf.shilling
        out = round(b.event_share * n) if b.n_bots > 0 else 0
        per_farm, actions = self._farm_plan()
        out += 2 * actions * per_farm * f.n_farms
        per_account = sh.targets_per_campaign + sh.filler_per_account
        if sh.n_campaigns > 0 and per_account > 0 and round(sh.event_share * n) > 0:
            n_acc_s = max(1, round(round(sh.event_share * n) / (sh.n_campaigns * per_account)))
            out += sh.n_campaigns * n_acc_s * per_account
        return out

    def _add(self, ts: I64, acct: int, items: I64, code: int, rating: F64, session: int) -> None:
        n = len(ts)
        full = lambda v: np.full(n, v, dtype=np.int64)  # noqa: E731
        block = _Block(
            ts.astype(np.int64), full(acct), items.astype(np.int64), full(code), rating, full(session)
        )
        self.blocks.append(block)


def simulate(conf: SimulatorConf) -> Simulation:
    """Run the simulation described by `conf` (pure function of it)."""
    _check(conf)
    rng = np.random.Generator(np.random.PCG64(conf.seed))
    w = _World(conf, rng)
    n_targets = conf.click_farms.n_farms * conf.click_farms.targets_per_farm
    n_targets += conf.shilling.n_campaigns * conf.shilling.targets_per_campaign
    at_start = int((w.release == w.start).sum())
    if conf.shilling.n_campaigns > 0 and at_start < n_targets + conf.shilling.filler_per_account:
        raise ValueError(
            f"only {at_start} items exist at the start, fewer than the abuse targets ({n_targets}) plus "
            f"shilling.filler_per_account ({conf.shilling.filler_per_account}): raise catalogue.n_items or "
            "catalogue.initial_fraction, or lower those"
        )
    abuse = _Abuse(w, rng, conf.n_events, first_session=0)
    planned = abuse.planned_events()
    if planned >= conf.n_events:
        raise ValueError(
            f"abuse would make {planned} of {conf.n_events} events: lower the event_share values "
            "or raise n_events"
        )
    genuine, n_sessions = _genuine(w, conf.n_events - planned, rng)
    abuse.next_session = n_sessions
    abuse.click_bots()
    abuse.click_farms()
    abuse.shilling(genuine)
    allb = _Block.concat([genuine, *abuse.blocks])
    allb = allb.take(np.argsort(allb.ts, kind="stable"))
    if len(allb) != conf.n_events:  # planned_events and the generators disagree: a bug, not bad input
        raise AssertionError(f"simulator made {len(allb)} events, planned {conf.n_events}")

    # Public ids: random permutations, so an id reveals neither arrival order nor abuse.
    n_accounts = abuse.next_account
    user_ids = [f"u{x:07d}" for x in rng.permutation(n_accounts)]
    item_ids = [f"i{x:06d}" for x in rng.permutation(w.n_items)]
    session_ids = [f"s{x:08d}" for x in rng.permutation(max(abuse.next_session, 1))]
    events = [
        Event(
            f"e{i:09d}",
            user_ids[u],
            item_ids[it],
            _TYPE_NAMES[et],
            t,
            None if et != _RATING else r,
            session_ids[s],
        )  # fmt: skip
        for i, (t, u, it, et, r, s) in enumerate(
            zip(
                allb.ts.tolist(),
                allb.user.tolist(),
                allb.item.tolist(),
                allb.etype.tolist(),
                allb.rating.tolist(),
                allb.session.tolist(),
                strict=True,
            )
        )  # fmt: skip
    ]
    items = [
        ItemMeta(
            item_ids[i],
            w.titles[i],
            tuple(w.cat_names[c] for c in w.categories[i]),
            f"A {w.cat_names[w.primary[i]].lower()} title, released at {int(w.release[i])}.",
        )  # fmt: skip
        for i in range(w.n_items)
    ]
    items.sort(key=lambda m: m.item_id)
    stream, noise_labels = _stream(events, conf.noise, rng)

    genuine_users = int(len(np.unique(genuine.user)))
    kinds = ("click_bot", "click_farm", "shilling")
    abuse_events = {k: 0 for k in kinds}
    for g in abuse.groups:
        abuse_events[g["kind"]] += int(g["events"])
    labels: dict[str, Any] = {
        "seed": conf.seed,
        "config": dataclasses.asdict(conf),
        "period": {"start_ts": w.start, "end_ts": w.end},
        "counts": {
            "events": len(events),
            "lines": len(stream),
            "genuine_events": len(genuine),
            "abuse_events": abuse_events,
            "users": len(set(e.user_id for e in events)),
            "genuine_users": genuine_users,
            "abuse_users": {k: sum(1 for v in abuse.user_labels.values() if v["kind"] == k) for k in kinds},
            "items": len(items),
            "abuse_items": len(abuse.item_labels),
            "event_types": {t: sum(1 for e in events if e.event_type == t) for t in EVENT_TYPES},
            **noise_labels["counts"],
        },
        "users": {user_ids[a]: v for a, v in sorted(abuse.user_labels.items())},
        "items": {item_ids[i]: v for i, v in sorted(abuse.item_labels.items())},
        "groups": [
            {
                **g,
                "accounts": [user_ids[a] for a in g["accounts"]],
                "targets": [item_ids[t] for t in g["targets"]],
            }
            for g in abuse.groups
        ],
        "malformed": noise_labels["malformed"],
        "duplicates": noise_labels["duplicates"],
    }
    return Simulation(events, items, labels, stream)


def _malformed_line(kind: str, base: dict[str, Any], rng: np.random.Generator) -> tuple[bytes, str]:
    """One invalid message of `kind`, and the Reason the validator must give it."""
    d = dict(base)
    dumps = lambda o: json.dumps(o, separators=(",", ":")).encode()  # noqa: E731
    if kind == "not_json":
        full = dumps(d)
        return full[: int(rng.integers(1, len(full)))], Reason.NOT_JSON.value
    if kind == "not_utf8":
        full = dumps(d)
        cut = int(rng.integers(1, len(full)))
        return full[:cut] + b"\xff\xfe" + full[cut:], Reason.NOT_UTF8.value
    if kind == "not_object":
        return dumps([d]), Reason.NOT_OBJECT.value
    if kind == "missing_field":
        del d[("event_id", "user_id", "item_id", "event_type", "ts")[int(rng.integers(0, 5))]]
        return dumps(d), Reason.MISSING_FIELD.value
    if kind == "bad_type":
        d["ts"] = str(d["ts"])
        return dumps(d), Reason.BAD_TYPE.value
    if kind == "bad_id":
        d["user_id"] = "" if rng.random() < 0.5 else d["user_id"] + "\u0007"
        return dumps(d), Reason.BAD_ID.value
    if kind == "bad_event_type":
        d["event_type"] = ("like", "VIEW", "share", "")[int(rng.integers(0, 4))]
        return dumps(d), Reason.BAD_EVENT_TYPE.value
    if kind == "ts_out_of_range":
        d["ts"] = d["ts"] // 1000  # the classic seconds-for-milliseconds bug
        return dumps(d), Reason.TS_OUT_OF_RANGE.value
    if kind == "bad_rating":
        d["event_type"] = "rating"
        d["rating"] = (0.0, 7.0, -1.0, 10.0)[int(rng.integers(0, 4))]
        return dumps(d), Reason.BAD_RATING.value
    if kind == "unexpected_rating":
        d["event_type"] = "click"
        d["rating"] = 4.0
        return dumps(d), Reason.UNEXPECTED_RATING.value
    if kind == "unknown_field":
        d.pop("rating", None)
        d["event_type"] = "view" if d["event_type"] == "rating" else d["event_type"]
        d["timestamp"] = d["ts"]
        return dumps(d), Reason.UNKNOWN_FIELD.value
    if kind == "duplicate_field":
        full = dumps(d)
        return full[:-1] + b',"ts":' + str(d["ts"]).encode() + b"}", Reason.DUPLICATE_FIELD.value
    if kind == "too_large":
        d["context"] = {"pad": "x" * (MAX_MESSAGE_BYTES + 16)}
        return dumps(d), Reason.TOO_LARGE.value
    raise ValueError(f"unknown malformed kind {kind!r}")


def _stream(
    events: list[Event], noise: NoiseConf, rng: np.random.Generator
) -> tuple[list[tuple[bytes, bytes | None, int]], dict[str, Any]]:
    """Valid events as lines, with malformed lines and duplicates woven in at random places."""
    n = len(events)
    lines = [e.to_json().encode("utf-8") for e in events]
    extras: list[tuple[int, int, str, bytes, str]] = []  # (after event index, tie, kind, payload, info)
    n_bad = round(noise.malformed_rate * n) if noise.malformed_kinds else 0
    if n_bad:
        kinds = [noise.malformed_kinds[i % len(noise.malformed_kinds)] for i in rng.permutation(n_bad)]
        after = rng.integers(-1, n, n_bad)
        bases = rng.integers(0, n, n_bad)
        for j, (k, a, b) in enumerate(zip(kinds, after.tolist(), bases.tolist(), strict=True)):
            payload, reason = _malformed_line(k, events[b].to_dict(), rng)
            extras.append((a, j, "malformed", payload, reason))
    n_dup = round(noise.duplicate_rate * n)
    if n_dup:
        orig = rng.integers(0, n, n_dup)
        lag = rng.integers(0, noise.duplicate_max_lag + 1, n_dup)
        for j, (o, g) in enumerate(zip(orig.tolist(), lag.tolist(), strict=True)):
            extras.append((min(o + g, n - 1), n_bad + j, "duplicate", lines[o], events[o].event_id))
    extras.sort(key=lambda x: (x[0], x[1]))
    stream: list[tuple[bytes, bytes | None, int]] = []
    malformed: list[dict[str, Any]] = []
    duplicates: list[dict[str, Any]] = []
    by_reason: dict[str, int] = {}
    x = 0
    for i in range(-1, n):
        if i >= 0:
            e = events[i]
            stream.append((lines[i], e.user_id.encode(), e.ts))
        while x < len(extras) and extras[x][0] == i:
            _, _, kind, payload, info = extras[x]
            ts = events[max(i, 0)].ts
            if kind == "malformed":
                stream.append((payload, None, ts))
                malformed.append({"line": len(stream), "reason": info})
                by_reason[info] = by_reason.get(info, 0) + 1
            else:
                stream.append((payload, events[max(i, 0)].user_id.encode(), ts))
                duplicates.append({"line": len(stream), "event_id": info})
            x += 1
    counts = {
        "malformed": len(malformed),
        "malformed_by_reason": dict(sorted(by_reason.items())),
        "duplicates": len(duplicates),
    }
    return stream, {"counts": counts, "malformed": malformed, "duplicates": duplicates}


def write_outputs(sim: Simulation, out_dir: str | Path) -> dict[str, Path]:
    """Write events.jsonl (the full stream, one message per line), items.jsonl and labels.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"events": out / "events.jsonl", "items": out / "items.jsonl", "labels": out / "labels.json"}
    with open(paths["events"], "wb") as f:
        for payload, _, _ in sim.stream:
            f.write(payload)
            f.write(b"\n")
    with open(paths["items"], "wb") as f:
        for it in sim.items:
            f.write(it.to_json().encode("utf-8"))
            f.write(b"\n")
    paths["labels"].write_text(json.dumps(sim.labels, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return paths


def first_abuse_ts(labels: dict[str, Any]) -> int | None:
    """Earliest `since` over labelled users (handy for evaluations that split before abuse starts)."""
    since = [v["since"] for v in labels.get("users", {}).values()]
    return min(since) if since else None
