"""`streamrec bench [--quick]` (what `make bench` runs): every measurement of issue 7, then the report in
`bench/results/<UTC stamp>.json|.md|-*.png`. Work files (logs, streams, load-generator outputs) go to
`.state/bench/runs/<stamp>/`; the topics, consumer groups and keyspace the run creates are deleted at the end.

Phases, each bounded in time so the run always finishes: end to end (the job and the plain consumer at 1k, 5k and
max events/s, parallelism 1 and 2), the job's scaling on a standalone cluster the bench starts for it (2 TaskManagers
× 1 slot, `flink run -d` at parallelism 1 and 2 on the same backlog as the "max" phases; `streamrec.bench.cluster`),
the per-event profile with real sinks, scorer micro-benchmarks, per-event logic vs catalogue size, and state growth
with the number of users. `--quick` is a short form of the same (a few minutes plus Flink start-ups); the full run
takes about half an hour.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from streamrec.config import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "bench" / "results"
SYNTHETIC_SIZES = (1682, 20_000, 100_000)  # ML-100K's catalogue, 20k, 100k


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and time bounds of one run (quick or full)."""

    window_s: float  # end-to-end measurement window per phase
    drain_s: float  # after the load, for outputs of processed events to become visible
    backlog_events: int  # pre-produced events of the "max" phases
    startup_timeout_s: float  # per system start
    scorer_seconds: float  # per scorer cell
    catalogue_events: int  # per-event logic vs catalogue: events per model ...
    catalogue_seconds: float  # ... and time bound per model
    template_events: int  # operator run that yields the real user states
    template_seconds: float
    profile_events: int  # per-event profile with real sinks
    profile_seconds: float
    users: tuple[int, ...] = (10_000, 100_000, 1_000_000)  # state growth


QUICK = Plan(window_s=20, drain_s=10, backlog_events=100_000, startup_timeout_s=150, scorer_seconds=0.4,
             catalogue_events=3_000, catalogue_seconds=12, template_events=12_000, template_seconds=30,
             profile_events=2_500, profile_seconds=20)  # fmt: skip
FULL = Plan(window_s=60, drain_s=14, backlog_events=150_000, startup_timeout_s=240, scorer_seconds=2.0,
            catalogue_events=20_000, catalogue_seconds=60, template_events=100_000, template_seconds=240,
            profile_events=10_000, profile_seconds=90)  # fmt: skip


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks: job vs plain consumer end to end, scorer, growth, profile; report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true", help="short windows and sizes (a few minutes + Flink start-ups)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="report directory (default bench/results)")
    p.add_argument("--conf", default="local.yaml", help="job config (default conf/local.yaml)")
    p.add_argument("--operators-conf", default="operators.yaml")
    p.add_argument("--parallelism", default="1,2", help="comma-separated parallelisms (default 1,2)")
    p.add_argument("--rates", default="100,1000,5000,max",
                   help="offered rates, events/s; 'max' = pre-produced backlog (100/s: a rate the job keeps up with, "
                        "so its latency is not a backlog's)")
    p.add_argument("--systems", default="job,consumer", help="which systems to run end to end")
    p.add_argument("--latency-conf", default="low-latency.yaml",
                   help="after the end-to-end phases, the job again with this config at --latency-rates and "
                        "--latency-parallelism ('' = skip)")
    p.add_argument("--latency-rates", default="100,1000", help="offered rates of the --latency-conf phases")
    p.add_argument("--latency-parallelism", default="1", help="parallelisms of the --latency-conf phases")
    p.add_argument("--cluster-parallelism", default="1,2",
                   help="parallelisms of the job on the bench's own standalone cluster (as many TaskManagers as the "
                        "largest, 1 slot each), on the max phases' backlog ('' = skip)")
    p.add_argument("--skip", default="",
                   help="comma-separated parts to skip: e2e,cluster,profile,scorer,encoder,catalogue,growth")
    p.add_argument("--window-s", type=float, default=0, help="override the end-to-end window per phase")
    p.add_argument("--backlog-events", type=int, default=0,
                   help=f"override the pre-produced events of the 'max' phases (full: {FULL.backlog_events:,}, "
                        f"quick: {QUICK.backlog_events:,})")
    p.add_argument("--startup-load-s", type=float, default=2.0,
                   help="paced phases: seconds of load at the phase's rate (other users, at most 2,000 events) that "
                        "the system just started gets before the window; their latency is reported apart (0: none, "
                        "the window starts with the system's first events)")
    p.add_argument("--scorer-max-gb", type=float, default=4.0,
                   help="skip scorer cells whose (B, L, N) intermediates would need more memory than this")
    p.add_argument("--seed", type=int, default=7, help="simulator seed of the end-to-end events")
    p.add_argument("--load-impl", choices=("java", "python"), default="java",
                   help="the paced phases' load generator: Kafka's Java client (default; ~0.08 core at 1,000 "
                        "events/s) or kafka-python (~0.2 core), beside the system under test")
    p.add_argument("--baseline-commit", default="", metavar="REV",
                   help="also run the job as it was at this commit (its own code, config, jar and a model its code "
                        "trains on the same data) on the same backlog, at each parallelism: speedup_vs_baseline")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="measure nothing: rewrite the Markdown and plots of an earlier run from its JSON")
    p.set_defaults(func=cmd_bench)


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _services() -> list[str]:
    """Reuse running Kafka / Cassandra; start the ones that are not (they are left running, like `make demo`)."""
    from streamrec.services.cassandra import CassandraService
    from streamrec.services.kafka import KafkaService
    from streamrec.services.settings import services

    svc = services()
    out = []
    for managed, s in ((svc.kafka.managed, KafkaService(svc)), (svc.cassandra.managed, CassandraService(svc))):
        if not managed:
            out.append(f"{s.name}: external (not managed)")
            continue
        if s.healthy():
            out.append(f"{s.name}: reused (already running)")
        else:
            out.append(f"{s.name}: {s.up()} by bench (left running; `make services-down` stops it)")
    return out


def _conf_path(name: str) -> str:
    """A config name as a user finds it: `local.yaml` is conf/local.yaml; a path stays what it is."""
    return name if "/" in name else f"conf/{name}"


def cmd_bench(args: argparse.Namespace) -> int:
    from jobs.config import load_job_conf
    from streamrec.bench import e2e as e2e_mod
    from streamrec.bench import micro, models, report, sysinfo

    if args.render is not None:
        earlier = json.loads(args.render.read_text())
        _add_consumer_e2e_profile(earlier)
        for k, path in report.write(earlier, args.render.parent).items():
            _say(f"wrote {k}: {path}")
        return 0
    plan = QUICK if args.quick else FULL
    if args.window_s:
        plan = dataclasses.replace(plan, window_s=args.window_s)
    if args.backlog_events:
        plan = dataclasses.replace(plan, backlog_events=args.backlog_events)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    work = REPO_ROOT / ".state" / "bench" / "runs" / stamp
    work.mkdir(parents=True, exist_ok=True)
    from streamrec.services.settings import profile

    # the services profile (conf/secure.yaml: every client on SASL/TLS) is part of what was measured
    argv = ["streamrec", *(["--services", profile()] if profile() != "services.yaml" else []), "bench"]
    argv += ["--quick"] if args.quick else []
    for flag, val, default in (("--parallelism", args.parallelism, "1,2"), ("--rates", args.rates, "100,1000,5000,max"),
                               ("--systems", args.systems, "job,consumer"), ("--skip", args.skip, ""),
                               ("--conf", args.conf, "local.yaml"),
                               ("--latency-conf", args.latency_conf, "low-latency.yaml"),
                               ("--latency-rates", args.latency_rates, "100,1000"),
                               ("--latency-parallelism", args.latency_parallelism, "1"),
                               ("--cluster-parallelism", args.cluster_parallelism, "1,2"),
                               ("--baseline-commit", args.baseline_commit, "")):  # fmt: skip
        if val != default:
            argv += [flag, val]
    result: dict[str, Any] = {"stamp": stamp, "mode": "quick" if args.quick else "full", "command": " ".join(argv),
                              "machine": sysinfo.machine(), "plan": dataclasses.asdict(plan), "notes": [],
                              "durations_s": {}}  # fmt: skip
    t_all = time.monotonic()
    _say(f"streamrec bench ({result['mode']}): report → {args.out}/{stamp}.md; work files → {work}")
    for line in _services():
        _say(line)

    job = load_job_conf(args.conf)
    model_dir = job.path(job.model_dir)
    from streamrec.demo import ensure_model

    ensure_model(model_dir, 30_000, 3, _say)
    served = models.model_size(model_dir)
    served_desc = models.describe(served)
    _say(f"job model: {served_desc}")

    pars = [int(p) for p in args.parallelism.split(",") if p.strip()]
    rates = [0.0 if r.strip() == "max" else float(r) for r in args.rates.split(",") if r.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    cluster_pars = [] if "cluster" in skip else [int(p) for p in args.cluster_parallelism.split(",") if p.strip()]
    budget = e2e_mod.Budget(window_s=plan.window_s, startup_timeout_s=plan.startup_timeout_s,
                            backlog_events=plan.backlog_events, drain_s=plan.drain_s,
                            partitions=max(2, *pars, *cluster_pars),
                            startup_load_s=max(0.0, args.startup_load_s))  # fmt: skip
    paced = [r for r in rates if r]
    n_events = int(max([plan.backlog_events] + [r * plan.window_s * 1.1 for r in paced])) + 1000
    t0 = time.monotonic()
    _say(f"simulating {n_events:,} events (seed {args.seed}) ...")
    workload = e2e_mod.Workload.make(n_events, args.seed, work / "stream.pkl", budget.partitions)
    result["durations_s"]["simulate"] = time.monotonic() - t0

    # ---------------------------------------------------------------- end to end (+ profile with real sinks)
    e2e_res: dict[str, Any] = {"phases": [], "errors": [], "model": served, "model_desc": served_desc,
                               "conf": args.conf, "execution_mode": job.execution_mode, "profile": job.describe(),
                               "checkpoint_ms": job.checkpoint.interval_ms, "seed": args.seed,
                               "users": workload.users, "partitions": budget.partitions,
                               "window_s": plan.window_s, "backlog_events": plan.backlog_events,
                               "load_impl": args.load_impl,
                               "budget": e2e_mod.budget_dict(budget),
                               "job_conf": dataclasses.asdict(job)}  # fmt: skip
    result["e2e"] = e2e_res
    runner = None
    try:
        if "e2e" not in skip or "profile" not in skip or cluster_pars:
            runner = e2e_mod.E2E(work, args.conf, args.operators_conf, model_dir, budget, _say, args.load_impl)
            runner.setup()
        if "e2e" not in skip and runner is not None:
            t0 = time.monotonic()
            if 0.0 in rates or args.baseline_commit:
                e2e_res["backlog"] = runner.prepare_backlog(workload)
            runs: list[tuple[str, int, float, str | None]] = [
                (system, p, rate, None) for p in pars for rate in rates for system in systems]
            if args.baseline_commit:
                _say(f"baseline: the job at {args.baseline_commit} ...")
                try:
                    runner.baseline = e2e_mod.Baseline.prepare(args.baseline_commit, REPO_ROOT / ".state" / "bench"
                                                               / "baseline", _train_events(), _say)  # fmt: skip
                    e2e_res["baseline"] = {"rev": args.baseline_commit, "commit": runner.baseline.commit}
                    runs = [r for p in pars for r in [("baseline", p, 0.0, None)]
                            + [x for x in runs if x[1] == p]]  # fmt: skip
                except Exception as e:  # noqa: BLE001 - the rest of the run is still worth having
                    e2e_res["errors"].append(f"baseline: {type(e).__name__}: {e}")
                    _say(f"  baseline not run: {e}")
            if args.latency_conf and "job" in systems:  # the job again with the latency profile
                # (and the baseline's job, with its own copy of that profile, before each)
                lat = [float(r) for r in args.latency_rates.split(",") if r.strip()]
                for lp in (int(x) for x in args.latency_parallelism.split(",") if x.strip()):
                    for r in lat:
                        if runner.baseline is not None:
                            runs.append(("baseline", lp, r, args.latency_conf))
                        runs.append(("job", lp, r, args.latency_conf))
                e2e_res["latency_conf"] = args.latency_conf
                e2e_res["latency_profile"] = load_job_conf(args.latency_conf).describe()
                e2e_res["latency_parallelism"] = args.latency_parallelism
            for system, p, rate, conf in runs:
                what = (f"{system}" + (f" with {conf}" if conf else "") + f" p={p} "
                        + (f"{rate:,.0f} events/s" if rate else "max (backlog)"))  # fmt: skip
                _say(f"end to end: {what} ...")
                ph = runner.run_phase(system, p, rate, workload, conf=conf)
                e2e_res["phases"].append(ph)
                lat = ph.get("latency_ms", {}).get("read_committed", {})
                _say(f"  → processed {ph.get('throughput_eps') or 0:,.0f} events/s, committed "
                     f"{ph.get('committed_eps') or 0:,.0f}/s, kept up: {report.kept_up(ph)}, p50 / p99 "
                     f"{lat.get('p50')} / {lat.get('p99')} ms (n={lat.get('n')}), start-up {ph.get('startup_s')} s"
                     + (f", ERROR {ph['error']}" if ph.get("error") else ""))  # fmt: skip
                if ph.get("error"):
                    e2e_res["errors"].append(f"{ph['label']}: {ph['error']}")
            result["durations_s"]["e2e"] = time.monotonic() - t0
        elif "e2e" in skip:
            e2e_res["skipped"] = "--skip e2e"
        if cluster_pars and runner is not None:
            t0 = time.monotonic()
            if runner.backlog_topic is None:
                e2e_res["backlog"] = runner.prepare_backlog(workload)
            from streamrec.bench import cluster

            result["cluster"] = cluster.measure(runner, workload, cluster_pars, work / "flink-cluster", _say)
            result["durations_s"]["cluster"] = time.monotonic() - t0
        else:
            result["cluster"] = {"skipped": "--skip cluster" if "cluster" in skip else "--cluster-parallelism ''"}
        if "profile" not in skip and runner is not None:
            t0 = time.monotonic()
            _say(f"profile: per-event path with real sinks over {plan.profile_events:,} events ...")
            result["profile"] = _profile(runner, model_dir, workload, plan, served_desc, served)
            result["durations_s"]["profile"] = time.monotonic() - t0
    except Exception as e:  # noqa: BLE001 - keep what was measured, say what broke
        result["notes"].append(f"end to end / profile stopped: {type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        if runner is not None:
            runner.cleanup()
    _add_consumer_e2e_profile(result)

    # ---------------------------------------------------------------- offline
    sim_items = _sim_catalogue(args.seed)
    synth: list[tuple[str, Path]] = []
    if not {"scorer", "catalogue"} <= skip:
        t0 = time.monotonic()
        for n in SYNTHETIC_SIZES:
            synth.append((_size_label(n), models.synthetic_artifact(
                n, reference_model=model_dir, categories=sim_items["categories"],
                item_categories=sim_items["by_id"], log=_say)))  # fmt: skip
        result["durations_s"]["synthetic_models"] = time.monotonic() - t0
    shape = (f"SASRec d={served['dim']}, L={served['max_len']}, {served['blocks']} blocks, top-K "
             f"{job_top_k(model_dir)}, item-KNN blend in the graph (conf/model.yaml)")
    result["scorer"] = {"served_model_label": "served", "shape": shape, "history": 50,
                        "seconds_per_cell": plan.scorer_seconds,
                        "synthetic_sizes_label": [lbl for lbl, _ in synth],
                        "models": {lbl: models.model_size(p)
                                   for lbl, p in [("served", model_dir), *synth]}}  # fmt: skip
    if "scorer" not in skip:
        t0 = time.monotonic()
        _say("scorer micro-benchmarks (µs per event, fp32 / int8, batch 1, 8, 32, 128) ...")
        try:
            result["scorer"]["grid"] = micro.scorer_grid([("served", model_dir), *synth], (1, 8, 32, 128),
                                                         plan.scorer_seconds, 50, args.scorer_max_gb, _say)
        except Exception as e:  # noqa: BLE001
            result["scorer"]["skipped"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        _say("scorer memory (RSS of one Scorer, the two graphs' tables shared and not) ...")
        try:
            result["scorer"]["memory"] = micro.scorer_memory([("served", model_dir), *synth], _say)
        except Exception as e:  # noqa: BLE001
            result["scorer"]["memory_skipped"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        result["durations_s"]["scorer"] = time.monotonic() - t0
        gc.collect()

    if "encoder" not in skip:
        t0 = time.monotonic()
        _say("text encoder (µs per item text, fp32 / int8, batch 1 and 32; memory of one session) ...")
        try:
            result["encoder"] = _encoder_bench(args.seed, plan.scorer_seconds)
        except Exception as e:  # noqa: BLE001
            result["encoder"] = {"skipped": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        result["durations_s"]["encoder"] = time.monotonic() - t0

    growth: dict[str, Any] = {"model_desc": served_desc, "catalogue_desc": f"{served['n_items']:,} items"}
    result["growth"] = growth
    if "catalogue" not in skip:
        t0 = time.monotonic()
        _say("per-event logic vs catalogue size ...")
        cat_stream = _catalogue_stream(args.seed, plan.catalogue_events)
        try:
            growth["catalogue"] = micro.catalogue_throughput(synth, cat_stream, plan.catalogue_events,
                                                             plan.catalogue_seconds, _say)
        except Exception as e:  # noqa: BLE001
            growth["catalogue_error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        result["durations_s"]["catalogue"] = time.monotonic() - t0
    if "growth" not in skip:
        t0 = time.monotonic()
        _say(f"state growth: real states from {plan.template_events:,} events, then 10k → 100k → 1M users ...")
        try:
            templates, run = micro.state_templates(model_dir, workload.stream, plan.template_events,
                                                   plan.template_seconds)
            growth["template_run"] = run
            growth["operator_states"] = micro.size_stats([len(t) for t in templates])
            growth["method"] = (f"each user's state is one of the {len(templates):,} real operator states (drawn at "
                                "random, so sizes and history lengths follow the simulator's distribution) given its "
                                "own user id and pseudonym and re-encoded with operators/state.py; not produced by "
                                "simulating that many users (1M users would take hours of operator time).")
            growth["users"] = micro.growth(templates, plan.users, work, _say)
        except Exception as e:  # noqa: BLE001
            growth["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        result["durations_s"]["growth"] = time.monotonic() - t0

    result["durations_s"]["total"] = time.monotonic() - t_all
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    result["notes"] += _notes(result, plan)
    paths = report.write(result, args.out)
    h = result["summary"]
    _say("headline: " + ", ".join(f"{k}={h[k]}" for k in report.REQUIRED_KEYS))
    for k, path in paths.items():
        _say(f"wrote {k}: {path}")
    return 0


def _train_events() -> Path:
    """The simulated events the job's model is trained on when `make demo` / the bench trains one (same conf and
    seed: `streamrec.demo.ensure_model`), for the baseline's model."""
    from streamrec.data import simulator

    path = REPO_ROOT / ".state" / "demo" / "train" / "events.jsonl"
    if not path.exists():
        conf = simulator.with_overrides(simulator.load_conf(), events=30_000, seed=1)
        simulator.write_outputs(simulator.simulate(conf), path.parent)
    return path


def job_top_k(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["top_k"])


def _size_label(n: int) -> str:
    return f"{n / 1000:.1f}k" if n < 10_000 else f"{n // 1000}k"


def _encoder_bench(seed: int, seconds: float) -> dict[str, Any]:
    """`model_export.content.bench_encoder` on the simulator catalogue's item texts (issue 15: the cost of embedding
    an item published on `items`)."""
    from model_export.content import bench_encoder, item_text
    from model_export.encoder_fetch import load_encoder_conf
    from streamrec.data import simulator

    enc = load_encoder_conf()
    sim = simulator.simulate(_small_catalogue_conf(seed, 200))
    texts = [item_text(m.title, m.categories, m.text) for m in sim.items]
    out = bench_encoder(enc.path, enc.onnx_cache_path, texts, enc.max_tokens,
                        seconds=max(seconds, 1.0))  # fmt: skip
    out["encoder"] = f"{enc.package}=={enc.version} ({enc.path.name})"
    return out


def _sim_catalogue(seed: int) -> dict[str, Any]:
    """The simulator's category names and its items' categories, limited to the smallest synthetic catalogue (so a
    stream over it hits known items in every synthetic model)."""
    from streamrec.data import simulator

    sim = simulator.simulate(_small_catalogue_conf(seed, 200))
    cats = sorted({c for it in sim.items for c in it.categories})
    return {"categories": cats, "by_id": {it.item_id: tuple(it.categories) for it in sim.items}}


def _small_catalogue_conf(seed: int, events: int) -> Any:
    from streamrec.data import simulator

    conf = simulator.with_overrides(simulator.load_conf(), events=events, seed=seed)
    return dataclasses.replace(conf, catalogue=dataclasses.replace(conf.catalogue, n_items=SYNTHETIC_SIZES[0]))


def _catalogue_stream(seed: int, events: int) -> list[tuple[bytes, bytes | None, int]]:
    from streamrec.data import simulator

    return simulator.simulate(_small_catalogue_conf(seed, events)).stream


def _profile(runner: Any, model_dir: Path, workload: Any, plan: Plan, desc: str,
             size: dict[str, Any]) -> dict[str, Any]:
    from streamrec.bench import micro
    from streamrec.bench.consumer import OUTPUT_NAMES as OUTPUTS
    from streamrec.bench.consumer import Sinks, Stopwatch
    from streamrec.sinks import CassandraWriter, WriterConf

    # First without sinks (the per-event logic alone), then the same events with the real Kafka and Cassandra
    # clients in the process: the difference beyond the sink calls themselves is what their threads cost.
    alone = micro.profile_run(model_dir, workload.stream, plan.profile_events, plan.profile_seconds, None)
    topics = {name: runner._topic(f"profile-{name}", 1) for name in OUTPUTS}
    c = runner.svc.cassandra
    writer = CassandraWriter(c.contact_points, c.native_port, WriterConf(keyspace=runner.keyspace), security=c.security)
    writer.open()
    sinks = Sinks(runner.bootstrap, topics, writer, Stopwatch())
    try:
        r = micro.profile_run(model_dir, workload.stream, plan.profile_events, plan.profile_seconds, sinks)
    finally:
        sinks.close()
    r.pop("state_sizes", None)
    r["without_sinks"] = {k: alone[k] for k in ("events", "events_per_s", "cpu_share", "stages", "stage_seconds")}
    r["model_desc"] = desc
    r["catalogue"] = f"{size['n_items']:,} items"
    return r


def _add_consumer_e2e_profile(result: dict[str, Any]) -> None:
    """Stage breakdown from the consumer processes of the p=1 max phase, and the Flink overhead estimate."""
    from streamrec.bench.micro import profile_breakdown

    phases = result.get("e2e", {}).get("phases", [])
    prof = result.setdefault("profile", {})
    con = next((ph for ph in phases if ph["system"] == "consumer" and ph["parallelism"] == 1
                and not ph.get("offered_rate")), None)  # fmt: skip
    if con and con.get("consumer_stats") and con["consumer_stats"][0]:
        st = con["consumer_stats"][0]
        prof["consumer_e2e_stages"] = profile_breakdown(st["stage_seconds"], st["events"])
    job = next((ph for ph in phases if ph["system"] == "job" and ph["parallelism"] == 1
                and not ph.get("offered_rate")), None)  # fmt: skip
    if job and con and job.get("events_per_core_second") and con.get("events_per_core_second"):
        j, c = job["events_per_core_second"], con["events_per_core_second"]
        prof["flink_overhead"] = {"job_cpu_us_per_event": round(1e6 / j, 1),
                                  "consumer_cpu_us_per_event": round(1e6 / c, 1),
                                  "overhead_cpu_us_per_event": round(1e6 / j - 1e6 / c, 1)}  # fmt: skip


def _notes(result: dict[str, Any], plan: Plan) -> list[str]:
    from streamrec.bench import report

    m, e2e = result["machine"], result["e2e"]  # a measuring run always sets e2e's conf and profile
    notes = [
        f"Shared machine: load average {m['loadavg_at_start'][0]:.1f} at the start and {m['loadavg_at_end'][0]:.1f} "
        "at the end; the end-to-end table's last CPU column is other work that ran during each phase. Numbers from a "
        "busy 2-core machine are lower bounds of what the code can do alone, and vary from run to run."
        + report.probe_span(e2e.get("phases", [])),
        "Kafka, Cassandra, the harness (latency consumers, offset sampler) and the load generator run on the same 2 "
        "cores as the system under test.",
        "Synthetic catalogues (1.7k / 20k / 100k items) are random untrained models exported through model_export's "
        "own export code: their timings are real, their recommendations are meaningless. The end-to-end runs and "
        "the profile use the job's trained artefact.",
        f"The job is measured as configured in {_conf_path(e2e['conf'])} ({e2e['profile']}, Cassandra sink as "
        "configured, checkpoint interval as stated), with only topics, group, keyspace, model dir, pseudonym key and "
        "parallelism overridden.",
        f"Windows are {plan.window_s:.0f} s per phase" + (" (short: --quick)" if result.get("mode") == "quick" else "")
        + ": throughput is a slope over that window after the first output, latency percentiles cover what was "
        "processed in it."
        + (f" Before a paced phase's window, the system just started gets {e2e['budget']['startup_load_s']:.0f} s of "
           "load at the phase's rate (at most "
           f"{e2e['budget']['startup_load_max_events']:,} events) from other users: the window measures it running; "
           "that start-up load's own latency is reported apart." if e2e.get("budget", {}).get("startup_load_s")
           else ""),
        f"After the main phases the job runs again with {_conf_path(e2e['latency_conf'])} (parallelism "
        f"{e2e.get('latency_parallelism', '1')}; rows marked with it): the same code, {e2e['latency_profile']}."
        if e2e.get("latency_conf") else "",
    ]
    c = result.get("cluster", {})
    if c.get("by_parallelism"):
        notes.append(
            f"Cluster scaling: the same job submitted with `flink run -d` to a standalone cluster the bench starts for "
            f"it ({c['taskmanagers']} TaskManagers × {c['slots_per_taskmanager']} slot, {c['taskmanager_memory']} "
            "each; Python operators in worker processes beside each TaskManager), on the max phases' backlog, one "
            "parallelism after the other (each job cancelled before the next). On 2 shared cores with Kafka and "
            "Cassandra beside it, p=2 cannot double p=1: the ratio says how much of a second core the job gets."
            + (" With --quick's backlog the job is most of the way through it before its first output (its outputs "
               "leave in a few large steps): a quick run's cluster figures are indicative only."
               if result.get("mode") == "quick" else ""))
    notes = [n for n in notes if n]
    if any(not ph.get("balanced", True) for ph in result.get("e2e", {}).get("phases", [])):
        notes.append("At least one consumer phase ended with a process without partitions; its throughput is "
                     "that of fewer processes.")
    return notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamrec")
    register(ap.add_subparsers())
    args = ap.parse_args(["bench", *(argv or sys.argv[1:])])
    return int(args.func(args))
