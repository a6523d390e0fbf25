"""`streamrec data attack-eval`: the fraud detectors against literature-standard shilling attacks, in one table.

The clean data set and every cell of a grid of attacks (`streamrec.data.attack`: kinds x sizes x timings x
directions) go through the very operators the job runs (`streamrec.replay.run_replay`, one process per replay, up
to `--jobs` at once). Each row says what was caught (user and item precision / recall, which detectors caught the
attack accounts) and what it cost (the share of genuine users flagged, and by which detector); the clean row is the
false-positive floor the attacks are read against.

Outputs: DIR/clean/ and DIR/cells/<cell>/ (events, items, labels), DIR/model/ (if trained here),
DIR/attack_eval.json (every number, the genuine users flagged) and DIR/attack_eval.md (the table, also printed).
`--results FILE` puts the table, the command line and the commit between `<!-- attack-eval:begin -->` and
`<!-- attack-eval:end -->` in FILE.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from streamrec.data.attack import DIRECTIONS, KINDS, TIMINGS, AttackError, AttackOptions

BEGIN = "<!-- attack-eval:begin -->"
END = "<!-- attack-eval:end -->"
SECTION = "## Shilling attacks on public data"
CLEAN = "clean"
T = TypeVar("T")


def parse_list(text: str, conv: Callable[[str], T], allowed: Sequence[str] = (), what: str = "value") -> list[T]:
    """`a,b,c` -> [conv(a), ...]; raises AttackError on an empty list, a bad or unknown value."""
    out: list[T] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if allowed and part not in allowed:
            raise AttackError(f"unknown {what} {part!r}: use {', '.join(allowed)}")
        try:
            out.append(conv(part))
        except ValueError:
            raise AttackError(f"bad {what} {part!r}") from None
    if not out:
        raise AttackError(f"no {what} given")
    return out


def grid(
    kinds: list[str], sizes: list[float], timings: list[str], directions: list[str], base: AttackOptions
) -> list[AttackOptions]:
    """Every cell (direction, kind, size, timing order), each checked."""
    cells = [
        dataclasses.replace(base, kind=k, size=s, timing=t, direction=d)
        for d in directions
        for k in kinds
        for s in sizes
        for t in timings
    ]
    for c in cells:
        c.check()
    return cells


def cell_name(o: AttackOptions) -> str:
    return f"{o.kind}-{o.size:g}-{o.timing}-{o.direction}"


def _replay(model: str, events: str, conf: str, labels_path: str) -> dict[str, Any]:
    """One replay in a worker process (the operators conf, with the inherited STREAMREC_* overrides)."""
    from streamrec.replay import run_replay

    labels = json.loads(Path(labels_path).read_text())
    return run_replay(Path(model), Path(events), None, conf_path=conf, labels=labels)


def _pr(tp: int, n: int) -> float | None:
    return round(tp / n, 4) if n else None


def row_of(summary: dict[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one replay against its labels (an attack cell, or the clean data with no labels)."""
    truth_u, truth_i = set(labels.get("users", {})), set(labels.get("items", {}))
    flagged_u, flagged_i = set(summary["flagged_users"]), set(summary["flagged_items"])
    genuine_users = int(labels["counts"]["genuine_users"])
    genuine_flagged = flagged_u - truth_u
    ev = summary["labels_eval"]
    not_detectors = ("overall", "recall_by_kind")
    by_attack = {d: v["true_positives"] for d, v in ev["users"].items() if d not in not_detectors}
    by_genuine = {d: v["flagged"] - v["true_positives"] for d, v in ev["users"].items() if d not in not_detectors}
    by_item = {d: v["flagged"] for d, v in ev["items"].items() if d not in not_detectors}
    tp_u, tp_i = len(flagged_u & truth_u), len(flagged_i & truth_i)
    return {
        "profiles": len(truth_u),
        "users_flagged": len(flagged_u),
        "attack_users_flagged": tp_u,
        "user_precision": _pr(tp_u, len(flagged_u)),
        "user_recall": _pr(tp_u, len(truth_u)),
        "genuine_users": genuine_users,
        "genuine_flagged": len(genuine_flagged),
        "genuine_flagged_share": round(len(genuine_flagged) / max(genuine_users, 1), 4),
        "targets": len(truth_i),
        "targets_flagged": tp_i,
        "items_flagged": len(flagged_i),
        "item_precision": _pr(tp_i, len(flagged_i)),
        "attack_accounts_by_detector": {d: n for d, n in sorted(by_attack.items()) if n},
        "genuine_users_by_detector": {d: n for d, n in sorted(by_genuine.items()) if n},
        "items_by_detector": {d: n for d, n in sorted(by_item.items()) if n},
        "genuine_flagged_users": sorted(genuine_flagged, key=lambda u: (len(u), u)),
        "flagged_items": sorted(flagged_i, key=lambda i: (len(i), i)),
        "detector_alarms": [a["detector"] for a in summary.get("detector_alarms", [])],
        "events": summary["events_in"],
        "replay_seconds": summary["seconds"],
    }


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _dets(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "–"


def markdown(result: dict[str, Any]) -> str:
    """The table (and a line of context) of an attack-eval result."""
    cols = ["attack", "size", "timing", "direction", "profiles", "users flagged", "user P", "user R",
            "genuine flagged (share)", "targets flagged", "items flagged", "item P",
            "detectors on attack accounts", "detectors on genuine users", "alarms"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    c = result["clean"]
    lines.append(
        "| " + " | ".join([
            "none (clean data)", "–", "–", "–", "–", str(c["users_flagged"]), "–", "–",
            f"{c['genuine_flagged']} ({100 * c['genuine_flagged_share']:.1f} %)", "–", str(c["items_flagged"]), "–",
            "–", _dets(c["genuine_users_by_detector"]), ", ".join(c["detector_alarms"]) or "–",
        ]) + " |"
    )  # fmt: skip
    for r in result["cells"]:
        o = r["options"]
        lines.append(
            "| " + " | ".join([
                o["kind"], f"{100 * o['size']:g} %", o["timing"], o["direction"], str(r["profiles"]),
                str(r["users_flagged"]), _num(r["user_precision"]), _num(r["user_recall"]),
                f"{r['genuine_flagged']} ({100 * r['genuine_flagged_share']:.1f} %)",
                f"{r['targets_flagged']}/{r['targets']}", str(r["items_flagged"]), _num(r["item_precision"]),
                _dets(r["attack_accounts_by_detector"]), _dets(r["genuine_users_by_detector"]),
                ", ".join(r["detector_alarms"]) or "–",
            ]) + " |"
        )  # fmt: skip
    s = result["setup"]
    head = (
        f"Data {s['data']} ({c['genuine_users']} genuine users); model {s['model']}; operators conf {s['conf']}"
        f"{'; env ' + ' '.join(f'{k}={v}' for k, v in s['env'].items()) if s['env'] else ''}; filler "
        f"{100 * s['filler']:g} % of the catalogue, {s['targets']} target(s), seed {s['seed']}; attack start at "
        f"{100 * s['at']:g} % of the time span, burst {s['burst_hours']:g} h, spread {s['spread_days']:g} d, "
        f"rating gaps ~{s['gap_s']:g} s. P / R: precision / recall against the injected labels; detectors: "
        "distinct users flagged by each."
    )
    return head + "\n\n" + "\n".join(lines) + "\n"


def update_results(path: Path, body: str) -> None:
    """Replace the attack-eval block of `path` with `body` (append a section holding it if there is none)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{BEGIN}\n{body.rstrip()}\n{END}"
    i, j = text.find(BEGIN), text.find(END)
    if 0 <= i < j:
        text = text[:i] + block + text[j + len(END) :]
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"{SECTION}\n\n{block}\n"
    path.write_text(text, encoding="utf-8")


def _conf_env() -> dict[str, str]:
    """STREAMREC_* variables that change the operators config (never secrets: only its sections)."""
    from operators.config import OperatorsConf

    prefixes = tuple(f"STREAMREC_{f.name.upper()}_" for f in dataclasses.fields(OperatorsConf))
    keep = {k: v for k, v in os.environ.items() if k.startswith(prefixes) or k == "STREAMREC_CONF_DIR"}
    return dict(sorted(keep.items()))


def _commit(results: Path | None = None) -> str:
    """HEAD, and whether tracked files differ from it (the results file this run writes does not count)."""
    from streamrec.config import REPO_ROOT

    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *a], capture_output=True, text=True, check=True).stdout

    try:
        head = git("rev-parse", "HEAD").strip()
        mine = None
        if results is not None and results.resolve().is_relative_to(REPO_ROOT.resolve()):
            mine = str(results.resolve().relative_to(REPO_ROOT.resolve()))
        dirty = any(line[3:] != mine for line in git("status", "--porcelain", "--untracked-files=no").splitlines())
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes" if dirty else "")


def _train(clean_events: Path, out: Path, epochs: int, model_conf: str) -> Path:
    cmd = [sys.executable, "-m", "streamrec.cli", "train", "--data", str(clean_events), "--out", str(out),
           "--conf", model_conf, "--epochs", str(epochs), "--no-progress"]  # fmt: skip
    print("training:", shlex.join(cmd[2:]), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise RuntimeError(f"training failed: {shlex.join(cmd)}")
    return out


def main(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    from streamrec.config import ConfigError
    from streamrec.data import attack
    from streamrec.data.loaders import shift_into_contract, write_events_jsonl

    t0 = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    env = _conf_env()
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), "streamrec", shlex.join(argv)])
    try:
        base = AttackOptions(filler=args.filler, targets=args.targets, seed=args.seed)
        cells = grid(
            parse_list(args.kinds, str, KINDS, "attack kind"),
            parse_list(args.sizes, float, (), "size"),
            parse_list(args.timings, str, TIMINGS, "timing"),
            parse_list(args.directions, str, DIRECTIONS, "direction"),
            base,
        )
        if args.jobs < 1:
            raise AttackError(f"--jobs must be >= 1, got {args.jobs}")
        from operators.config import load_operators_conf

        load_operators_conf(args.conf)  # a bad conf or override fails here, not in every worker
        out: Path = args.out
        ds = attack.load_dataset(args.data)
        shifted, _ = shift_into_contract(ds.events)
        clean_events = write_events_jsonl(shifted, ds.items, out / CLEAN / "events.jsonl")["events"]
        genuine_users = len({e.user_id for e in ds.events})
        clean_labels = {"users": {}, "items": {}, "counts": {"genuine_users": genuine_users}}
        (out / CLEAN / "labels.json").write_text(json.dumps(clean_labels, indent=1) + "\n")
        jobs: list[tuple[str, Path, dict[str, Any]]] = [(CLEAN, clean_events, clean_labels)]
        for o in cells:
            att = attack.inject(ds, o)
            paths = attack.write_outputs(att, out / "cells" / cell_name(o))
            jobs.append((cell_name(o), paths["events"], att.labels))
        model = args.model or _train(clean_events, out / "model", args.epochs, args.model_conf)
    except (AttackError, ConfigError, OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(jobs)} replays ({len(cells)} attacks + the clean data), {args.jobs} at a time", flush=True)

    rows: dict[str, dict[str, Any]] = {}
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold onnxruntime / torch threads
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futs: dict[str, Future[dict[str, Any]]] = {
            name: pool.submit(_replay, str(model), str(ev), args.conf, str(ev.parent / "labels.json"))
            for name, ev, _ in jobs
        }
        for name, _, labels in jobs:
            try:
                summary = futs[name].result()
            except Exception as e:  # noqa: BLE001 - report which cell failed, then stop
                print(f"error: replay of {name} failed: {e}", file=sys.stderr)
                return 1
            rows[name] = row_of(summary, labels)
            r = rows[name]
            pr = "" if name == CLEAN else f" (P {_num(r['user_precision'])}, R {_num(r['user_recall'])})"
            print(
                f"  {name}: {r['users_flagged']} users flagged{pr}, {r['genuine_flagged']} genuine; "
                f"{r['items_flagged']} items flagged, targets {r['targets_flagged']}/{r['targets']}; "
                f"replay {r['replay_seconds']:.0f} s",
                flush=True,
            )

    result: dict[str, Any] = {
        "command": command,
        "commit": _commit(args.results),
        "setup": {
            "data": str(args.data),
            "model": str(model),
            "conf": args.conf,
            "env": env,
            **{
                k: getattr(base, k)
                for k in ("filler", "targets", "seed", "at", "burst_hours", "spread_days", "gap_s", "bandwagon_items")
            },
        },  # fmt: skip
        "clean": rows[CLEAN],
        "cells": [{"cell": cell_name(o), "options": dataclasses.asdict(o), **rows[cell_name(o)]} for o in cells],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    table = markdown(result)
    try:
        (out / "attack_eval.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "attack_eval.md").write_text(table)
        if args.results is not None:
            body = (
                f"Measured with (commit {result['commit']}):\n\n```\n{command}\n```\n\n{table}\n"
                f"Wall time {result['seconds']:.0f} s."
            )
            update_results(args.results, body)
    except OSError as e:
        print(f"error: cannot write results: {e}", file=sys.stderr)
        return 1
    print()
    print(table)
    print(f"wrote {out / 'attack_eval.json'} and {out / 'attack_eval.md'} in {result['seconds']:.0f} s")
    if args.results is not None:
        print(f"updated {args.results}")
    return 0
