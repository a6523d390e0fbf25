"""The simulator: determinism, exact sizes, ground truth that agrees with the events, drift, noise."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from operators.schema import Event, Rejection, parse_event
from streamrec.config import from_mapping
from streamrec.data import load_events, load_items
from streamrec.data import simulator as sim_mod
from streamrec.data.simulator import SimulatorConf, load_conf, simulate, with_overrides, write_outputs

REPO = Path(__file__).resolve().parents[2]


def small(**over: Any) -> SimulatorConf:
    """The repo's YAML scaled down (so the shipped config is what is tested), plus overrides."""
    conf = with_overrides(load_conf(REPO / "conf" / "simulator.yaml"), events=20_000, users=400, seed=7)
    conf = dataclasses.replace(conf, catalogue=dataclasses.replace(conf.catalogue, n_items=600))
    return dataclasses.replace(conf, **over)


@pytest.fixture(scope="module")
def sim() -> sim_mod.Simulation:
    return simulate(small())


def by_user(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        out[e.user_id].append(e)
    return out


def gap_cv(ts: list[int]) -> float:
    g = np.diff(np.array(ts, dtype=float))
    return float(g.std() / g.mean()) if len(g) > 1 and g.mean() > 0 else float("inf")


def test_shipped_config_loads_and_every_key_is_commented() -> None:
    conf = load_conf()
    assert conf.n_events > 0
    lines = (REPO / "conf" / "simulator.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        is_key = stripped and not stripped.startswith(("#", "-")) and ":" in stripped.split("#")[0]
        if is_key and not stripped.split("#")[0].rstrip().endswith(":"):  # a scalar/list key, not a section
            commented = "#" in line or lines[i - 1].strip().startswith("#")
            assert commented, f"uncommented key in simulator.yaml: {line!r}"


def test_exact_sizes_sorted_and_valid(sim: sim_mod.Simulation) -> None:
    assert len(sim.events) == 20_000 == sim.labels["counts"]["events"]
    ts = [e.ts for e in sim.events]
    assert ts == sorted(ts)
    assert len({e.event_id for e in sim.events}) == len(sim.events)
    for e, (payload, key, t) in zip(sim.events, sim.stream, strict=True):
        assert parse_event(payload) == e and key == e.user_id.encode() and t == e.ts
    c = sim.labels["counts"]
    assert c["genuine_events"] + sum(c["abuse_events"].values()) == len(sim.events)
    assert sum(c["event_types"].values()) == len(sim.events)
    assert c["users"] == len({e.user_id for e in sim.events})
    assert len(sim.items) == 600 == c["items"]
    assert {e.item_id for e in sim.events} <= {i.item_id for i in sim.items}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    conf = small(n_events=5000)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_outputs(simulate(conf), a)
    write_outputs(simulate(conf), b)
    write_outputs(simulate(dataclasses.replace(conf, seed=conf.seed + 1)), c)
    for name in ("events.jsonl", "items.jsonl", "labels.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "events.jsonl").read_bytes() != (c / "events.jsonl").read_bytes()
    assert (a / "labels.json").read_bytes() != (c / "labels.json").read_bytes()


def test_outputs_load_back_through_the_public_api(tmp_path: Path, sim: sim_mod.Simulation) -> None:
    write_outputs(sim, tmp_path)
    assert load_events(tmp_path) == sim.events
    assert load_events(tmp_path / "events.jsonl") == sim.events
    assert load_items(tmp_path) == sim.items == load_items(tmp_path / "events.jsonl")
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels["counts"] == sim.labels["counts"]


def test_click_bots_are_machine_regular(sim: sim_mod.Simulation) -> None:
    users = by_user(sim.events)
    bots = [u for u, v in sim.labels["users"].items() if v["kind"] == "click_bot"]
    assert len(bots) == sim.labels["counts"]["abuse_users"]["click_bot"] > 0
    for u in bots:
        evs = users[u]
        assert {e.event_type for e in evs} == {"click"}
        assert gap_cv([e.ts for e in evs]) < 0.05, u
        assert sim.labels["users"][u]["since"] == evs[0].ts
        assert len({e.item_id for e in evs}) > 0.5 * len(evs)  # random items, not a few targets
    genuine = [u for u in users if u not in sim.labels["users"] and len(users[u]) >= 20]
    cvs = [gap_cv([e.ts for e in users[u]]) for u in genuine]
    assert len(cvs) > 50 and min(cvs) > 0.5  # no genuine user looks like a bot


def test_click_farms_hit_their_targets(sim: sim_mod.Simulation) -> None:
    users = by_user(sim.events)
    farms = [g for g in sim.labels["groups"] if g["kind"] == "click_farm"]
    assert farms
    for g in farms:
        targets = set(g["targets"])
        assert len(g["accounts"]) >= 2 and targets
        for t in targets:
            lab = sim.labels["items"][t]
            assert lab["kind"] == "click_farm_target" and lab["group"] == g["id"]
            first = min(e.ts for a in g["accounts"] for e in users[a] if e.item_id == t)
            assert lab["since"] == first
        for a in g["accounts"]:
            evs = users[a]
            assert evs[0].ts >= g["start_ts"] and sim.labels["users"][a]["group"] == g["id"]
            clicks = [e for e in evs if e.event_type == "click"]
            on_target = sum(e.item_id in targets for e in clicks) / len(clicks)
            assert on_target > 0.5, (a, on_target)


def test_shilling_accounts_rate_targets_extreme_and_are_younger_than_campaign(
    sim: sim_mod.Simulation,
) -> None:
    users = by_user(sim.events)
    camps = [g for g in sim.labels["groups"] if g["kind"] == "shilling"]
    assert camps and {g["attack"] for g in camps} == {"average", "random"}
    genuine_ratings = [
        e.rating for e in sim.events if e.event_type == "rating" and e.user_id not in sim.labels["users"]
    ]
    assert genuine_ratings
    for g in camps:
        extreme = 5.0 if g["direction"] == "push" else 1.0
        assert g["rating"] == extreme
        for a in g["accounts"]:
            evs = users[a]
            assert evs[0].ts >= g["start_ts"], "account older than its campaign"
            assert {e.event_type for e in evs} == {"rating"}
            got = {e.item_id: e.rating for e in evs if e.item_id in g["targets"]}
            assert got == {t: extreme for t in g["targets"]}
            fillers = [e.rating for e in evs if e.item_id not in g["targets"]]
            assert len(fillers) == sim.labels["config"]["shilling"]["filler_per_account"]
        for t in g["targets"]:
            assert sim.labels["items"][t]["direction"] == g["direction"]


def test_labels_cover_exactly_the_abuse_accounts(sim: sim_mod.Simulation) -> None:
    groups = sim.labels["groups"]
    accounts = [a for g in groups for a in g["accounts"]]
    assert len(accounts) == len(set(accounts)) == len(sim.labels["users"])
    targets = [t for g in groups for t in g["targets"]]
    assert len(targets) == len(set(targets)) == len(sim.labels["items"])
    counted: Counter[str] = Counter()
    for e in sim.events:
        lab = sim.labels["users"].get(e.user_id)
        if lab:
            counted[lab["kind"]] += 1
    assert dict(counted) == {k: v for k, v in sim.labels["counts"]["abuse_events"].items() if v}
    per_account = Counter(e.user_id for e in sim.events)
    for g in groups:
        assert sum(per_account[a] for a in g["accounts"]) == g["events"], g["id"]


def _category_drift(conf: SimulatorConf) -> float:
    """Mean total-variation distance between users' early and late category mixes (genuine views)."""
    s = simulate(conf)
    cat = {i.item_id: i.categories[0] for i in s.items}
    names = sorted({c for c in cat.values()})
    dists = []
    for u, evs in by_user(s.events).items():
        views = [cat[e.item_id] for e in evs if e.event_type == "view"]
        if u in s.labels["users"] or len(views) < 60:
            continue
        half = len(views) // 2
        a, b = Counter(views[:half]), Counter(views[half:])
        pa = np.array([a[n] for n in names], float) / half
        pb = np.array([b[n] for n in names], float) / (len(views) - half)
        dists.append(0.5 * np.abs(pa - pb).sum())
    assert len(dists) > 20
    return float(np.mean(dists))


def test_interests_drift_measurably() -> None:
    base = small()
    still = dataclasses.replace(base, users=dataclasses.replace(base.users, drift_strength=0.0))
    drifting, static = _category_drift(base), _category_drift(still)
    print(f"drift TV distance: drifting {drifting:.3f}, static {static:.3f}")
    assert drifting > static + 0.15, (drifting, static)


def test_recent_behaviour_predicts_next_item_better_than_history(sim: sim_mod.Simulation) -> None:
    """A sequential predictor (last item's category) beats a static one (the user's top category so far)."""
    cat = {i.item_id: i.categories[0] for i in sim.items}
    seq_hits = static_hits = n = 0
    for u, evs in by_user(sim.events).items():
        if u in sim.labels["users"]:
            continue
        views = [cat[e.item_id] for e in evs if e.event_type == "view"]
        counts: Counter[str] = Counter()
        for j, c in enumerate(views):
            if j >= 5:
                n += 1
                seq_hits += views[j - 1] == c
                static_hits += counts.most_common(1)[0][0] == c
            counts[c] += 1
    assert n > 1000
    print(f"next-category accuracy: last item {seq_hits / n:.3f}, top category so far {static_hits / n:.3f}")
    assert seq_hits / n > 2 * static_hits / n, (seq_hits / n, static_hits / n)


def test_new_users_and_items_arrive_over_time(sim: sim_mod.Simulation) -> None:
    start, end = sim.labels["period"]["start_ts"], sim.labels["period"]["end_ts"]
    mid = start + (end - start) // 2
    first_seen: dict[str, int] = {}
    item_first: dict[str, int] = {}
    for e in sim.events:
        first_seen.setdefault(e.user_id, e.ts)
        item_first.setdefault(e.item_id, e.ts)
    genuine_late = [u for u, t in first_seen.items() if t > mid and u not in sim.labels["users"]]
    assert len(genuine_late) > 10
    assert sum(t > mid for t in item_first.values()) > 10


def test_malformed_and_duplicates_are_planted_and_labelled(tmp_path: Path) -> None:
    conf = small(n_events=5000)
    conf = dataclasses.replace(
        conf, noise=dataclasses.replace(conf.noise, malformed_rate=0.01, duplicate_rate=0.01)
    )
    s = simulate(conf)
    c = s.labels["counts"]
    assert c["malformed"] == 50 and c["duplicates"] == 50 and c["lines"] == 5100 == len(s.stream)
    assert set(c["malformed_by_reason"]) == set(sim_mod.MALFORMED_KINDS)  # every kind planted at least once
    for m in s.labels["malformed"]:
        payload = s.stream[m["line"] - 1][0]
        r = parse_event(payload)
        assert isinstance(r, Rejection) and r.reason.value == m["reason"], (m, payload[:200])
        assert b"\n" not in payload
    for d in s.labels["duplicates"]:
        payload = s.stream[d["line"] - 1][0]
        e = parse_event(payload)
        assert isinstance(e, Event) and e.event_id == d["event_id"]
        assert payload in [p for p, _, _ in s.stream[: d["line"] - 1]]
    valid = [
        p for i, (p, _, _) in enumerate(s.stream, 1) if i not in {m["line"] for m in s.labels["malformed"]}
    ]
    assert len(valid) == 5050
    write_outputs(s, tmp_path)
    with pytest.raises(ValueError, match=r"events\.jsonl:\d+: "):
        load_events(tmp_path)


def test_bad_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="drift_strength"):
        simulate(small(users=dataclasses.replace(small().users, drift_strength=1.5)))
    with pytest.raises(ValueError, match="event_share"):
        base = small(n_events=1000)
        bots = dataclasses.replace(base.click_bots, event_share=0.6)
        simulate(
            dataclasses.replace(
                base, click_bots=bots, click_farms=dataclasses.replace(base.click_farms, event_share=0.6)
            )
        )
    with pytest.raises(ValueError, match="malformed_kinds"):
        simulate(small(noise=from_mapping(sim_mod.NoiseConf, {"malformed_kinds": ["nope"]})))


def test_tiny_runs_still_exact() -> None:
    for n in (1, 7, 300):
        conf = small(n_events=n)
        if n < 100:  # abuse shares would not fit in so few events
            conf = small(
                n_events=n,
                click_bots=dataclasses.replace(conf.click_bots, n_bots=0),
                click_farms=dataclasses.replace(conf.click_farms, n_farms=0),
                shilling=dataclasses.replace(conf.shilling, n_campaigns=0),
            )
        s = simulate(conf)
        assert len(s.events) == n


def test_cli_simulate_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streamrec.data import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(
        ["simulate", "--out", str(tmp_path), "--events", "3000", "--users", "200", "--seed", "3"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "simulated 3000 events" in out
    assert len(load_events(tmp_path)) == 3000
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels["seed"] == 3 and labels["config"]["users"]["n_users"] == 200
    args = parser.parse_args(["simulate"])
    assert args.func(args) == 1
    assert "--out" in capsys.readouterr().err
