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
    from streamrec.data.loaders import items_path_for, shift_into_contract

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
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            for ev in shifted:
                f.write(ev.to_json().encode("utf-8") + b"\n")
        print(f"wrote {len(shifted)} events to {out}")
        if items:
            ip = items_path_for(out)
            with open(ip, "wb") as f:
                for it in items:
                    f.write(it.to_json().encode("utf-8") + b"\n")
            print(f"wrote {len(items)} items to {ip}")
    except OSError as e:
        return _fail(f"cannot write {out}: {e}")
    return 0
