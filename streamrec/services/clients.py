"""Client settings for Kafka and Cassandra from the services profile: every streamrec client (the job's sources and
sinks, the Cassandra sink, the CLI, the bench, the tests) connects through these, so a secured profile
(conf/secure.yaml: SASL_SSL + SCRAM, authenticated TLS Cassandra) reaches all of them.

Passwords are read when a client is made, from the environment variable the profile names, else from its file; they
are never part of a config file, a log line, or the job graph (the job's Java clients get a Kafka config-provider
reference and resolve it themselves, see `kafka_java_properties`).
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Any

from streamrec import config
from streamrec.services.settings import CassandraSecurity, KafkaSecurity, ServicesConf, services


class CredentialsError(RuntimeError):
    """Credentials missing, unreadable, or refused by a service; the message names the endpoint and the source."""


def _path(p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else config.REPO_ROOT / q


def password_source(env_name: str, file: str) -> str:
    """Where a password comes from, for messages (never the password)."""
    if env_name and os.environ.get(env_name):
        return f"${env_name}"
    return str(_path(file)) if file else f"${env_name} (unset)"


def read_secret(what: str, env_name: str, file: str) -> str:
    """The password from `$env_name`, else from `file` (its whole content)."""
    if env_name and os.environ.get(env_name):
        return os.environ[env_name]
    if not file:
        raise CredentialsError(f"{what}: no password: set ${env_name} or name a password_file in the profile")
    path = _path(file)
    try:
        text = path.read_text()
    except OSError as e:
        raise CredentialsError(f"{what}: cannot read the password file {path}: {e.strerror} "
                               "(the local one is made by `streamrec services certs`)") from None
    if text != text.strip() or not text:
        # Kafka's DirectoryConfigProvider (the job's Java clients) would take the whitespace as part of the password.
        raise CredentialsError(f"{what}: the password file {path} is empty or has leading/trailing whitespace "
                               "(a trailing newline too): write the password alone")
    return text


def _ca(ca_file: str) -> str | None:
    if not ca_file:
        return None
    path = _path(ca_file)
    if not path.exists():
        raise CredentialsError(f"CA file {path} not found (the local one is made by `streamrec services certs`)")
    return str(path)


# ----------------------------------------------------------------------------------------------------- Kafka


def kafka_security_kwargs(sec: KafkaSecurity, bootstrap: str) -> dict[str, Any]:
    """kafka-python keyword arguments for the profile's security (empty for PLAINTEXT)."""
    if not sec.secured:
        return {}
    if sec.protocol not in ("SASL_SSL", "SSL"):
        raise CredentialsError(f"kafka.security.protocol must be PLAINTEXT, SSL or SASL_SSL, not {sec.protocol!r}")
    kw: dict[str, Any] = {"security_protocol": sec.protocol, "ssl_check_hostname": True}
    ca = _ca(sec.ca_file)
    if ca:
        kw["ssl_cafile"] = ca
    if sec.protocol == "SASL_SSL":
        kw.update(sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.username,
                  sasl_plain_password=read_secret(f"Kafka {bootstrap} user {sec.username!r}", sec.password_env,
                                                  sec.password_file))
    return kw


def kafka_kwargs(bootstrap: str | None = None, conf: ServicesConf | None = None) -> dict[str, Any]:
    """`bootstrap_servers` plus the security settings, for any kafka-python client:
    `KafkaConsumer(topic, **kafka_kwargs(), group_id=...)`."""
    k = (conf or services()).kafka
    b = bootstrap or k.bootstrap
    return {"bootstrap_servers": b, **kafka_security_kwargs(k.security, b)}


# The job's Kafka connector (flink-sql-connector-kafka) relocates the Kafka client under this package: class names
# in its config (login module, config providers) must carry the prefix.
SHADED = "org.apache.flink.kafka.shaded."


def kafka_java_properties(sec: KafkaSecurity, shaded_prefix: str = SHADED) -> dict[str, str]:
    """Kafka Java client properties for the profile's security (the job's KafkaSource/KafkaSink).

    The password is not among them: `sasl.jaas.config` refers to it through a config provider (`${env:VAR}` or
    `${dir:DIR:FILE}`), which each Kafka client resolves in the TaskManager when it starts. The job graph, the
    Flink UI and the client's logged config (Kafka prints `sasl.jaas.config` as [hidden] anyway) never hold it."""
    if not sec.secured:
        return {}
    props = {"security.protocol": sec.protocol, "ssl.endpoint.identification.algorithm": "https"}
    if sec.ca_file:
        props.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": str(_path(sec.ca_file))})
    if sec.protocol == "SASL_SSL":
        if sec.password_env and os.environ.get(sec.password_env):
            ref, providers = f"${{env:{sec.password_env}}}", {"env": "EnvVarConfigProvider"}
        elif sec.password_file:
            f = _path(sec.password_file)
            ref, providers = f"${{dir:{f.parent}:{f.name}}}", {"dir": "DirectoryConfigProvider"}
        else:
            raise CredentialsError(f"Kafka user {sec.username!r}: no password: set ${sec.password_env} or name a "
                                   "password_file in the profile")
        module = f"{shaded_prefix}org.apache.kafka.common.security.scram.ScramLoginModule"
        props.update({
            "sasl.mechanism": sec.sasl_mechanism,
            "sasl.jaas.config": f'{module} required username="{sec.username}" password="{ref}";',
            "config.providers": ",".join(providers),
        })
        for alias, cls in providers.items():
            props[f"config.providers.{alias}.class"] = f"{shaded_prefix}org.apache.kafka.common.config.provider.{cls}"
    return props


# ------------------------------------------------------------------------------------------------- Cassandra


def cassandra_java_settings(sec: CassandraSecurity) -> dict[str, Any]:
    """The job's Java Cassandra sink settings for the profile's security (jobs/java/CassandraSink.java). Like Kafka's,
    the password is not among them: the sink reads `password_env`, else `password_file`, in the TaskManager."""
    if not sec.secured:
        return {}
    out: dict[str, Any] = {"tls": sec.tls, "ca_file": str(_path(sec.ca_file)) if sec.ca_file else ""}
    if sec.username:
        out.update(username=sec.username, password_env=sec.password_env,
                   password_file=str(_path(sec.password_file)) if sec.password_file else "")
    return out


def cassandra_cluster_kwargs(sec: CassandraSecurity, hosts: list[str], port: int,
                             password: str | None = None) -> dict[str, Any]:
    """cassandra-driver `Cluster(...)` keyword arguments for the profile's security (empty when open); `password`
    instead of the one `sec` names."""
    kw: dict[str, Any] = {}
    if sec.username:
        from cassandra.auth import PlainTextAuthProvider

        if password is None:
            password = read_secret(f"Cassandra {hosts[0] if hosts else '?'}:{port} role {sec.username!r}",
                                   sec.password_env, sec.password_file)
        kw["auth_provider"] = PlainTextAuthProvider(username=sec.username, password=password)
    if sec.tls:
        ctx = ssl.create_default_context(cafile=_ca(sec.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        kw["ssl_context"] = ctx  # check_hostname: the driver passes each node's address as server_hostname
    return kw


# ---------------------------------------------------------------------------------------- checks before a job


class _KafkaErrors(logging.Handler):
    """Collects kafka-python's connection errors: its bootstrap retries a refused login until its timeout and
    logs why each attempt failed, and that reason is what the user needs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check_kafka(conf: ServicesConf, timeout_s: float = 10.0) -> None:
    """Connect and log in to Kafka as the job will; raise CredentialsError naming the endpoint on failure (after at
    most `timeout_s`)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    k = conf.kafka
    who = f"Kafka {k.bootstrap} ({k.security.protocol}" + (
        f", user {k.security.username!r}, password from "
        f"{password_source(k.security.password_env, k.security.password_file)})"
        if k.security.protocol == "SASL_SSL" else ")")
    kw = kafka_kwargs(conf=conf)
    errors = _KafkaErrors()
    log = logging.getLogger("kafka")
    log.addHandler(errors)
    try:
        admin = KafkaAdminClient(**kw, client_id="streamrec-check", bootstrap_timeout_ms=int(timeout_s * 1000),
                                 request_timeout_ms=int(timeout_s * 1000))
        try:
            admin.describe_cluster()
        finally:
            admin.close()
    except (KafkaError, OSError) as e:
        raise CredentialsError(f"{who}: {_kafka_reason(e, errors.messages)}") from None
    finally:
        log.removeHandler(errors)


def _kafka_reason(e: BaseException, logged: list[str]) -> str:
    auth = [m for m in logged if "Authentication" in m or "invalid credentials" in m]
    if auth:
        return f"authentication failed (wrong user or password?): {auth[-1]}"
    if any("broker_version=(" in m and "Connection lost" in m for m in logged):
        # TLS and the version exchange worked (the client learned the broker's version), then the broker hung up
        # during the SASL login: that is how a Kafka broker refuses credentials to this client.
        return ("authentication failed (wrong user or password?): the broker accepted the TLS connection and "
                "closed it during the SASL login")
    ssl_err = [m for m in logged if "SSL" in m or "certificate" in m]
    if ssl_err:
        return f"TLS failed: {ssl_err[-1]}"
    detail = f" (last error: {logged[-1]})" if logged else ""
    return (f"{type(e).__name__}: {e}{detail}: the broker is down, or the client's security protocol does not match "
            "its listener")


def check_cassandra(conf: ServicesConf, timeout_s: float = 10.0) -> None:
    """Connect and authenticate to Cassandra as the job's sink will; raise CredentialsError on failure."""
    from cassandra.cluster import NoHostAvailable

    from streamrec.services.cassandra import connect

    c = conf.cassandra
    s = c.security
    who = f"Cassandra {','.join(c.contact_points)}:{c.native_port} (" + ("TLS" if s.tls else "plaintext") + (
        f", role {s.username!r}, password from {password_source(s.password_env, s.password_file)})"
        if s.username else ")")
    try:
        session = connect(c.contact_points, c.native_port, timeout_s=timeout_s, security=s)
    except NoHostAvailable as e:
        reasons = "; ".join(f"{h}: {err}" for h, err in e.errors.items())
        auth = any("Authentication" in type(err).__name__ or "Bad credentials" in str(err)
                   for err in e.errors.values())
        raise CredentialsError(f"{who}: " + ("authentication failed (wrong role or password?): " if auth else "")
                               + reasons) from None
    session.cluster.shutdown()


def check_endpoints(conf: ServicesConf | None = None, timeout_s: float = 10.0, cassandra: bool = True) -> None:
    conf = conf or services()
    check_kafka(conf, timeout_s)
    if cassandra:
        check_cassandra(conf, timeout_s)
