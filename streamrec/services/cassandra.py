"""A local single Apache Cassandra 5.0 node from the `cassandra-all` jars on Maven Central."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from pathlib import Path
from typing import Any

import yaml

from streamrec import config
from streamrec.services import maven
from streamrec.services.proc import (
    ServiceError,
    find_pids,
    port_open,
    read_pid,
    spawn,
    stop_pid,
    wait_until,
)
from streamrec.services.secrets import password_file, read_password
from streamrec.services.settings import CassandraConf, CassandraSecurity, ServicesConf

MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
ADMIN_ROLE = "streamrec_admin"  # superuser role of a secured local node (password: secrets_dir/cassandra-admin)

LOGBACK = """\
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{log}</file>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""


def jvm_options() -> list[str]:
    lines = (config.CONF_DIR / "cassandra-jvm17.options").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def schema_statements(c: CassandraConf, keyspace: str | None = None) -> list[str]:
    """The CQL statements of the schema file with the keyspace substituted, comments removed."""
    path = Path(c.schema_file)
    if not path.is_absolute():
        path = config.REPO_ROOT / path
    text = "\n".join(ln.split("--", 1)[0] for ln in path.read_text().splitlines())
    text = text.replace("{keyspace}", keyspace or c.keyspace)
    return [s.strip() for s in text.split(";") if s.strip()]


def connect(hosts: list[str], port: int, keyspace: str | None = None, timeout_s: float = 10.0,
            security: CassandraSecurity | None = None, password: str | None = None) -> Any:
    """A cassandra-driver session (the caller shuts down `session.cluster`), with the credentials and TLS of
    `security` (default: the services profile's); `password` instead of the one `security` names."""
    from cassandra.cluster import Cluster
    from cassandra.policies import RoundRobinPolicy

    from streamrec.services.clients import cassandra_cluster_kwargs
    from streamrec.services.settings import services

    sec = security if security is not None else services().cassandra.security
    cluster = Cluster(hosts, port=port, connect_timeout=timeout_s, load_balancing_policy=RoundRobinPolicy(),
                      protocol_version=5, **cassandra_cluster_kwargs(sec, hosts, port, password))
    try:
        return cluster.connect(keyspace)
    except Exception:
        cluster.shutdown()
        raise


def apply_schema(hosts: list[str], port: int, c: CassandraConf, keyspace: str | None = None,
                 security: CassandraSecurity | None = None) -> None:
    session = connect(hosts, port, security=security)
    try:
        for stmt in schema_statements(c, keyspace):
            session.execute(stmt, timeout=60)
    finally:
        session.cluster.shutdown()


class CassandraService:
    name = "cassandra"

    def __init__(self, conf: ServicesConf) -> None:
        self.conf = conf
        self.c = conf.cassandra
        self.home = conf.services_path / "cassandra"
        self.pid_file = self.home / "cassandra.pid"
        self.log_file = self.home / "logs" / "cassandra.out"
        self.marker = f"-Dstreamrec.service=cassandra:{self.home}"
        self.sec = self.c.security
        # Secured profile: clients log in (PasswordAuthenticator) and/or speak TLS. The service itself logs in as an
        # admin role it makes at first start (replacing the default cassandra/cassandra superuser).
        self.auth = bool(self.sec.username)
        self.admin = dataclasses.replace(self.sec, username=ADMIN_ROLE, password_env="",
                                         password_file=str(password_file(conf.secrets_path, "cassandra-admin")))

    def cassandra_yaml(self) -> dict[str, Any]:
        c, h = self.c, self.home
        return {
            "cluster_name": "streamrec-local",
            "num_tokens": 1,
            "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
            "endpoint_snitch": "SimpleSnitch",
            "listen_address": c.host,
            "rpc_address": c.host,
            "storage_port": c.storage_port,
            "native_transport_port": c.native_port,
            "start_native_transport": True,
            "seed_provider": [{"class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                               "parameters": [{"seeds": f"{c.host}:{c.storage_port}"}]}],
            "data_file_directories": [str(h / "data" / "data")],
            "commitlog_directory": str(h / "data" / "commitlog"),
            "saved_caches_directory": str(h / "data" / "saved_caches"),
            "hints_directory": str(h / "data" / "hints"),
            "cdc_raw_directory": str(h / "data" / "cdc_raw"),
            "commitlog_sync": "periodic",
            "commitlog_sync_period": "10000ms",
            "auto_snapshot": False,
            "snapshot_on_duplicate_row_detection": False,
            "authenticator": "PasswordAuthenticator" if self.auth else "AllowAllAuthenticator",
            # Authentication only: any role that logs in may use any keyspace (the tests make their own).
            "authorizer": "AllowAllAuthorizer",
            "concurrent_reads": 8,
            "concurrent_writes": 16,
            "concurrent_counter_writes": 8,
            **({"client_encryption_options": {
                "enabled": True, "optional": False,  # TLS only: a plaintext client is refused
                "keystore": str(self.conf.secrets_path / "server.p12"), "store_type": "PKCS12",
                "keystore_password": read_password(self.conf.secrets_path, "keystore"),
                "require_client_auth": False,
                "accepted_protocols": ["TLSv1.2", "TLSv1.3"],
            }} if self.sec.tls else {}),
        }

    def _prepare(self) -> list[str]:
        (self.home / "conf").mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        yml = self.home / "conf" / "cassandra.yaml"
        yml.write_text(yaml.safe_dump(self.cassandra_yaml(), sort_keys=False))
        logback = self.home / "conf" / "logback.xml"
        logback.write_text(LOGBACK.format(log=self.home / "logs" / "system.log"))
        jars = maven.fetch(self.conf.state_path, "cassandra")
        return [
            self.conf.java, f"-Xms{self.c.heap}", f"-Xmx{self.c.heap}", *jvm_options(), *self.c.jvm_options.split(),
            f"-Dcassandra.config=file://{yml}", f"-Dcassandra.storagedir={self.home / 'data'}",
            f"-Dlogback.configurationFile={logback}", f"-Dcassandra.logdir={self.home / 'logs'}",
            # the default superuser exists at once (not 10 s later), so `up` can replace it straight away
            *(["-Dcassandra.superuser_setup_delay_ms=0"] if self.auth else []),
            self.marker, "-cp", str(jars / "*"), MAIN_CLASS,
        ]

    def pid(self) -> int | None:
        return read_pid(self.pid_file, self.marker)

    def healthy(self) -> bool:
        """CQL answers a query (the native port alone opens before the node can serve)."""
        if not port_open(self.c.host, self.c.native_port):
            return False
        try:
            session = connect([self.c.host], self.c.native_port, timeout_s=5,
                              security=self.admin if self.auth else self.sec)
        except Exception:
            return False
        try:
            return session.execute("SELECT release_version FROM system.local").one() is not None
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                session.cluster.shutdown()

    def status(self) -> str:
        pid = self.pid()
        if pid and self.healthy():
            return f"running (pid {pid}, {self.c.host}:{self.c.native_port})"
        if pid:
            return f"starting or unhealthy (pid {pid})"
        if self.healthy():
            return f"answering on {self.c.host}:{self.c.native_port} but not started by us"
        return "stopped"

    def up(self) -> str:
        pid = self.pid()
        if pid:
            try:
                wait_until(self.healthy, 5 if self.healthy() else 60, "Cassandra",
                           alive=lambda: self.pid() is not None)
                if self.auth:
                    self.ensure_roles()
                self.apply_schema()
                return f"already running (pid {pid})"
            except ServiceError:
                stop_pid(pid)
        if port_open(self.c.host, self.c.native_port) or port_open(self.c.host, self.c.storage_port):
            raise ServiceError(
                f"port {self.c.native_port} or {self.c.storage_port} on {self.c.host} is taken by a process this "
                "state dir did not start; stop it, or set STREAMREC_CASSANDRA_NATIVE_PORT / _STORAGE_PORT")
        argv = self._prepare()
        new_pid = spawn(argv, self.log_file, self.pid_file, nice=self.c.nice)
        if self.auth:
            wait_until(self.ensure_roles, self.c.start_timeout_s, "Cassandra roles",
                       alive=lambda: self.pid() is not None, log_file=self.log_file, interval_s=1.0)
        wait_until(self.healthy, self.c.start_timeout_s, "Cassandra", alive=lambda: self.pid() is not None,
                   log_file=self.log_file, interval_s=1.0)
        self.apply_schema()
        return f"started (pid {new_pid}, {self.c.host}:{self.c.native_port})"

    def apply_schema(self) -> None:
        apply_schema([self.c.host], self.c.native_port, self.c, security=self.admin if self.auth else self.sec)

    def _logs_in(self, sec: CassandraSecurity, password: str) -> bool:
        try:
            connect([self.c.host], self.c.native_port, timeout_s=5, security=sec, password=password).cluster.shutdown()
            return True
        except Exception:
            return False

    def ensure_roles(self) -> bool:
        """Secured profile, once the node answers: the admin role replaces the default superuser (whose login is
        switched off), and the clients' role gets the password the clients are configured with. False while the
        node cannot be reached yet (for `wait_until`)."""
        from cassandra import AuthenticationFailed
        from cassandra.cluster import NoHostAvailable

        from streamrec.services.clients import read_secret

        if not port_open(self.c.host, self.c.native_port):
            return False
        hosts, port = [self.c.host], self.c.native_port
        admin_pw = read_password(self.conf.secrets_path, "cassandra-admin")
        try:
            session = connect(hosts, port, timeout_s=5, security=self.admin)
        except NoHostAvailable as e:
            if not any(isinstance(err, AuthenticationFailed) for err in e.errors.values()):
                return False  # not serving yet
            default = dataclasses.replace(self.admin, username="cassandra")
            try:
                first = connect(hosts, port, timeout_s=5, security=default, password="cassandra")
            except NoHostAvailable:
                return False  # the default role is not there yet
            try:
                first.execute(f"CREATE ROLE IF NOT EXISTS {ADMIN_ROLE} WITH PASSWORD = %s AND SUPERUSER = true "
                              "AND LOGIN = true", (admin_pw,), timeout=30)
            finally:
                first.cluster.shutdown()
            session = connect(hosts, port, timeout_s=5, security=self.admin)
        try:
            session.execute("ALTER ROLE cassandra WITH PASSWORD = %s AND LOGIN = false AND SUPERUSER = false",
                            (secrets.token_urlsafe(24),), timeout=30)
            client_pw = read_secret(f"Cassandra role {self.sec.username!r}", self.sec.password_env,
                                    self.sec.password_file)
            if session.execute("SELECT role FROM system_auth.roles WHERE role = %s", (self.sec.username,)).one():
                if not self._logs_in(self.sec, client_pw):  # the clients' password changed: follow it
                    session.execute(f"ALTER ROLE {self.sec.username} WITH PASSWORD = %s", (client_pw,), timeout=30)
            else:
                session.execute(f"CREATE ROLE {self.sec.username} WITH PASSWORD = %s AND LOGIN = true",
                                (client_pw,), timeout=30)
        finally:
            session.cluster.shutdown()
        return True

    def down(self) -> str:
        pids = set(find_pids(self.marker))
        pid = self.pid()
        if pid:
            pids.add(pid)
        for p in sorted(pids):
            stop_pid(p, timeout_s=60)
        self.pid_file.unlink(missing_ok=True)
        return f"stopped {len(pids)} process(es)" if pids else "not running"
