"""`streamrec demo` (what `make demo` runs): the whole product on the local services, on simulated events.

Services up → a small model trained on the spot (if none) → the job on the Flink minicluster → simulated events with
planted abuse and malformed messages produced at a steady rate → live recommendations and fraud flags → a summary
measured from what actually reached Kafka and Cassandra (nothing here is estimated).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from streamrec.config import REPO_ROOT

OUTPUTS = ("recommendations", "fraud-flags", "dead-letters", "deletions")
DEMO_KEY = "streamrec-demo-key-not-for-production"  # used only when STREAMREC_PSEUDONYM_KEY is unset


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def ensure_model(model_dir: Path, events: int, epochs: int, say: Any) -> None:
    """Train a small model into `model_dir` unless it holds one with both graphs (an artefact written before the
    fast graph model.topk.onnx existed is replaced)."""
    from model_export.onnx_io import MODEL_FILE, TOPK_FILE

    if (model_dir / MODEL_FILE).exists() and (model_dir / TOPK_FILE).exists():
        say(f"model: using {model_dir}")
        return
    from streamrec.cli import main
    from streamrec.data import simulator

    train_dir = REPO_ROOT / ".state" / "demo" / "train"
    what = f"an old one without the fast graph ({TOPK_FILE})" if (model_dir / MODEL_FILE).exists() else "none"
    say(f"model: {what} at {model_dir}; simulating {events:,} training events and training ({epochs} epochs) ...")
    conf = simulator.with_overrides(simulator.load_conf(), events=events, seed=1)
    simulator.write_outputs(simulator.simulate(conf), train_dir)
    t0 = time.monotonic()
    rc = main(["train", "--data", str(train_dir / "events.jsonl"), "--out", str(model_dir), "--epochs", str(epochs)])
    if rc != 0:
        raise SystemExit("training failed")
    say(f"model: trained in {time.monotonic() - t0:.0f} s → {model_dir}")


class Collector:
    """Consumes the output topics (read_committed) on a thread and keeps what the summary needs."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        from kafka import KafkaConsumer

        from streamrec.services.clients import kafka_kwargs

        self.by_topic = {v: k for k, v in topics.items() if k in OUTPUTS}
        self.consumer = KafkaConsumer(*self.by_topic, **kafka_kwargs(bootstrap), auto_offset_reset="earliest",
                                      enable_auto_commit=False, isolation_level="read_committed")
        self.records: dict[str, list[dict[str, Any]]] = {k: [] for k in OUTPUTS}
        self.received_at: dict[str, float] = {}  # event_id of a recommendation's trigger → first time seen
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for tp, recs in self.consumer.poll(timeout_ms=200).items():
                name = self.by_topic[tp.topic]
                now = time.monotonic()
                with self.lock:
                    for r in recs:
                        try:
                            obj = json.loads(r.value)
                        except (TypeError, ValueError):
                            continue
                        self.records[name].append(obj)
                        if name == "recommendations":
                            self.received_at.setdefault(obj.get("event_id", ""), now)
        self.consumer.close()

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {k: len(v) for k, v in self.records.items()}

    def latest(self, name: str, n: int) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.records[name][-n:])


def job_lag(bootstrap: str, group: str, topic: str) -> int | None:
    """Messages of `topic` the job has not committed yet (None before its first checkpoint)."""
    from kafka import KafkaConsumer, TopicPartition

    from streamrec.services.clients import kafka_kwargs

    # A consumer that never subscribes does not join the group; it only reads the group's committed offsets.
    c = KafkaConsumer(**kafka_kwargs(bootstrap), group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or []]
        committed = {tp: c.committed(tp) for tp in parts}
        if all(v is None for v in committed.values()):
            return None
        ends = c.end_offsets(parts)
    finally:
        c.close()
    return sum(max(0, ends[tp] - (committed[tp] or 0)) for tp in parts)


def render(collector: Collector, produced: int, total: int, pseudonyms: dict[str, str]) -> Any:
    from rich.console import Group
    from rich.table import Table

    c = collector.counts()
    head = Table.grid(padding=(0, 2))
    head.add_row(f"events produced [bold]{produced:,}[/]/{total:,}",
                 f"recommendations [bold]{c['recommendations']:,}[/]",
                 f"fraud flags [bold]{c['fraud-flags']:,}[/]", f"dead letters [bold]{c['dead-letters']:,}[/]")
    recs = Table(title="latest recommendations", expand=True)
    for col in ("user", "trigger", "top items", "model"):
        recs.add_column(col, overflow="fold")
    for r in collector.latest("recommendations", 5):
        recs.add_row(pseudonyms.get(r["user_key"], r["user_key"][:12]), r.get("event_id", ""),
                     " ".join(r["items"][:5]), r.get("model_version", ""))
    flags = Table(title="latest fraud flags", expand=True)
    for col in ("subject", "reasons", "score"):
        flags.add_column(col, overflow="fold")
    for f in collector.latest("fraud-flags", 5):
        subj = pseudonyms.get(f["subject"], f["subject"][:16])
        flags.add_row(f"{f['subject_kind']} {subj}", ",".join(f.get("reasons", [])), f"{f.get('score', 0):.2f}")
    return Group(head, recs, flags)


def cmd_demo(args: argparse.Namespace) -> int:
    from kafka.admin import KafkaAdminClient, NewTopic
    from rich.console import Console
    from rich.live import Live

    from jobs.config import load_job_conf
    from operators.privacy import Pseudonymizer
    from streamrec.data import simulator
    from streamrec.data.produce import make_producer
    from streamrec.jobcli import job_argv
    from streamrec.services.cassandra import CassandraService, apply_schema, connect
    from streamrec.services.clients import kafka_kwargs
    from streamrec.services.kafka import KafkaService
    from streamrec.services.settings import services

    console = Console()
    say = console.print
    svc = services()
    for service in (KafkaService(svc), CassandraService(svc)):
        say(f"{service.name}: {service.up()}")

    job = load_job_conf(args.conf)
    model_dir = job.path(job.model_dir)
    ensure_model(model_dir, args.train_events, args.train_epochs, say)

    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    run_dir = REPO_ROOT / ".state" / "demo" / run_id
    run_dir.mkdir(parents=True)
    topics = {name: f"demo-{run_id}-{name}" for name in ("events", "items", "control", *OUTPUTS)}
    bootstrap = svc.kafka.bootstrap
    admin = KafkaAdminClient(**kafka_kwargs(bootstrap))
    admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1) for t in topics.values()])
    admin.close()
    keyspace = "demo_" + run_id.replace("-", "_")
    apply_schema(svc.cassandra.contact_points, svc.cassandra.native_port, svc.cassandra, keyspace=keyspace)

    key = os.environ.get("STREAMREC_PSEUDONYM_KEY") or DEMO_KEY
    key_id = os.environ.get("STREAMREC_PSEUDONYM_KEY_ID") or "demo"
    pseudonymizer = Pseudonymizer(key.encode(), key_id)
    group = f"streamrec-demo-{run_id}"
    env = dict(os.environ)
    env.update({f"STREAMREC_JOB_TOPICS_{k.upper().replace('-', '_')}": v for k, v in topics.items()})
    env.update({"STREAMREC_JOB_CONSUMER_GROUP": group, "STREAMREC_JOB_KAFKA_SINK_TRANSACTIONAL_ID_PREFIX": group,
                "STREAMREC_JOB_CHECKPOINT_DIR": str(run_dir / "checkpoints"), "STREAMREC_CASSANDRA_KEYSPACE": keyspace,
                "STREAMREC_JOB_MODEL_DIR": str(model_dir), "STREAMREC_PSEUDONYM_KEY": key,
                "STREAMREC_PSEUDONYM_KEY_ID": key_id})

    conf = simulator.with_overrides(simulator.load_conf(args.sim_conf), events=args.events, users=args.users,
                                    seed=args.seed)  # fmt: skip
    conf = dataclasses.replace(conf, noise=dataclasses.replace(conf.noise, malformed_rate=args.malformed_rate))
    sim = simulator.simulate(conf)
    say(f"simulated {len(sim.events):,} events of {len({e.user_id for e in sim.events}):,} users, "
        f"{len(sim.labels['users'])} abusive accounts, {len(sim.labels['items'])} attacked items, "
        f"{len(sim.labels['malformed'])} malformed messages")

    log = open(run_dir / "job.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(job_argv(args.conf, args.operators_conf), cwd=REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    say(f"job: started on the Flink minicluster (pid {proc.pid}, log {run_dir / 'job.log'})")
    collector = Collector(bootstrap, topics)
    collector.thread.start()
    producer = make_producer(conf.producer, bootstrap)
    sent_at: dict[str, float] = {}
    pseudonyms = {pseudonymizer.pseudonym(u): u for u in {e.user_id for e in sim.events}}
    summary: dict[str, Any] = {"run_id": run_id, "topics": topics, "keyspace": keyspace}
    t_start = time.monotonic()
    warmups = 1  # warm-up dead letters (they come back before the first event is sent)
    try:
        # The catalogue first, as in a deployment (it exists before the traffic), then one malformed warm-up message
        # per items partition behind it and one on the events topic: the job is up and has read the whole catalogue
        # when all of them have come back as dead letters. (Published together with the first events, the 2,600
        # catalogue records competed with them in the job: the demo's p99 was the catalogue's load time.)
        for it in sim.items:
            producer.send(topics["items"], value=it.to_json().encode(), key=it.item_id.encode())
        item_partitions = producer.partitions_for(topics["items"])
        for p in item_partitions:
            producer.send(topics["items"], value=b"demo warm-up: not an item", partition=p)
        producer.send(topics["events"], value=b"demo warm-up: not an event")
        producer.flush()
        warmups = len(item_partitions) + 1
        with console.status("waiting for the job to start and read the catalogue (warm-up dead letters back) ..."):
            while collector.counts()["dead-letters"] < warmups:
                if proc.poll() is not None:
                    raise SystemExit(f"the job exited (code {proc.returncode}); see {run_dir / 'job.log'}")
                time.sleep(0.5)
        say(f"job: running, catalogue read ({time.monotonic() - t_start:.0f} s to the warm-up dead letters)")

        produced = 0
        t0 = time.monotonic()
        tty = console.is_terminal  # a live view on a terminal; progress lines in a log
        with Live(render(collector, 0, len(sim.stream), pseudonyms), console=console, refresh_per_second=2,
                  auto_refresh=tty) as live:
            for i, (payload, key_b, ts) in enumerate(sim.stream):
                ahead = t0 + i / args.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                try:
                    eid = json.loads(payload).get("event_id")
                except (ValueError, AttributeError):
                    eid = None
                if isinstance(eid, str):
                    sent_at.setdefault(eid, time.monotonic())
                producer.send(topics["events"], value=payload, key=key_b, timestamp_ms=ts)
                produced = i + 1
                if tty and i % 200 == 0:
                    live.update(render(collector, produced, len(sim.stream), pseudonyms))
                elif not tty and i % 1000 == 0:
                    say(f"produced {produced:,}/{len(sim.stream):,}; outputs so far {collector.counts()}")
            producer.flush()
            produce_s = time.monotonic() - t0
            # Drain: the job has committed every input offset, then one more checkpoint for the last transactions.
            deadline = time.monotonic() + args.drain_timeout_s
            while time.monotonic() < deadline:
                if tty:
                    live.update(render(collector, produced, len(sim.stream), pseudonyms))
                lag = job_lag(bootstrap, group, topics["events"])
                if lag == 0:
                    break
                if proc.poll() is not None:
                    raise SystemExit(f"the job exited (code {proc.returncode}); see {run_dir / 'job.log'}")
                time.sleep(1)
            time.sleep(job.checkpoint.interval_ms / 1000 * 2 + 2)
            live.update(render(collector, produced, len(sim.stream), pseudonyms))
        summary["drained"] = job_lag(bootstrap, group, topics["events"]) == 0
    finally:
        producer.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        collector.stop.set()
        collector.thread.join(5)

    recs, flags = collector.records["recommendations"], collector.records["fraud-flags"]
    dead = collector.records["dead-letters"]
    session = connect(svc.cassandra.contact_points, svc.cassandra.native_port, keyspace=keyspace)
    try:
        cass_recs = session.execute("SELECT count(*) FROM recommendations_by_user").one()[0]
        cass_flags = session.execute("SELECT count(*) FROM fraud_flags").one()[0]
    finally:
        session.cluster.shutdown()
    labelled = {pseudonymizer.pseudonym(u) for u in sim.labels["users"]}
    flagged = {f["subject"] for f in flags if f["subject_kind"] == "user"}
    flagged_items = {f["subject"] for f in flags if f["subject_kind"] == "item"}
    from operators.baserates import ALARM_KIND

    alarms = [f for f in flags if f.get("kind") == ALARM_KIND]
    abuse_kinds = dict(collections.Counter(v["kind"] for v in sim.labels["users"].values()))
    lat = [(collector.received_at[e] - sent_at[e]) * 1000 for e in collector.received_at if e in sent_at]
    summary.update({
        "events_in": len(sim.stream), "valid_events": len(sim.events), "produce_rate_target": args.rate,
        "produce_rate_achieved": round(len(sim.stream) / max(produce_s, 1e-9), 1),
        "recommendations_kafka": len(recs), "users_with_recommendations": len({r["user_key"] for r in recs}),
        "recommendations_cassandra_rows": cass_recs,
        "fraud_flags_kafka": len(flags), "fraud_flags_cassandra_rows": cass_flags,
        "flagged_users": len(flagged), "labelled_abusive_users": len(labelled),
        "flag_precision_users": round(len(flagged & labelled) / len(flagged), 3) if flagged else None,
        "flag_recall_users": round(len(flagged & labelled) / len(labelled), 3) if labelled else None,
        "flagged_items": len(flagged_items), "attacked_items": len(sim.labels["items"]),
        "attacked_items_flagged": len(flagged_items & set(sim.labels["items"])),
        "detector_alarms": [f"{a['detector']} ({a['evidence']['flagged_share']:.0%} of active accounts)"
                            for a in alarms],
        "simulator": f"conf/{args.sim_conf} (abusive accounts: {abuse_kinds})",
        "dead_letters": len(dead) - warmups, "malformed_planted": len(sim.labels["malformed"]),
        "dead_letter_reasons": dict(collections.Counter(d.get("reason") for d in dead[warmups:])),
        "latency_ms_p50": None if not lat else round(percentile(lat, 50) or 0, 1),
        "latency_ms_p99": None if not lat else round(percentile(lat, 99) or 0, 1),
        "latency_samples": len(lat),
        "profile": f"conf/{args.conf} ({job.describe()})",
        "latency_note": "event sent → its recommendation readable under read_committed"
                        + (f" (includes the exactly-once commit wait: checkpoint every {job.checkpoint.interval_ms} ms)"
                           if job.kafka_sink.delivery == "EXACTLY_ONCE" else
                           " (at-least-once outputs: readable when written; after a failure, outputs since the last "
                           "checkpoint are written again with the same ids)"),
    })
    table = "\n".join(f"  {k:32s} {v}" for k, v in summary.items() if k not in ("topics",))
    say("[bold]summary[/]\n" + table)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2))
        say(f"summary written to {args.summary_json}")
    say(f"look closer: streamrec consume {topics['recommendations']} --from-beginning | "
        f"streamrec recs USER --keyspace {keyspace}")
    return 0 if summary["drained"] else 1


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on simulated events, with live output and a summary")
    p.add_argument("--conf", default="low-latency.yaml",
                   help="job config (default conf/low-latency.yaml: sub-second latency; conf/local.yaml is the "
                        "exactly-once profile, whose outputs become readable at each checkpoint)")
    p.add_argument("--operators-conf", default="operators.yaml")
    p.add_argument("--sim-conf", default="simulator-demo.yaml",
                   help="simulator config of the demo's stream (default conf/simulator-demo.yaml: conf/simulator.yaml "
                        "with abuse scaled to a short stream)")  # fmt: skip
    p.add_argument("--events", type=int, default=5000, help="simulated events to produce")
    p.add_argument("--users", type=int, default=300, help="simulated genuine users")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=500.0, help="events/s offered to the job")
    p.add_argument("--malformed-rate", type=float, default=0.005, help="malformed messages per valid event")
    p.add_argument("--train-events", type=int, default=30000, help="simulated events to train a model on, if none")
    p.add_argument("--train-epochs", type=int, default=3)
    p.add_argument("--drain-timeout-s", type=float, default=300.0)
    p.add_argument("--summary-json", default="", help="also write the summary here")
    p.set_defaults(func=cmd_demo)

