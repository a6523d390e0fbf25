"""`streamrec replay`: the stream operators over an event JSONL file, offline, in file order.

The same code the Flink job runs: parse (dead letters), the user operator per event, the item operator fed by
its `item_events`, debounce timers fired as event time (the max timestamp seen) passes them. Writes
recommendations.jsonl, fraud_flags.jsonl, dead_letters.jsonl and summary.json; `--labels` (the simulator's
labels.json) adds precision/recall of flagged users and items, per detector and overall.

Streaming recommendation quality: for every user, was the item of their last event in the list in effect just
before it (the last list emitted for them earlier in the stream)? HR@k over users, `--recommender` switches
the model for MostPop / item-KNN baselines through the very same operator.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="run the stream operators over an event JSONL file offline (recs, fraud flags, dead letters)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=Path, help="artefact directory (streamrec train)")
    p.add_argument("--events", required=True, type=Path, help="event JSONL file (one message per line)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--labels", type=Path, help="simulator labels.json: adds precision/recall of the flags")
    p.add_argument("--conf", default="operators.yaml", help="operators config (default conf/operators.yaml)")
    p.add_argument("--recommender", choices=("model", "mostpop", "itemknn"), default="model",
                   help="what scores candidates (baselines go through the same operator)")  # fmt: skip
    p.add_argument("--int8", action="store_true", help="score with model.int8.onnx")
    p.add_argument("--limit", type=int, default=0, help="only the first N lines (0: all)")
    p.add_argument("--shards", type=int, default=None,
                   help="user shards whose base rates the detectors learn, as the job keeps them "
                        "(default: batching.shards of conf/local.yaml)")  # fmt: skip
    p.add_argument("--no-outputs", action="store_true", help="write only summary.json (faster on big files)")
    p.set_defaults(func=cmd_replay)


def _pct(values: list[int], q: float) -> int:
    if not values:
        return 0
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def _pr(flagged: set[str], truth: set[str]) -> dict[str, Any]:
    tp = len(flagged & truth)
    return {
        "flagged": len(flagged),
        "true_positives": tp,
        "precision": round(tp / len(flagged), 4) if flagged else None,
        "recall": round(tp / len(truth), 4) if truth else None,
    }


def evaluate_labels(
    user_flags: dict[str, set[str]], item_flags: dict[str, set[str]], labels: dict[str, Any]
) -> dict[str, Any]:
    """Per-detector and overall precision/recall; `*_flags` map detector -> flagged raw ids."""
    truth_u = set(labels.get("users", {}))
    truth_i = set(labels.get("items", {}))
    out: dict[str, Any] = {"users": {}, "items": {}}
    all_u: set[str] = set().union(*user_flags.values()) if user_flags else set()
    all_i: set[str] = set().union(*item_flags.values()) if item_flags else set()
    out["users"]["overall"] = _pr(all_u, truth_u)
    out["items"]["overall"] = _pr(all_i, truth_i)
    for d, s in sorted(user_flags.items()):
        out["users"][d] = _pr(s, truth_u)
    for d, s in sorted(item_flags.items()):
        out["items"][d] = _pr(s, truth_i)
    by_kind: dict[str, set[str]] = defaultdict(set)
    for u, v in labels.get("users", {}).items():
        by_kind[v["kind"]].add(u)
    out["users"]["recall_by_kind"] = {k: _pr(all_u, s)["recall"] for k, s in sorted(by_kind.items())}
    ik: dict[str, set[str]] = defaultdict(set)
    for i, v in labels.get("items", {}).items():
        ik[v["kind"]].add(i)
    out["items"]["recall_by_kind"] = {k: _pr(all_i, s)["recall"] for k, s in sorted(ik.items())}
    out["overall"] = _pr(all_u | {"item:" + i for i in all_i}, truth_u | {"item:" + i for i in truth_i})
    return out


def run_replay(
    model: Path,
    events: Path,
    out: Path | None,
    conf_path: str = "operators.yaml",
    recommender: str = "model",
    int8: bool = False,
    limit: int = 0,
    labels: dict[str, Any] | None = None,
    shards: int | None = None,
) -> dict[str, Any]:
    """Replay `events` through the operators; returns the summary (and writes files when `out` is given).
    The user detectors' base rates are kept per user shard (`shards`, default the job's `batching.shards`), each
    shard's events in stream order: as the job keeps them when its events topic has one partition."""
    from jobs.batching import shard_of
    from jobs.config import load_job_conf
    from model_export.artifact import load_artifact
    from operators.baselines import ItemKNNScorer, MostPopScorer
    from operators.baserates import ALARM_KIND, RatingRates, ShardRates
    from operators.batch import item_order_key
    from operators.cf import CfOperator
    from operators.config import load_operators_conf
    from operators.dead_letter import dead_letter
    from operators.fraud import USER_DETECTORS
    from operators.item import ItemOperator
    from operators.privacy import Pseudonymizer
    from operators.schema import Rejection, parse_event
    from operators.scorer import Scorer
    from operators.user import UserOperator

    conf = load_operators_conf(conf_path)
    art = load_artifact(model)
    scorer: Any
    if recommender == "mostpop":
        scorer = MostPopScorer(art)
    elif recommender == "itemknn":
        scorer = ItemKNNScorer(art)
    else:
        scorer = Scorer.from_conf(art, conf.scorer, int8 or conf.scorer.int8, conf.scorer.threads)
    pseud = Pseudonymizer.from_env(allow_dev_key=True)  # offline: the dev key is fine unless a key is set
    uop = UserOperator(art, conf, pseud, scorer)
    iop = ItemOperator(conf, art.version)
    cfop = CfOperator(conf.cf) if conf.cf.enabled else None
    cf_states: dict[str, bytes] = {}
    k = conf.recs.k
    job = load_job_conf()
    n_shards = shards if shards is not None else job.batching.shards
    lateness = job.watermark.out_of_orderness_ms  # item events wait for the job's watermark, as in the job
    if n_shards < 1:
        raise ValueError(f"shards must be >= 1, got {n_shards}")
    rates = [ShardRates() for _ in range(n_shards)]
    item_rates = [RatingRates() for _ in range(n_shards)]  # item shards: as many (the job's batching.shards)
    alarms: list[dict[str, Any]] = []

    files: dict[str, Any] = {}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("recommendations", "fraud_flags", "dead_letters", "cf_neighbours"):
            files[name] = open(out / f"{name}.jsonl", "w", encoding="utf-8")  # noqa: SIM115

    def write(name: str, rec: dict[str, Any]) -> None:
        f = files.get(name)
        if f is not None:
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")

    states: dict[str, bytes] = {}
    item_states: dict[str, bytes] = {}
    key_to_user: dict[str, str] = {}
    current: dict[str, list[str]] = {}  # list in effect per user (raw id: offline only)
    last_hit: dict[str, tuple[bool, bool, int]] = {}  # user -> (had a list, hit, events before)
    every, every_hits = [0, 0], [0, 0]  # events with a list in effect / hits, [model items, unseen items]
    timers: list[tuple[int, int, str]] = []
    timer_set: set[tuple[int, str]] = set()
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    detectors: Counter[str] = Counter()
    user_flags: dict[str, set[str]] = defaultdict(set)
    item_flags: dict[str, set[str]] = defaultdict(set)
    flag_ids: set[str] = set()
    n_events_user: Counter[str] = Counter()
    watermark = 0
    seq = 0

    def handle_flags(flags: list[dict[str, Any]]) -> None:
        for fl in flags:
            if fl["flag_id"] in flag_ids:
                continue
            flag_ids.add(fl["flag_id"])
            if fl.get("kind") == ALARM_KIND:
                alarms.append({"detector": fl["detector"], "event_ts": fl["event_ts"], **fl["evidence"]})
                write("fraud_flags", fl)
                continue
            counts["fraud_flags"] += 1
            detectors[fl["detector"]] += 1
            if fl["subject_kind"] == "user":
                user_flags[fl["detector"]].add(key_to_user.get(fl["subject"], fl["subject"]))
            else:
                item_flags[fl["detector"]].add(fl["subject"])
            write("fraud_flags", fl)

    def handle_recs(user: str, recs: list[dict[str, Any]]) -> None:
        for r in recs:
            counts["recommendations"] += 1
            counts[f"recommendations_{r['source']}"] += 1
            current[user] = r["items"]
            write("recommendations", r)

    def apply(user: str, res: Any) -> None:
        """Store the operator's new state and emit its outputs (what the Flink function does per call)."""
        if res.state is None:
            states.pop(user, None)
        else:
            states[user] = res.state
        handle_recs(user, res.recommendations)
        handle_flags(res.fraud_flags)

    item_waiting: list[tuple[tuple[int, str], int, dict[str, Any]]] = []
    max_ts = 0

    def item_queue(upto: int) -> None:
        """The item events the job's watermark (newest event time - out-of-orderness) has passed, in the order the
        job's item operator takes them (`operators.batch.item_order_key`)."""
        while item_waiting and item_waiting[0][0][0] <= upto:
            _, _, ie = heapq.heappop(item_waiting)
            ir = iop.step(item_states.get(ie["item_id"]), ie, item_rates[shard_of(ie["item_id"], n_shards)])
            if ir.state is not None:
                item_states[ie["item_id"]] = ir.state
            if cfop is not None and ie.get("prev"):  # streaming CF: the job publishes through Kafka, here at once
                cs, update = cfop.step(cf_states.get(ie["item_id"]), ie)
                if cs is not None:
                    cf_states[ie["item_id"]] = cs
                if update is not None:
                    counts["cf_updates"] += 1
                    uop.apply_cf(update)
                    if "cf_neighbours" in files:
                        write("cf_neighbours", update.to_dict())
            handle_flags(ir.fraud_flags)
            for d in ir.dead_letters:
                counts["dead_letters"] += 1
                reasons[d["reason"]] += 1
                write("dead_letters", d)

    def fire_timers(upto: int) -> None:
        while timers and timers[0][0] <= upto:
            ts, _, user = heapq.heappop(timers)
            timer_set.discard((ts, user))
            counts["timers_fired"] += 1
            apply(user, uop.on_timer(states.get(user), ts))

    t0 = time.perf_counter()
    with open(events, "rb") as f:
        for n_line, line in enumerate(f):
            if limit and n_line >= limit:
                break
            counts["events_in"] += 1
            raw = line.rstrip(b"\r\n")
            ev = parse_event(raw)
            if isinstance(ev, Rejection):
                counts["dead_letters"] += 1
                reasons[ev.reason.value] += 1
                write("dead_letters", dead_letter(ev, "replay", offset=n_line))
                continue
            counts["valid"] += 1
            max_ts = max(max_ts, ev.ts)
            if ev.ts > watermark:
                watermark = ev.ts
                fire_timers(watermark)
            user = ev.user_id
            key_to_user.setdefault(pseud.pseudonym(user), user)
            res = uop.step(states.get(user), ev, rates[shard_of(user, n_shards)])
            if res.dead_letters:
                counts["dead_letters"] += len(res.dead_letters)
                for d in res.dead_letters:
                    reasons[d["reason"]] += 1
                    write("dead_letters", d)
                continue
            if res.duplicate:
                counts["duplicates"] += 1
                continue
            if res.state_reset:
                counts["state_resets"] += 1
            lst = current.get(user)
            hit = lst is not None and ev.item_id in lst[:k]
            last_hit[user] = (lst is not None, hit, n_events_user[user])
            if lst is not None:  # every event against the list in effect; apart: items the model never saw
                unseen = not 0 <= art.item_index(ev.item_id) < art.n_items
                every[unseen] += 1
                every_hits[unseen] += hit
            n_events_user[user] += 1
            apply(user, res)
            if res.timer_ts is not None and (res.timer_ts, user) not in timer_set:
                timer_set.add((res.timer_ts, user))
                seq += 1
                heapq.heappush(timers, (res.timer_ts, seq, user))
            for ie in res.item_events:
                counts["item_events"] += 1
                seq += 1
                heapq.heappush(item_waiting, (item_order_key(ie), seq, ie))
            item_queue(max_ts - lateness)
    item_queue(2**62)
    fire_timers(2**62)  # end of input: the final watermark fires every pending timer
    seconds = time.perf_counter() - t0
    for fh in files.values():
        fh.close()

    sizes = [len(s) for s in states.values()]
    isizes = [len(s) for s in item_states.values()]
    cfsizes = [len(s) for s in cf_states.values()]
    eval_users = [v for u, v in last_hit.items() if v[2] >= 2]  # users with >= 3 events: leave-last-out
    hits = sum(1 for had, hit, _ in eval_users if hit)
    flagged_users = sorted(set().union(*user_flags.values())) if user_flags else []
    summary: dict[str, Any] = {
        "model": str(model),
        "model_version": art.version,
        "recommender": recommender,
        "events_file": str(events),
        "events_in": counts["events_in"],
        "valid": counts["valid"],
        "duplicates": counts["duplicates"],
        "dead_letters": counts["dead_letters"],
        "dead_letter_reasons": dict(sorted(reasons.items())),
        "recommendations": counts["recommendations"],
        "recommendations_model": counts["recommendations_model"],
        "recommendations_cold_start": counts["recommendations_cold_start"],
        "timers_fired": counts["timers_fired"],
        "item_events": counts["item_events"],
        "state_resets": counts["state_resets"],
        "fraud_flags": counts["fraud_flags"],
        "fraud_flags_by_detector": dict(sorted(detectors.items())),
        "detector_alarms": alarms,
        "flags_withheld": {d: sum(r.withheld[j] for r in rates if j < len(r.withheld))
                           for j, d in enumerate(USER_DETECTORS)},  # fmt: skip
        "shards": n_shards,
        "flagged_users": flagged_users,
        "flagged_items": sorted(set().union(*item_flags.values())) if item_flags else [],
        "users": len(n_events_user),
        "seconds": round(seconds, 3),
        "events_per_second": round(counts["events_in"] / max(seconds, 1e-9), 1),
        "state_bytes_per_user": {
            "p50": _pct(sizes, 0.5),
            "p99": _pct(sizes, 0.99),
            "max": max(sizes, default=0),
            "mean": round(sum(sizes) / max(len(sizes), 1), 1),
        },  # fmt: skip
        "item_state_bytes": {"p50": _pct(isizes, 0.5), "p99": _pct(isizes, 0.99), "max": max(isizes, default=0)},
        "cf": {"enabled": cfop is not None, "items": len(cf_states), "updates_published": counts["cf_updates"],
               "state_bytes": {"p50": _pct(cfsizes, 0.5), "p99": _pct(cfsizes, 0.99), "max": max(cfsizes, default=0)}},
        "streaming_quality": {
            "k": k,
            "users": len(eval_users),
            "users_with_a_list": sum(1 for had, _, _ in eval_users if had),
            f"hr@{k}": round(hits / max(len(eval_users), 1), 4),
            # every event of a user with a list in effect (not only the last): was its item in that list? Apart:
            # events on items outside the model's vocabulary (cold items, reachable only as content candidates)
            "events": every[0] + every[1],
            f"hr@{k}_every_event": round((every_hits[0] + every_hits[1]) / max(every[0] + every[1], 1), 4),
            "events_unseen_items": every[1],
            f"hr@{k}_unseen_items": round(every_hits[1] / max(every[1], 1), 4),
        },
        "conf": {"debounce_ms": conf.debounce.interval_ms, "mmr_lambda": conf.recs.mmr_lambda},
    }
    if labels is not None:
        summary["labels_eval"] = evaluate_labels(user_flags, item_flags, labels)
    if out is not None:
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def cmd_replay(args: argparse.Namespace) -> int:
    from model_export.artifact import ArtifactError
    from operators.privacy import PseudonymKeyError
    from streamrec.config import ConfigError

    if not args.events.is_file():
        print(f"error: events file not found: {args.events}", file=sys.stderr)
        return 2
    labels = None
    if args.labels is not None:
        try:
            labels = json.loads(args.labels.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"error: cannot read labels {args.labels}: {e}", file=sys.stderr)
            return 2
    try:
        s = run_replay(args.model, args.events, None if args.no_outputs else args.out, args.conf,
                       args.recommender, args.int8, args.limit, labels, args.shards)  # fmt: skip
    except (ArtifactError, ConfigError, PseudonymKeyError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.no_outputs:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    q = s["streaming_quality"]
    hr = q[f"hr@{q['k']}"]
    print(
        f"{s['events_in']} lines: {s['valid']} valid, {s['duplicates']} duplicates, {s['dead_letters']} dead letters; "
        f"{s['recommendations']} recommendations, {s['fraud_flags']} fraud flags "
        f"({len(s['flagged_users'])} users, {len(s['flagged_items'])} items); {s['events_per_second']:,.0f} events/s; "
        f"state bytes/user p50 {s['state_bytes_per_user']['p50']} p99 {s['state_bytes_per_user']['p99']}; "
        f"streaming HR@{q['k']} {hr:.4f} over {q['users']} users"
    )
    if "labels_eval" in s:
        le = s["labels_eval"]
        for side in ("users", "items"):
            o = le[side]["overall"]
            print(f"  {side}: precision {o['precision']} recall {o['recall']} ({o['flagged']} flagged)")
    print(f"wrote {args.out}/summary.json")
    return 0
