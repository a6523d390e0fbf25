"""`streamrec run | submit | consume | recs`: run the job, submit it to a cluster, look at what it wrote."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from streamrec.config import REPO_ROOT

PACKAGES = ("streamrec", "operators", "model_export", "jobs")


def job_argv(conf: str, operators_conf: str, from_checkpoint: str = "") -> list[str]:
    """argv of the job on the minicluster (a child process, so its JVM goes away with it)."""
    from streamrec.services import maven
    from streamrec.services.settings import services

    argv = [sys.executable, "-m", "jobs.recommend", "--conf", conf, "--operators-conf", operators_conf]
    for jar in maven.connector_jars(services().state_path):
        argv += ["--jar", str(jar)]
    if from_checkpoint:
        argv += ["--from-checkpoint", from_checkpoint]
    return argv


def check_model(conf: str) -> Path:
    from jobs.config import load_job_conf

    job = load_job_conf(conf)
    model = job.path(job.model_dir)
    if not (model / "model.onnx").exists():
        raise SystemExit(f"no model artefact at {model}: train one with "
                         f"`streamrec train --data PATH --out {job.model_dir}` (or run `make demo`)")
    return model


def cmd_run(args: argparse.Namespace) -> int:
    check_model(args.conf)
    argv = job_argv(args.conf, args.operators_conf, args.from_checkpoint)
    return subprocess.call(argv, cwd=REPO_ROOT)


def submit_argv(conf: str, operators_conf: str, detached: bool, from_savepoint: str = "",
                parallelism: int = 0) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    from streamrec.services import maven
    from streamrec.services.flink import FlinkService
    from streamrec.services.settings import services

    svc = FlinkService(services())
    args = ["run"]
    if detached:
        args.append("-d")
    args += ["-py", str(REPO_ROOT / "jobs" / "recommend.py"),
             "-pyfs", ",".join(str(REPO_ROOT / p) for p in PACKAGES),
             "-pyexec", sys.executable, "-pyclientexec", sys.executable]
    connector, *ours = maven.connector_jars(services().state_path)
    # `flink run` takes one --jarfile; the job's own jar goes through the script, which adds it to pipeline.jars.
    args += ["-j", str(connector), "--conf", conf, "--operators-conf", operators_conf]
    for jar in ours:
        args += ["--jar", str(jar)]
    if from_savepoint:
        args += ["--from-checkpoint", from_savepoint]
    argv, env = svc.run_argv(*args)
    if parallelism:  # the job sets its parallelism from its conf (`flink run -p` would not override it)
        env["STREAMREC_JOB_PARALLELISM"] = str(parallelism)
    return argv, env


def cmd_submit(args: argparse.Namespace) -> int:
    check_model(args.conf)
    argv, env = submit_argv(args.conf, args.operators_conf, args.detached, args.from_savepoint, args.parallelism)
    return subprocess.call(argv, env=env, cwd=REPO_ROOT)


def cmd_savepoint(args: argparse.Namespace) -> int:
    from jobs.config import load_job_conf
    from streamrec.services.flink import FlinkService
    from streamrec.services.settings import services

    job = load_job_conf(args.conf)
    svc = FlinkService(services())
    job_id = args.job_id or svc.running_job(job.job_name)
    target = Path(args.dir) if args.dir else job.path(job.checkpoint.savepoint_dir)
    print(svc.savepoint(job_id, target.resolve().as_uri(), stop=args.stop))
    return 0


def consumer(topic: str, from_beginning: bool, group: str | None = None) -> Any:
    from kafka import KafkaConsumer

    from streamrec.services.clients import kafka_kwargs
    from streamrec.services.settings import kafka_bootstrap

    return KafkaConsumer(topic, **kafka_kwargs(kafka_bootstrap()), group_id=group,
                         auto_offset_reset="earliest" if from_beginning else "latest",
                         enable_auto_commit=False, isolation_level="read_committed")


def cmd_consume(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    c = consumer(args.topic, args.from_beginning)
    seen = 0
    idle_since = time.monotonic()
    try:
        while args.max == 0 or seen < args.max:
            batch = c.poll(timeout_ms=500)
            if not batch:
                if not args.follow and time.monotonic() - idle_since > args.idle_s:
                    break
                continue
            idle_since = time.monotonic()
            for records in batch.values():
                for r in records:
                    seen += 1
                    if args.raw:
                        print(r.value.decode("utf-8", "replace") if r.value is not None else "null", flush=True)
                        continue
                    try:
                        console.print_json(r.value.decode("utf-8")) if r.value is not None else console.print(
                            f"[dim]tombstone key={r.key!r}[/dim]")
                    except (ValueError, UnicodeDecodeError):
                        console.print(repr(r.value))
                    if args.max and seen >= args.max:
                        break
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
    print(f"{seen} record(s) from {args.topic}", file=sys.stderr)
    return 0


def cmd_recs(args: argparse.Namespace) -> int:
    from operators.config import load_operators_conf
    from operators.privacy import Pseudonymizer
    from streamrec.services.cassandra import connect
    from streamrec.services.settings import services

    conf = services()
    ops = load_operators_conf(args.operators_conf)
    user_key = args.user if args.pseudonym else Pseudonymizer.from_env(
        allow_dev_key=ops.privacy.allow_dev_key).pseudonym(args.user)
    session = connect(conf.cassandra.contact_points, conf.cassandra.native_port,
                      keyspace=args.keyspace or conf.cassandra.keyspace)
    try:
        row = session.execute("SELECT * FROM recommendations_by_user WHERE user_key = %s", (user_key,)).one()
    finally:
        session.cluster.shutdown()
    if row is None:
        print(f"no recommendations for {args.user} (user_key {user_key})", file=sys.stderr)
        return 1
    out = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row._asdict().items()}
    out["items"], out["scores"] = list(row.items or []), [round(s, 5) for s in (row.scores or [])]
    print(json.dumps(out, indent=2))
    return 0


def register(sub: Any) -> None:
    def conf_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--conf", default="local.yaml", help="job config (default conf/local.yaml)")
        p.add_argument("--operators-conf", default="operators.yaml", help="operator thresholds")

    p = sub.add_parser("run", help="run the job on the Flink minicluster (blocks)")
    conf_args(p)
    p.add_argument("--from-checkpoint", default="", help="restore from a checkpoint or savepoint path")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="submit the job to a Flink cluster with `flink run -py`")
    conf_args(p)
    p.add_argument("--detached", action="store_true", help="return once submitted")
    p.add_argument("--from-savepoint", default="", help="start from this savepoint (or retained checkpoint)")
    p.add_argument("--parallelism", type=int, default=0,
                   help="operator parallelism (default: the conf's); a savepoint restores at any parallelism up to "
                        "batching.shards (keyed state moves with its key groups)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("savepoint", help="take a savepoint of the job on the Flink cluster; prints its path")
    conf_args(p)
    p.add_argument("job_id", nargs="?", default="", help="default: the one running job named as in the conf")
    p.add_argument("--dir", default="", help="target directory (default: the conf's checkpoint.savepoint_dir)")
    p.add_argument("--stop", action="store_true", help="stop the job with the savepoint (for a restart or rescale)")
    p.set_defaults(func=cmd_savepoint)

    p = sub.add_parser("consume", help="print a topic's records (read_committed)")
    p.add_argument("topic")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--follow", action="store_true", help="keep waiting for new records")
    p.add_argument("--max", type=int, default=0, help="stop after this many records")
    p.add_argument("--idle-s", type=float, default=5.0, help="without --follow: stop after this long idle")
    p.add_argument("--raw", action="store_true", help="one raw value per line")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("recs", help="a user's current recommendations from Cassandra")
    p.add_argument("user", help="the raw user id (pseudonymised with STREAMREC_PSEUDONYM_KEY)")
    p.add_argument("--pseudonym", action="store_true", help="USER is already a user_key")
    p.add_argument("--keyspace", default="", help="default: conf/services.yaml cassandra.keyspace")
    p.add_argument("--operators-conf", default="operators.yaml")
    p.set_defaults(func=cmd_recs)

