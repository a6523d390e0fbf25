"""Secured endpoints (#16): the conf/secure.yaml profile's own local services (Kafka on SASL_SSL with SCRAM-SHA-512, its
KRaft controller on mutual TLS, Cassandra with PasswordAuthenticator and TLS only), started beside the default ones by
`streamrec services up --secure`. The job runs end to end on them; plaintext, unauthenticated and wrongly
authenticated clients are refused; a wrong password stops `streamrec run` within seconds with the endpoint named."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamrec import config
from streamrec.config import REPO_ROOT
from streamrec.services.clients import kafka_kwargs
from streamrec.services.settings import PROFILE_ENV, ServicesConf
from tests.integration.test_job_e2e import OUTPUTS, job_env, train_tiny

PROFILE = "secure.yaml"
N_EVENTS = 400


def _cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**(env or os.environ), PROFILE_ENV: PROFILE}
    return subprocess.run([sys.executable, "-m", "streamrec.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip


@pytest.fixture(scope="module")
def secure() -> Iterator[ServicesConf]:
    """The secure profile's Kafka and Cassandra (started here unless they run; stopped at the end if started)."""
    from streamrec.services.cassandra import CassandraService
    from streamrec.services.kafka import KafkaService

    conf = config.load(ServicesConf, config.CONF_DIR / PROFILE)
    running = KafkaService(conf).pid() and CassandraService(conf).pid()
    up = _cli("services", "up", "--secure", timeout_s=600)
    assert up.returncode == 0, up.stdout + up.stderr
    yield conf
    if not running:
        _cli("services", "down", "--only", "kafka,cassandra", timeout_s=300)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamrec.data import simulator

    tmp = tmp_path_factory.mktemp("secure-model")
    sim = simulator.simulate(simulator.with_overrides(simulator.load_conf(), events=N_EVENTS, users=40, seed=5))
    (tmp / "events.jsonl").write_text("".join(e.to_json() + "\n" for e in sim.events))
    return train_tiny(tmp, tmp / "events.jsonl")


def _secret(conf: ServicesConf, name: str) -> str:
    return (conf.secrets_path / f"{name}.password").read_text()


def _kafka_refuses(**kw: Any) -> str:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(**kw, bootstrap_timeout_ms=4000, request_timeout_ms=4000)
    except KafkaError as e:
        return type(e).__name__
    admin.close()
    raise AssertionError(f"Kafka let a client in with {sorted(kw)}")


def _cassandra_error(conf: ServicesConf, **kw: Any) -> BaseException:
    from cassandra.cluster import Cluster, NoHostAvailable

    c = conf.cassandra
    cluster = Cluster(c.contact_points, port=c.native_port, connect_timeout=5, protocol_version=5, **kw)
    try:
        cluster.connect()
    except NoHostAvailable as e:
        return next(iter(e.errors.values()))
    finally:
        cluster.shutdown()
    raise AssertionError(f"Cassandra let a client in with {sorted(kw)}")


def test_plaintext_unauthenticated_and_wrong_clients_are_refused(secure: ServicesConf) -> None:
    from cassandra import AuthenticationFailed
    from cassandra.auth import PlainTextAuthProvider
    from kafka import KafkaAdminClient

    k, c = secure.kafka, secure.cassandra
    ca = str(secure.secrets_path / "ca.pem")
    # The right client gets in (so the refusals below are about what each one lacks).
    admin = KafkaAdminClient(**kafka_kwargs(conf=secure))
    assert "events" in admin.list_topics()
    admin.close()

    _kafka_refuses(bootstrap_servers=k.bootstrap)  # plaintext on the TLS listener
    _kafka_refuses(bootstrap_servers=k.bootstrap, security_protocol="SSL", ssl_cafile=ca)  # TLS, no login
    _kafka_refuses(bootstrap_servers=k.bootstrap, security_protocol="SASL_SSL", ssl_cafile=ca,
                   sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="streamrec", sasl_plain_password="wrong")
    # The KRaft controller port wants a client certificate signed by the CA: a TLS client without one gets nothing.
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection((k.host, k.controller_port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=k.host) as tls:
                # ApiVersions v0 request: size, api key 18, version 0, correlation id 1, client id "t"
                tls.sendall(bytes.fromhex("0000000b") + bytes.fromhex("0012000000000001") + b"\x00\x01t")
                answer = tls.recv(64)
        except (ssl.SSLError, OSError):
            answer = b""
    assert answer == b"", "the controller answered a client without a certificate"

    tls = ssl.create_default_context(cafile=ca)
    assert isinstance(_cassandra_error(secure), ConnectionError | OSError)  # plaintext on a TLS-only port
    assert isinstance(_cassandra_error(secure, ssl_context=tls), AuthenticationFailed)  # TLS, no credentials
    wrong = _cassandra_error(secure, ssl_context=tls, auth_provider=PlainTextAuthProvider("streamrec", "wrong"))
    assert "Bad credentials" in str(wrong)
    default = _cassandra_error(secure, ssl_context=tls, auth_provider=PlainTextAuthProvider("cassandra", "cassandra"))
    assert "Bad credentials" in str(default) or "not allowed to log in" in str(default), default
    assert c.security.username == "streamrec"


@pytest.mark.parametrize(("variable", "endpoint"), [("STREAMREC_KAFKA_PASSWORD", "127.0.0.1:9192"),
                                                    ("STREAMREC_CASSANDRA_PASSWORD", "127.0.0.1:9142")])
def test_wrong_password_stops_the_job_fast_naming_the_endpoint(secure: ServicesConf, model: Path, variable: str,
                                                              endpoint: str, tmp_path: Path) -> None:
    env = job_env({}, model, "streamrec", tmp_path, f"wrong-{uuid.uuid4().hex[:8]}")
    env[variable] = "not-the-password"
    t0 = time.monotonic()
    run = _cli("run", env=env, timeout_s=120)
    took = time.monotonic() - t0
    assert run.returncode != 0
    assert took < 30, f"took {took:.1f} s"
    assert endpoint in run.stderr and "authentication failed" in run.stderr, run.stderr[-2000:]
    assert f"${variable}" in run.stderr  # where the refused password came from
    assert "not-the-password" not in run.stdout + run.stderr


def test_job_end_to_end_on_secured_services(secure: ServicesConf, model: Path, tmp_path: Path) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    from streamrec.data import simulator
    from streamrec.services.cassandra import apply_schema, connect

    run_id = f"sec-{uuid.uuid4().hex[:10]}"
    topics = {name: f"{run_id}-{name}" for name in ("events", "items", "control", *OUTPUTS)}
    admin = KafkaAdminClient(**kafka_kwargs(conf=secure))
    admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics.values()])
    admin.close()
    keyspace = f"sec_{uuid.uuid4().hex[:10]}"
    c = secure.cassandra
    apply_schema(c.contact_points, c.native_port, c, keyspace=keyspace, security=c.security)

    sim = simulator.simulate(simulator.with_overrides(simulator.load_conf(), events=N_EVENTS, users=40, seed=6))
    producer = KafkaProducer(**kafka_kwargs(conf=secure), acks="all")
    for e in sim.events:
        producer.send(topics["events"], value=e.to_json().encode(), timestamp_ms=e.ts)
    producer.flush()
    producer.close()

    env = job_env(topics, model, keyspace, tmp_path, run_id)
    env["STREAMREC_DEBOUNCE_INTERVAL_MS"] = "0"  # one list per event
    started = time.time()
    run = _cli("run", env=env, timeout_s=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]

    consumer = KafkaConsumer(**kafka_kwargs(conf=secure), enable_auto_commit=False, isolation_level="read_committed",
                             consumer_timeout_ms=2000)
    tp = TopicPartition(topics["recommendations"], 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    lists = [json.loads(m.value) for m in consumer if m.value is not None]
    consumer.close()
    assert len(lists) == len(sim.events) and len({r["rec_id"] for r in lists}) == len(lists)
    latest = {r["user_key"]: r["items"] for r in lists}

    session = connect(c.contact_points, c.native_port, keyspace=keyspace, security=c.security)
    try:
        query = "SELECT user_key, items FROM recommendations_by_user"
        rows = {r.user_key: list(r.items) for r in session.execute(query)}
        session.execute(f"DROP KEYSPACE {keyspace}", timeout=60)
    finally:
        session.cluster.shutdown()
    assert rows == latest

    # No password in what the run printed or logged (the Java clients got config-provider references).
    logs = [p for p in (Path(sys.prefix) / "lib").glob("python3*/site-packages/pyflink/log/*")
            if p.stat().st_mtime >= started]
    text = run.stdout + run.stderr + "".join(p.read_text(errors="replace") for p in logs)
    for name in ("kafka-client", "cassandra-client", "kafka-admin", "cassandra-admin", "keystore"):
        assert _secret(secure, name) not in text, f"the {name} password was printed"


def test_bench_load_generator_speaks_sasl_ssl(secure: ServicesConf, tmp_path: Path) -> None:
    """The bench's Java load generator (what its paced phases send with) on the secure profile's broker: it takes the
    profile's client settings (SASL_SSL, the CA, the password by reference), and every line arrives."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewTopic

    from streamrec.bench import load

    topic = f"sec-load-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(**kafka_kwargs(conf=secure))
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    stream = [(f'{{"n":{i}}}'.encode(), f"u{i % 7}".encode(), 1_700_000_000_000 + i) for i in range(200)]
    load.save_stream(stream, tmp_path / "stream.pkl")
    env = {**os.environ, PROFILE_ENV: PROFILE}
    proc = subprocess.run([sys.executable, "-m", "streamrec.bench.load", "--stream", str(tmp_path / "stream.pkl"),
                           "--topic", topic, "--bootstrap", secure.kafka.bootstrap, "--rate", "0", "--partitions", "2",
                           "--out", str(tmp_path / "load"), "--impl", "java"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "load.json").read_text())
    assert (summary["attempted"], summary["acked"], summary["failed"]) == (200, 200, 0)
    consumer = KafkaConsumer(topic, **kafka_kwargs(conf=secure), auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)  # fmt: skip
    got = sorted(r.value for r in consumer)
    consumer.close()
    assert got == sorted(v for v, _, _ in stream)
