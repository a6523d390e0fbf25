"""`streamrec data attack` (literature shilling attacks) and attack-eval's table, on a synthetic MovieLens-format
data set made here (ML-100K itself only in the last test, skipped if `../shared/data/ml-100k` is missing)."""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from streamrec.cli import main as cli_main
from streamrec.data import load_events
from streamrec.data.attack import AttackError, AttackOptions, inject, load_dataset, new_user_ids
from streamrec.data.attack_eval import BEGIN, END, SECTION, grid, markdown, parse_list, row_of, update_results
from streamrec.data.loaders import shift_into_contract
from streamrec.replay import evaluate_labels

REPO = Path(__file__).resolve().parents[2]
ML100K = REPO.parent / "shared" / "data" / "ml-100k"
N_USERS, N_ITEMS = 200, 150
DAY_S = 86_400


def make_ml(d: Path, seed: int = 3) -> Path:
    """A small ML-100K-format data set: u.data (tab: user, item, rating 1-5, ts s), u.item (pipe, 19 genre flags).

    Items have a quality (their mean rating) and a Zipf-like popularity; ratings are spread over 200 days of 1997.
    """
    rng = np.random.default_rng(seed)
    quality = rng.uniform(1.8, 4.6, N_ITEMS)
    pop = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.8
    pop /= pop.sum()
    t0 = 852_076_800  # 1997-01-01
    lines = []
    for u in range(1, N_USERS + 1):
        n = int(rng.integers(15, 45))
        items = rng.choice(N_ITEMS, size=n, replace=False, p=pop)
        r = np.clip(np.round(quality[items] + rng.normal(0, 0.8, n)), 1, 5).astype(int)
        ts = t0 + rng.integers(0, 200 * DAY_S, n)
        lines += [f"{u}\t{i + 1}\t{x}\t{t}\n" for i, x, t in zip(items, r, ts, strict=True)]
    d.mkdir(parents=True, exist_ok=True)
    (d / "u.data").write_text("".join(lines))
    flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)  # Drama
    (d / "u.item").write_text("".join(f"{i}|Film {i} (1997)|01-Jan-1997||http://x|{flags}\n" for i in range(1, 151)))
    return d


@pytest.fixture(scope="module")
def ml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ml(tmp_path_factory.mktemp("data") / "ml-syn")


def genuine_ratings(d: Path) -> list[tuple[str, str, float]]:
    out = []
    for line in (d / "u.data").read_text().splitlines():
        u, i, r, _ = line.split("\t")
        out.append((u, i, float(r)))
    return out


def profiles(att_events: list, labels: dict) -> dict[str, list]:
    """Attack events per attacker account."""
    by: dict[str, list] = defaultdict(list)
    for e in att_events:
        if e.user_id in labels["users"]:
            by[e.user_id].append(e)
    return by


def run(ml: Path, **kw: object) -> tuple[list, dict]:
    att = inject(load_dataset(ml), AttackOptions(**kw))  # type: ignore[arg-type]
    return att.events, att.labels


def test_same_args_give_byte_identical_files_and_another_seed_does_not(ml: Path, tmp_path: Path) -> None:
    args = ["data", "attack", str(ml), "--kind", "average", "--size", "0.1", "--timing", "spread", "--seed", "5"]
    for name in ("a", "b"):
        assert cli_main([*args, "--out", str(tmp_path / name)]) == 0
    assert cli_main([*args[:-1], "6", "--out", str(tmp_path / "c")]) == 0
    for f in ("events.jsonl", "items.jsonl", "labels.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "events.jsonl").read_bytes() != (tmp_path / "c" / "events.jsonl").read_bytes()
    assert json.loads((tmp_path / "a" / "labels.json").read_text())["config"]["seed"] == 5


def test_output_is_the_converted_data_plus_valid_unique_sorted_attack_events(ml: Path, tmp_path: Path) -> None:
    assert cli_main(["data", "attack", str(ml), "--out", str(tmp_path / "att"), "--size", "0.05"]) == 0
    assert cli_main(["data", "convert", str(ml), "--out", str(tmp_path / "clean" / "events.jsonl")]) == 0
    events = load_events(tmp_path / "att")  # parses every line against the contract, refuses repeated ids
    labels = json.loads((tmp_path / "att" / "labels.json").read_text())
    lines = (tmp_path / "att" / "events.jsonl").read_bytes().splitlines()
    clean = (tmp_path / "clean" / "events.jsonl").read_bytes().splitlines()
    genuine = [ln for ln, e in zip(lines, events, strict=True) if e.user_id not in labels["users"]]
    assert genuine == clean  # genuine events byte for byte as `data convert` writes them (same shift)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert (tmp_path / "att" / "items.jsonl").read_bytes() == (tmp_path / "clean" / "items.jsonl").read_bytes()
    assert labels["counts"]["events"] == len(events) == len(clean) + labels["counts"]["abuse_events"]["shilling"]


def test_profile_count_filler_count_and_target_ratings(ml: Path) -> None:
    n_genuine_items = len({i for _, i, _ in genuine_ratings(ml)} | {str(i) for i in range(1, 151)})
    for kind, size, filler, direction, n_targets in [
        ("random", 0.03, 0.05, "push", 1),
        ("average", 0.10, 0.2, "nuke", 2),
        ("bandwagon", 0.25, 0.1, "push", 3),
    ]:
        events, labels = run(ml, kind=kind, size=size, filler=filler, direction=direction, targets=n_targets)
        by = profiles(events, labels)
        assert len(by) == len(labels["users"]) == round(size * N_USERS)
        g = labels["groups"][0]
        targets = set(g["targets"])
        assert len(targets) == n_targets and set(labels["items"]) == targets
        n_fill = round(filler * n_genuine_items)
        assert g["filler_items"] == n_fill
        extreme = 5.0 if direction == "push" else 1.0
        n_sel = 3 if kind == "bandwagon" else 0
        for evs in by.values():
            items = [e.item_id for e in evs]
            assert len(items) == len(set(items)) == n_targets + n_sel + n_fill
            assert {e.item_id: e.rating for e in evs if e.item_id in targets} == dict.fromkeys(targets, extreme)
            assert all(e.event_type == "rating" and e.rating in (1, 2, 3, 4, 5) for e in evs)
        for t, v in labels["items"].items():
            assert v["kind"] == "shilling_target" and v["direction"] == direction
            assert v["since"] == min(e.ts for e in events if e.item_id == t and e.user_id in labels["users"])


def test_targets_are_eligible_and_the_same_for_every_kind_with_one_seed(ml: Path) -> None:
    rs = genuine_ratings(ml)
    g_mean = float(np.mean([r for _, _, r in rs]))
    per: dict[str, list[float]] = defaultdict(list)
    for _, i, r in rs:
        per[i].append(r)
    seen: dict[str, list[str]] = {}
    for direction in ("push", "nuke"):
        for kind in ("random", "average", "bandwagon"):
            for timing in ("burst", "spread"):
                _, labels = run(ml, kind=kind, direction=direction, timing=timing, targets=3, seed=9)
                seen.setdefault(direction, labels["groups"][0]["targets"])
                assert labels["groups"][0]["targets"] == seen[direction]
        for t in seen[direction]:
            assert len(per[t]) >= 10
            assert np.mean(per[t]) <= g_mean if direction == "push" else np.mean(per[t]) >= g_mean
    assert seen["push"] != seen["nuke"]


def _filler_vs_item_means(ml: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    per: dict[str, list[float]] = defaultdict(list)
    for _, i, r in genuine_ratings(ml):
        per[i].append(r)
    events, labels = run(ml, kind=kind, size=0.5, filler=0.3, seed=1)
    g = labels["groups"][0]
    fixed = set(g["targets"]) | set(g["selected"])
    pairs = [(e.rating, np.mean(per[e.item_id])) for e in events
             if e.user_id in labels["users"] and e.item_id not in fixed and len(per[e.item_id]) >= 2]  # fmt: skip
    a = np.array(pairs)
    return a[:, 0], a[:, 1]


@pytest.mark.parametrize("kind", ["random", "average", "bandwagon"])
def test_filler_statistics(ml: Path, kind: str) -> None:
    g = np.array([r for _, _, r in genuine_ratings(ml)])
    vals, item_means = _filler_vs_item_means(ml, kind)
    assert len(vals) > 1000
    corr = float(np.corrcoef(vals, item_means)[0, 1])
    if kind == "average":  # Lam & Riedl's average attack: filler ~ N(mean_i, sd_i)
        assert corr > 0.5
        assert abs(float(np.mean(vals - item_means))) < 0.15
    else:  # random (and bandwagon's filler): ~ N(global mean, global sd), blind to the item
        assert abs(corr) < 0.15
        assert abs(float(vals.mean()) - float(g.mean())) < 0.15
        assert 0.6 * g.std() < vals.std() < 1.4 * g.std()


def test_bandwagon_rates_the_most_rated_items_r_max(ml: Path) -> None:
    counts = Counter(i for _, i, _ in genuine_ratings(ml))
    events, labels = run(ml, kind="bandwagon", size=0.1, bandwagon_items=4)
    g = labels["groups"][0]
    top = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], int(kv[0]))) if i not in g["targets"]][:4]
    assert g["selected"] == top
    for evs in profiles(events, labels).values():
        assert {e.item_id: e.rating for e in evs if e.item_id in top} == dict.fromkeys(top, 5.0)
    _, rl = run(ml, kind="random", size=0.1)
    assert rl["groups"][0]["selected"] == []


def _attack_start(ml: Path, at: float) -> int:
    ev, _ = shift_into_contract(load_events(ml))
    t0, t1 = ev[0].ts, ev[-1].ts
    return t0 + round(at * (t1 - t0))


def test_burst_profiles_all_start_within_the_burst(ml: Path) -> None:
    events, labels = run(ml, timing="burst", size=0.3, burst_hours=3, at=0.4, gap_s=30)
    a = _attack_start(ml, 0.4)
    starts = [min(e.ts for e in evs) for evs in profiles(events, labels).values()]
    assert len(starts) == 60
    assert a - 1000 <= min(starts) and max(starts) <= a + 3 * 3_600_000
    assert max(starts) - min(starts) > 2 * 3_600_000  # uniform over the burst, not all at once
    target = labels["groups"][0]["targets"][0]
    positions = set()
    for evs in profiles(events, labels).values():  # one session: gaps ~ exponential, mean gap_s
        ts = sorted(e.ts for e in evs)
        assert 10_000 < (ts[-1] - ts[0]) / (len(ts) - 1) < 60_000
        positions.add([e.item_id for e in sorted(evs, key=lambda e: e.ts)].index(target))
    assert len(positions) >= 5  # items in random order (9 per profile): the target is not always first
    assert labels["users"][next(iter(labels["users"]))]["since"] == min(starts)


def test_spread_profiles_cover_the_window_between_genuine_traffic(ml: Path) -> None:
    events, labels = run(ml, timing="spread", size=0.3, spread_days=28, at=0.4)
    a = _attack_start(ml, 0.4)
    by = profiles(events, labels)
    starts = sorted(min(e.ts for e in evs) for evs in by.values())
    assert a - 1000 <= starts[0] and starts[-1] <= a + 28 * DAY_S * 1000 + 3_600_000
    assert starts[-1] - starts[0] > 0.8 * 28 * DAY_S * 1000
    # interleaved: genuine events between most consecutive profile starts (not one attack block)
    genuine_ts = np.array([e.ts for e in events if e.user_id not in labels["users"]])
    between = [((genuine_ts > s) & (genuine_ts < t)).sum() for s, t in zip(starts, starts[1:], strict=False)]
    assert sum(1 for n in between if n > 0) >= 0.7 * len(between)
    burst_events, burst_labels = run(ml, timing="burst", size=0.3, burst_hours=1, at=0.4)
    bs = sorted(min(e.ts for e in evs) for evs in profiles(burst_events, burst_labels).values())
    assert bs[-1] - bs[0] < 3_600_000  # the same seed in burst mode: all within the hour


def test_attacker_ids_continue_the_numbering_and_never_collide(ml: Path) -> None:
    events, labels = run(ml, size=0.1)
    genuine = {u for u, _, _ in genuine_ratings(ml)}
    assert set(labels["users"]) == {str(N_USERS + k) for k in range(1, 21)}
    assert not set(labels["users"]) & genuine
    assert len({e.event_id for e in events}) == len(events)
    by = profiles(events, labels)
    firsts = [min(e.ts for e in by[u]) for u in sorted(by, key=int)]
    assert firsts == sorted(firsts)  # ids in order of arrival, as new accounts get them
    assert new_user_ids(["u0007", "u0123"], 2) == ["u0124", "u0125"]
    assert new_user_ids(["3", "10"], 1) == ["11"]
    with pytest.raises(AttackError, match="look like"):
        new_user_ids(["u1", "v2"], 1)


def test_labels_score_through_evaluate_labels(ml: Path) -> None:
    _, labels = run(ml, size=0.1, targets=2)
    attackers = sorted(labels["users"], key=int)
    assert all(v == {"kind": "shilling", "group": "attack-0", "since": v["since"], "attack": "random"}
               for v in labels["users"].values())  # fmt: skip
    assert labels["counts"]["genuine_users"] == N_USERS and labels["config"]["seed"] == 0
    t1, t2 = sorted(labels["items"])
    flags_u = {"rating_anomaly": set(attackers[:10]) | {"1", "2"}, "shilling_member": set(attackers[:5])}
    flags_i = {"shilling": {t1, "999"}}
    ev = evaluate_labels(flags_u, flags_i, labels)
    assert ev["users"]["overall"] == {"flagged": 12, "true_positives": 10, "precision": round(10 / 12, 4),
                                      "recall": 0.5}  # fmt: skip
    assert ev["users"]["recall_by_kind"] == {"shilling": 0.5}
    assert ev["items"]["overall"]["precision"] == 0.5 and ev["items"]["overall"]["recall"] == 0.5
    assert ev["items"]["recall_by_kind"] == {"shilling_target": 0.5}
    assert t2 not in flags_i["shilling"]


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"size": 0.0}, r"--size must be in \(0, 1\]"),
        ({"size": 1.5}, r"--size must be in \(0, 1\]"),
        ({"filler": 0.0}, r"--filler must be in \(0, 1\]"),
        ({"filler": float("nan")}, r"--filler must be in \(0, 1\]"),
        ({"kind": "segment"}, "unknown attack kind 'segment'"),
        ({"direction": "up"}, "unknown direction"),
        ({"timing": "slow"}, "unknown timing"),
        ({"targets": 0}, "--targets must be >= 1"),
        ({"targets": 500}, "not enough for 500 push target"),
        ({"size": 0.001}, "rounds to 0 attack profiles"),
        ({"filler": 0.001}, "rounds to 0 filler items"),
        ({"at": 1.5}, "--at must be in"),
        ({"gap_s": 0}, "--gap-s must be > 0"),
    ],
)
def test_bad_options_are_refused_clearly(ml: Path, kw: dict, msg: str) -> None:
    with pytest.raises(AttackError, match=msg):
        run(ml, **kw)


def test_cli_reports_bad_options_without_a_traceback(ml: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["data", "attack", str(ml), "--out", str(tmp_path / "x"), "--size", "2"]) == 1
    assert "error: --size must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        cli_main(["data", "attack", str(ml), "--out", str(tmp_path / "x"), "--kind", "segment"])
    assert cli_main(["data", "attack", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 1


def test_attack_eval_table_and_results_block(tmp_path: Path) -> None:
    labels = {"users": {"944": {}, "945": {}}, "items": {"7": {}}, "counts": {"genuine_users": 100}}
    flags = {
        "rating_anomaly": {"flagged": 3, "true_positives": 2},
        "shilling_member": {"flagged": 1, "true_positives": 1},
    }
    item_flags = {"shilling": {"flagged": 2, "true_positives": 1}}
    summary = {
        "flagged_users": ["944", "945", "12"],
        "flagged_items": ["7", "8"],
        "events_in": 500,
        "seconds": 1.5,
        "labels_eval": {
            "users": {"overall": {}, "recall_by_kind": {}, **flags},
            "items": {"overall": {}, "recall_by_kind": {}, **item_flags},
        },
    }
    clean_summary = {
        **summary,
        "flagged_users": ["12", "13"],
        "flagged_items": [],
        "labels_eval": {"users": {"rating_anomaly": {"flagged": 2, "true_positives": 0}}, "items": {}},
    }
    row = row_of(summary, labels)
    assert (row["profiles"], row["users_flagged"], row["user_precision"], row["user_recall"]) == (2, 3, 0.6667, 1.0)
    assert (row["genuine_flagged"], row["genuine_flagged_share"], row["genuine_flagged_users"]) == (1, 0.01, ["12"])
    assert (row["targets_flagged"], row["items_flagged"], row["item_precision"]) == (1, 2, 0.5)
    assert row["attack_accounts_by_detector"] == {"rating_anomaly": 2, "shilling_member": 1}
    assert row["genuine_users_by_detector"] == {"rating_anomaly": 1}
    clean = row_of(clean_summary, {"users": {}, "items": {}, "counts": {"genuine_users": 100}})
    opts = AttackOptions(kind="bandwagon", size=0.1, timing="spread")
    result = {
        "setup": {"data": "d", "model": "m", "conf": "operators.yaml", "env": {"STREAMREC_X": "1"}, "filler": 0.05,
                  "targets": 1, "seed": 0, "at": 0.5, "burst_hours": 6.0, "spread_days": 28.0, "gap_s": 20.0},
        "clean": clean,
        "cells": [{"options": vars(opts) | {}, **row}],
    }  # fmt: skip
    md = markdown(result)
    assert "| none (clean data) | – | – | – | – | 2 | – | – | 2 (2.0 %) | – | 0 | – | – | rating_anomaly 2 |" in md
    assert ("| bandwagon | 10 % | spread | push | 2 | 3 | 0.67 | 1.00 | 1 (1.0 %) | 1/1 | 2 | 0.50 | "
            "rating_anomaly 2, shilling_member 1 | rating_anomaly 1 |") in md  # fmt: skip
    assert "STREAMREC_X=1" in md

    res = tmp_path / "RESULTS.md"
    res.write_text("# Results\n\nintro\n")
    update_results(res, "first")
    update_results(res, "second")
    text = res.read_text()
    assert text.count(SECTION) == 1 and text.count(BEGIN) == 1 and "first" not in text
    assert text.startswith("# Results\n\nintro\n\n" + SECTION) and f"{BEGIN}\nsecond\n{END}" in text
    res.write_text(f"a\n{BEGIN}\nold\n{END}\nb\n")
    update_results(res, "new")
    assert res.read_text() == f"a\n{BEGIN}\nnew\n{END}\nb\n"


def test_attack_eval_grid_and_lists() -> None:
    cells = grid(["random", "bandwagon"], [0.03, 0.1], ["burst", "spread"], ["push"], AttackOptions(seed=4))
    assert len(cells) == 8 and {c.seed for c in cells} == {4}
    assert parse_list("0.03, 0.10", float) == [0.03, 0.1]
    with pytest.raises(AttackError, match="unknown attack kind 'foo'"):
        parse_list("random,foo", str, ("random",), "attack kind")
    with pytest.raises(AttackError, match="size"):
        grid(["random"], [0.0], ["burst"], ["push"], AttackOptions())


def test_attack_eval_refuses_a_bad_grid_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from streamrec.data import attack_eval

    args = argparse.Namespace(kinds="random", sizes="0.03", timings="often", directions="push", filler=0.05,
                              targets=1, seed=0, jobs=2, conf="operators.yaml", out=tmp_path / "o",
                              data=tmp_path, model=None, epochs=1, model_conf="model.yaml", results=None)  # fmt: skip
    assert attack_eval.main(args, argv=[]) == 1
    assert "unknown timing 'often'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not ML100K.is_dir(), reason="ML-100K not at ../shared/data/ml-100k")
def test_ml100k_attack_sizes() -> None:
    ds = load_dataset(ML100K)
    att = inject(ds, AttackOptions(kind="bandwagon", size=0.03, filler=0.05, timing="spread"))
    g, c = att.labels["groups"][0], att.labels["counts"]
    assert c["genuine_users"] == 943 and len(g["accounts"]) == 28 and g["filler_items"] == round(0.05 * 1682)
    assert g["accounts"][0] == "944" and g["selected"] == ["50", "258", "100"]  # Star Wars, Contact, Fargo
    assert c["events"] == 100_000 + 28 * (1 + 3 + 84)
