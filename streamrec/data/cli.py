"""`streamrec simulate` and `streamrec data stats|convert`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser(
        "simulate",
        help="simulate behaviour events with labelled abuse, to files or Kafka",
        description="Deterministic simulator (conf/simulator.yaml). Writes events.jsonl, items.jsonl and "
        "labels.json with --out, and/or produces to Kafka at --rate with --kafka.",
    )
    sim.add_argument("--out", type=Path, help="directory for events.jsonl, items.jsonl, labels.json")
    sim.add_argument("--kafka", action="store_true", help="produce to the Kafka broker (services settings)")
    sim.add_argument("--topic", help="events topic for --kafka (default: producer.events_topic, 'events')")
    sim.add_argument("--items-topic", help="items topic for --kafka (default: producer.items_topic, 'items')")
    sim.add_argument("--no-items", action="store_true", help="with --kafka, do not send item metadata")
    sim.add_argument("--rate", type=float, help="messages per second for --kafka (0: as fast as possible)")
    sim.add_argument("--events", type=int, help="number of valid events (overrides n_events)")
    sim.add_argument("--users", type=int, help="number of genuine users (overrides users.n_users)")
    sim.add_argument("--seed", type=int, help="random seed (overrides seed)")
    sim.add_argument("--conf", type=Path, help="simulator YAML (default conf/simulator.yaml)")
    sim.add_argument("--no-progress", action="store_true", help="no progress bar")
    sim.set_defaults(func=cmd_simulate)

    data = sub.add_parser("data", help="inspect and convert data sets (MovieLens, event JSONL)")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    stats = dsub.add_parser("stats", help="counts and time range of a data set")
    stats.add_argument(
        "path", type=Path, help="MovieLens dir/file, event JSONL file or a dir with events.jsonl"
    )
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=cmd_stats)
    conv = dsub.add_parser(
        "convert",
        help="convert any supported format to event JSONL (+ items JSONL next to it)",
        description="Timestamps outside the event contract's range (2000-2100; ML-100K is 1997-98) are "
        "shifted by one constant into it, keeping order and gaps, unless --no-shift is given (then such data "
        "fails).",
    )
    conv.add_argument("path", type=Path, help="input data set")
    conv.add_argument("--out", type=Path, required=True, help="output event JSONL file")
    conv.add_argument("--no-shift", action="store_true", help="refuse instead of shifting timestamps")
    conv.set_defaults(func=cmd_convert)
    _register_attack(dsub)


_ATTACK_DOC = """Inject shilling-attack profiles into a rating data set (any format `data stats` reads) and write
DIR/events.jsonl (genuine + attack events, sorted by ts, shifted into the contract like `data convert`),
DIR/items.jsonl and DIR/labels.json (the simulator's label format: `streamrec replay --labels` scores it).

Attack models: random and average (Lam & Riedl 2004, "Shilling recommender systems for fun and profit", WWW 2004),
bandwagon, attack size and filler size (Mobasher, Burke, Bhaumik & Williams 2007, "Toward trustworthy recommender
systems", ACM TOIT 7(4)). Departures (targets chosen at random among items with >= 10 ratings below / above the
global mean, bandwagon items rated r_max in nuke attacks too, timing, which the papers do not model): see the
docstring of streamrec/data/attack.py. Same options and data -> byte-identical files."""


def _register_attack(dsub: argparse._SubParsersAction) -> None:
    from streamrec.data.attack import DIRECTIONS, KINDS, TIMINGS, AttackOptions

    d = AttackOptions()
    att = dsub.add_parser(
        "attack",
        help="inject literature-standard shilling attacks (random, average, bandwagon) into a rating data set",
        description=_ATTACK_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    att.add_argument("path", type=Path, help="input data set (MovieLens dir/file or event JSONL)")
    att.add_argument("--out", type=Path, required=True, help="directory for events.jsonl, items.jsonl, labels.json")
    _attack_options(att, d, KINDS, DIRECTIONS, TIMINGS)
    att.set_defaults(func=cmd_attack)

    ev = dsub.add_parser(
        "attack-eval",
        help="replay a grid of shilling attacks (and the clean data) through the operators: detection table",
        description="Converts the clean data set, trains a model on it unless --model is given, injects every "
        "attack of the grid (kinds x sizes x timings x directions; `data attack`), replays the clean data and every "
        "cell through the operators (streamrec replay, --jobs processes) and writes DIR/attack_eval.json and "
        "DIR/attack_eval.md: per cell, users flagged, user precision / recall, share of genuine users flagged, "
        "targets flagged, item precision, detectors that caught the attack accounts. Operators config: --conf, "
        "plus STREAMREC_* environment overrides.",
    )
    ev.add_argument("--data", type=Path, required=True, help="rating data set (e.g. ../shared/data/ml-100k)")
    ev.add_argument("--out", type=Path, required=True, help="output directory (data, model, results)")
    ev.add_argument("--model", type=Path, help="model artefact (default: train one on the clean data)")
    ev.add_argument("--epochs", type=int, default=10, help="epochs when training (default 10: a few minutes)")
    ev.add_argument("--model-conf", default="model.yaml", help="model config when training (default conf/model.yaml)")
    ev.add_argument("--conf", default="operators.yaml", help="operators config (default conf/operators.yaml)")
    ev.add_argument("--jobs", type=int, default=2, help="replays in parallel (default 2)")
    ev.add_argument("--results", type=Path, help="markdown file: replace its attack-eval section with the table")
    ev.add_argument("--kinds", default=",".join(KINDS), help="comma-separated attack kinds")
    ev.add_argument("--sizes", default="0.03,0.10", help="comma-separated attack sizes (share of genuine users)")
    ev.add_argument("--timings", default=",".join(TIMINGS), help="comma-separated timings")
    ev.add_argument("--directions", default="push,nuke", help="comma-separated directions (push, nuke)")
    ev.add_argument("--filler", type=float, default=d.filler, help=f"filler size (default {d.filler})")
    ev.add_argument("--targets", type=int, default=d.targets, help=f"target items per attack (default {d.targets})")
    ev.add_argument("--seed", type=int, default=d.seed, help=f"seed of every attack (default {d.seed})")
    ev.set_defaults(func=cmd_attack_eval)


def _attack_options(p: argparse.ArgumentParser, d: Any, kinds: Any, directions: Any, timings: Any) -> None:
    p.add_argument("--kind", choices=kinds, default=d.kind, help=f"attack model (default {d.kind})")
    p.add_argument("--size", type=float, default=d.size,
                   help=f"attack size: profiles = round(SIZE x genuine users), in (0, 1] (default {d.size})")
    p.add_argument("--filler", type=float, default=d.filler,
                   help=f"filler size: share of the catalogue each profile rates besides targets, in (0, 1] "
                   f"(default {d.filler})")
    p.add_argument("--direction", choices=directions, default=d.direction,
                   help="push: targets rated r_max; nuke: r_min (default push)")
    p.add_argument("--targets", type=int, default=d.targets, help=f"target items (default {d.targets})")
    p.add_argument("--timing", choices=timings, default=d.timing,
                   help="burst: profiles start within --burst-hours; spread: over --spread-days (default burst)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--at", type=float, default=d.at,
                   help=f"attack start as a fraction of the data's time span (default {d.at})")
    p.add_argument("--burst-hours", type=float, default=d.burst_hours, help=f"default {d.burst_hours}")
    p.add_argument("--spread-days", type=float, default=d.spread_days, help=f"default {d.spread_days}")
    p.add_argument("--gap-s", type=float, default=d.gap_s,
                   help=f"mean gap between a profile's ratings, seconds (default {d.gap_s})")
    p.add_argument("--bandwagon-items", type=int, default=d.bandwagon_items,
                   help=f"bandwagon: most-rated items rated r_max (default {d.bandwagon_items})")  # fmt: skip


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 1


def cmd_simulate(args: argparse.Namespace) -> int:
    from streamrec.config import ConfigError
    from streamrec.data import simulator

    if args.out is None and not args.kafka:
        return _fail("give --out DIR, --kafka, or both")
    try:
        conf = simulator.with_overrides(simulator.load_conf(args.conf), args.events, args.users, args.seed)
        t0 = time.perf_counter()
        sim = simulator.simulate(conf)
        dt = time.perf_counter() - t0
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    c = sim.labels["counts"]
    print(
        f"simulated {c['events']} events ({c['genuine_events']} genuine, abuse {c['abuse_events']}), "
        f"{c['malformed']} malformed, {c['duplicates']} duplicates, {c['users']} users, {c['items']} items "
        f"in {dt:.2f} s ({c['events'] / max(dt, 1e-9):,.0f} events/s)"
    )
    if args.out is not None:
        try:
            paths = simulator.write_outputs(sim, args.out)
        except OSError as e:
            return _fail(f"cannot write {args.out}: {e}")
        for name, p in paths.items():
            print(f"wrote {name}: {p} ({p.stat().st_size:,} bytes)")
    if args.kafka:
        pconf = conf.producer
        from streamrec.data import produce

        try:
            res = produce.produce(
                sim,
                topic=args.topic or pconf.events_topic,
                items_topic=None if args.no_items else (args.items_topic or pconf.items_topic),
                rate=pconf.rate if args.rate is None else args.rate,
                conf=pconf,
                progress=not args.no_progress,
            )
        except produce.ProduceError as e:
            return _fail(str(e))
        print(
            f"sent {res.sent} messages to {res.topic} ({res.failed} failed) in {res.seconds:.2f} s: "
            f"{res.achieved_rate:,.0f} messages/s (target {res.target_rate:g}/s); "
            f"items sent {res.items_sent} to {res.items_topic or '-'}"
        )
        summary = {"sent": res.sent, "failed": res.failed, "topic": res.topic, "items_sent": res.items_sent}
        print(json.dumps({**summary, "seconds": round(res.seconds, 3), "rate": round(res.achieved_rate, 1)}))
        if res.failed:
            return 1
    return 0


def stats_of(path: Path) -> dict[str, Any]:
    """What `data stats` prints (also used by tests)."""
    from streamrec.data import load_events, load_items

    events = load_events(path)
    items = load_items(path)
    types = Counter(e.event_type for e in events)
    return {
        "events": len(events),
        "users": len({e.user_id for e in events}),
        "items": len({e.item_id for e in events}),
        "first_ts": events[0].ts if events else None,
        "last_ts": events[-1].ts if events else None,
        "catalogue_items": len(items),
        "event_types": {t: types[t] for t in sorted(types)},
    }


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        s = stats_of(args.path)
    except (OSError, ValueError) as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps(s))
    else:
        for k, v in s.items():
            print(f"{k}: {v}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from streamrec.data import load_events, load_items
    from streamrec.data.loaders import shift_into_contract, write_events_jsonl

    try:
        events = load_events(args.path)
        items = load_items(args.path)
        shifted, shift = shift_into_contract(events)
    except (OSError, ValueError) as e:
        return _fail(str(e))
    if shift and args.no_shift:
        return _fail(
            "timestamps fall outside the event contract's range (2000-2100); drop --no-shift to shift"
        )
    if shift:
        print(
            f"note: shifted all timestamps by {shift:+d} ms into the contract's range (order and gaps kept)"
        )
    out: Path = args.out
    try:
        paths = write_events_jsonl(shifted, items, out)
    except OSError as e:
        return _fail(f"cannot write {out}: {e}")
    print(f"wrote {len(shifted)} events to {paths['events']}")
    if "items" in paths:
        print(f"wrote {len(items)} items to {paths['items']}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from streamrec.data import attack

    opts = attack.AttackOptions(
        kind=args.kind, size=args.size, filler=args.filler, direction=args.direction, targets=args.targets,
        timing=args.timing, seed=args.seed, at=args.at, burst_hours=args.burst_hours,
        spread_days=args.spread_days, gap_s=args.gap_s, bandwagon_items=args.bandwagon_items,
    )  # fmt: skip
    try:
        opts.check()
        att = attack.inject(attack.load_dataset(args.path), opts)
    except (OSError, ValueError) as e:
        return _fail(str(e))
    g = att.labels["groups"][0]
    c = att.labels["counts"]
    targets = ", ".join(f"{t['item_id']} ({t['ratings']} ratings, mean {t['mean']})" for t in g["target_stats"])
    print(
        f"{opts.kind} {opts.direction} attack: {len(g['accounts'])} profiles ({opts.size:g} x "
        f"{c['genuine_users']} genuine users) x {len(g['targets']) + len(g['selected']) + g['filler_items']} "
        f"ratings ({g['filler_items']} filler); targets {targets}"
    )
    if att.shift_ms:
        print(f"note: shifted all timestamps by {att.shift_ms:+d} ms into the contract's range (as data convert)")
    try:
        paths = attack.write_outputs(att, args.out)
    except OSError as e:
        return _fail(f"cannot write {args.out}: {e}")
    for name, p in paths.items():
        print(f"wrote {name}: {p} ({p.stat().st_size:,} bytes)")
    return 0


def cmd_attack_eval(args: argparse.Namespace) -> int:
    from streamrec.data import attack_eval

    return attack_eval.main(args)
