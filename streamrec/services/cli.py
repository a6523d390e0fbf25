"""`streamrec services up|down|status|fetch`: the local Kafka, Cassandra and Flink services."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from streamrec.services import maven, secrets
from streamrec.services.cassandra import CassandraService
from streamrec.services.flink import FlinkService
from streamrec.services.kafka import KafkaService
from streamrec.services.proc import ServiceError
from streamrec.services.settings import ServicesConf, services

ALL = ("kafka", "cassandra", "flink")


def make(name: str, conf: ServicesConf) -> Any:
    return {"kafka": KafkaService, "cassandra": CassandraService, "flink": FlinkService}[name](conf)


def selected(args: argparse.Namespace, conf: ServicesConf, *, for_up: bool) -> list[str]:
    names = list(args.only.split(",")) if args.only else ["kafka", "cassandra"]
    if getattr(args, "flink", False) and "flink" not in names:
        names.append("flink")
    if not for_up and not args.only:
        names = list(ALL)  # down/status always cover everything
    unknown = set(names) - set(ALL)
    if unknown:
        raise SystemExit(f"unknown service(s): {sorted(unknown)}; choose from {ALL}")
    managed = {"kafka": conf.kafka.managed, "cassandra": conf.cassandra.managed, "flink": conf.flink.managed}
    return [n for n in names if managed[n]]


def cmd_up(args: argparse.Namespace) -> int:
    if args.secure:
        from streamrec.cli import use_profile

        use_profile("secure.yaml")
    conf = services()
    names = selected(args, conf, for_up=True)
    secured = (conf.kafka.security.secured and "kafka" in names) or (
        conf.cassandra.security.secured and "cassandra" in names)
    if secured:
        made = secrets.ensure(conf.secrets_path)
        if made:
            print(f"secrets: made {', '.join(made)} in {conf.secrets_path}", flush=True)
    for name in names:
        t0 = time.monotonic()
        print(f"{name}: starting ...", flush=True)
        try:
            msg = make(name, conf).up()
        except ServiceError as e:
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            return 1
        print(f"{name}: {msg} [{time.monotonic() - t0:.1f} s]", flush=True)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    conf = services()
    rc = 0
    for name in reversed(selected(args, conf, for_up=False)):
        try:
            print(f"{name}: {make(name, conf).down()}", flush=True)
        except ServiceError as e:
            print(f"{name}: FAILED to stop: {e}", file=sys.stderr)
            rc = 1
    return rc


def cmd_status(args: argparse.Namespace) -> int:
    conf = services()
    for name in selected(args, conf, for_up=False):
        print(f"{name}: {make(name, conf).status()}")
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    conf = services()
    try:
        made = secrets.ensure(conf.secrets_path)
    except ServiceError as e:
        print(f"secrets: FAILED: {e}", file=sys.stderr)
        return 1
    print(f"secrets: {'made ' + ', '.join(made) if made else 'all present'} in {conf.secrets_path}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    conf = services()
    for name in args.only.split(",") if args.only else maven.ARTEFACT_SETS:
        t0 = time.monotonic()
        try:
            out = maven.fetch(conf.state_path, name)
        except ServiceError as e:
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            return 1
        print(f"{name}: {len(list(out.glob('*.jar')))} jars in {out} [{time.monotonic() - t0:.1f} s]")
    if not args.only or "flink" in args.only.split(","):
        try:
            print(f"job jar: {maven.connector_jars(conf.state_path)[-1]} (jobs/java)")
        except ServiceError as e:
            print(f"job jar: FAILED: {e}", file=sys.stderr)
            return 1
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("services", help="start/stop/check the local Kafka, Cassandra and Flink")
    ssub = p.add_subparsers(dest="services_command", metavar="ACTION", required=True)
    for name, func, help_ in (
        ("up", cmd_up, "start Kafka and Cassandra (and Flink with --flink); a second `up` is a no-op"),
        ("down", cmd_down, "stop every local service started from this state dir"),
        ("status", cmd_status, "show what runs"),
        ("fetch", cmd_fetch, "resolve the JVM artefacts from Maven Central (cached)"),
        ("certs", cmd_certs, "make the local CA, the services' certificate and random passwords in the profile's "
                             "secrets_dir (what is missing only)"),
    ):
        sp = ssub.add_parser(name, help=help_)
        sp.add_argument("--only", default="", help="comma-separated subset of kafka,cassandra,flink")
        if name == "up":
            sp.add_argument("--flink", action="store_true", help="also start the standalone Flink session cluster")
            sp.add_argument("--secure", action="store_true",
                            help="the conf/secure.yaml profile: SASL_SSL Kafka, authenticated TLS Cassandra (same as "
                                 "`streamrec --services secure.yaml services up`)")
        sp.set_defaults(func=func)
