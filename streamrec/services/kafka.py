"""A local single-node Apache Kafka broker in KRaft mode (broker + controller), from Maven Central jars."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import uuid
from pathlib import Path
from typing import Any

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
from streamrec.services.settings import KafkaSecurity, ServicesConf

MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
ADMIN_USER = "streamrec-broker"  # SCRAM user of the broker itself on a secured profile (secrets_dir/kafka-admin)

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = warn
logger.org.name = org.apache.kafka
logger.org.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
"""


def new_cluster_id() -> str:
    """A random KRaft cluster id: a UUID in unpadded URL-safe base64, never starting with "-" (kafka-storage's
    argument parser reads `-t -abc…` as a missing value and an unknown option: 1 start in 64 failed that way). Kafka's
    own `Uuid.randomUuid` rejects such ids for the same reason."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


class KafkaService:
    name = "kafka"

    def __init__(self, conf: ServicesConf) -> None:
        self.conf = conf
        self.k = conf.kafka
        self.home = conf.services_path / "kafka"
        self.pid_file = self.home / "kafka.pid"
        self.log_file = self.home / "logs" / "kafka.out"
        # Marks our JVM's command line, so `down` finds strays of this state dir and nothing else.
        self.marker = f"-Dstreamrec.service=kafka:{self.home}"
        self.sec = self.k.security
        # Secured profile: clients on SASL_SSL (SCRAM) only; the broker itself logs in as ADMIN_USER (inter-broker)
        # and reaches its controller over mutual TLS.
        self.admin = dataclasses.replace(self.sec, username=ADMIN_USER, password_env="",
                                         password_file=str(password_file(conf.secrets_path, "kafka-admin")))

    # -- config ---------------------------------------------------------------------------------------------
    def server_properties(self) -> str:
        k = self.k
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{k.host}:{k.controller_port}",
            "listeners": f"PLAINTEXT://{k.host}:{k.port},CONTROLLER://{k.host}:{k.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{k.host}:{k.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": str(k.num_partitions),
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
            # One node: every internal topic with replication 1, few partitions (fast first use).
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "transaction.max.timeout.ms": str(k.transaction_max_timeout_ms),
            # Size-based retention only: records carry *event* timestamps (possibly old: replays, simulations,
            # MovieLens), and time-based retention would delete them minutes after they were written.
            "log.retention.ms": "-1",
            "log.retention.bytes": str(1024 * 1024 * 1024),
            "log.segment.bytes": str(64 * 1024 * 1024),
            # Segments roll by size only: the time-based roll compares the clock with the first record's (event)
            # timestamp, so old event times rolled a new segment on every append (and let compaction eat history).
            "log.roll.ms": str(100 * 365 * 86_400_000),
        }
        if self.sec.secured:
            props.update(self.security_properties())
        return "".join(f"{key}={val}\n" for key, val in props.items())

    def security_properties(self) -> dict[str, str]:
        """The broker's listeners for a secured profile: SASL_SSL with SCRAM for clients and the broker itself, the
        KRaft controller on SSL with client certificates required (nothing reaches it without the CA's key)."""
        k, d = self.k, self.conf.secrets_path
        if self.sec.protocol != "SASL_SSL":
            raise ServiceError(f"the local broker secures clients with SASL_SSL only, not {self.sec.protocol!r}")
        mech = self.sec.sasl_mechanism
        store_pw = read_password(d, "keystore")
        jaas = ('org.apache.kafka.common.security.scram.ScramLoginModule required '
                f'username="{ADMIN_USER}" password="{read_password(d, "kafka-admin")}";')
        return {
            "listeners": f"SASL_SSL://{k.host}:{k.port},CONTROLLER://{k.host}:{k.controller_port}",
            "advertised.listeners": f"SASL_SSL://{k.host}:{k.port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            "sasl.enabled.mechanisms": mech,
            "sasl.mechanism.inter.broker.protocol": mech,
            f"listener.name.sasl_ssl.{mech.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(d / "server.p12"),
            "ssl.keystore.password": store_pw,
            "ssl.key.password": store_pw,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(d / "ca.pem"),
            "listener.name.controller.ssl.client.auth": "required",
            "ssl.enabled.protocols": "TLSv1.2,TLSv1.3",
        }

    def client_kwargs(self, security: KafkaSecurity | None = None) -> dict[str, Any]:
        """kafka-python arguments to reach this broker (as the admin user on a secured profile)."""
        from streamrec.services.clients import kafka_security_kwargs

        b = f"{self.k.host}:{self.k.port}"
        return {"bootstrap_servers": b, **kafka_security_kwargs(security or self.admin, b)}

    def _jvm(self, main: str, *args: str) -> list[str]:
        jars = maven.fetch(self.conf.state_path, "kafka")
        return [
            self.conf.java, f"-Xmx{self.k.heap}", f"-Xms{self.k.heap}", "-XX:+UseG1GC", *self.k.jvm_options.split(),
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.home / 'conf' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.home / 'logs'}", self.marker,
            "-cp", str(jars / "*"), main, *args,
        ]

    def _prepare(self) -> Path:
        (self.home / "conf").mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        props = self.home / "conf" / "server.properties"
        props.touch(mode=0o600)  # holds the keystore and admin passwords on a secured profile
        props.write_text(self.server_properties())
        (self.home / "conf" / "log4j2.properties").write_text(
            LOG4J2.format(log=self.home / "logs" / "server.log"))
        if not (self.home / "data" / "meta.properties").exists():
            import subprocess

            scram: list[str] = []
            if self.sec.secured:  # the broker's own SCRAM user exists from the first start (KRaft bootstrap)
                pw = read_password(self.conf.secrets_path, "kafka-admin")
                scram = ["--add-scram", f"{self.sec.sasl_mechanism}=[name={ADMIN_USER},password={pw}]"]
            proc = subprocess.run(self._jvm(STORAGE_TOOL, "format", "-t", new_cluster_id(), "-c", str(props),
                                            *scram), capture_output=True, text=True)
            if proc.returncode != 0:
                raise ServiceError(f"Kafka storage format failed:\n{proc.stdout}\n{proc.stderr}")
        return props

    # -- lifecycle ------------------------------------------------------------------------------------------
    def pid(self) -> int | None:
        return read_pid(self.pid_file, self.marker)

    def healthy(self) -> bool:
        """The broker answers a metadata request (not merely an open port)."""
        if not port_open(self.k.host, self.k.port):
            return False
        from kafka import KafkaAdminClient

        try:
            admin = KafkaAdminClient(**self.client_kwargs(), request_timeout_ms=5000, client_id="streamrec-health")
        except Exception:
            return False
        try:
            return bool(admin.describe_cluster().get("brokers"))
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                admin.close()

    def status(self) -> str:
        pid = self.pid()
        if pid and self.healthy():
            return f"running (pid {pid}, {self.k.host}:{self.k.port})"
        if pid:
            return f"starting or unhealthy (pid {pid})"
        if self.healthy():
            return f"answering on {self.k.host}:{self.k.port} but not started by us"
        return "stopped"

    def up(self) -> str:
        pid = self.pid()
        if pid and self.healthy():
            self.create_topics()
            return f"already running (pid {pid})"
        if pid:  # half-started or hung: wait a little, then restart it
            try:
                wait_until(self.healthy, 20, "Kafka", alive=lambda: self.pid() is not None)
                self.create_topics()
                return f"already running (pid {pid})"
            except ServiceError:
                stop_pid(pid)
        if port_open(self.k.host, self.k.port) or port_open(self.k.host, self.k.controller_port):
            raise ServiceError(
                f"port {self.k.port} or {self.k.controller_port} on {self.k.host} is taken by a process this state "
                "dir did not start; stop it, or set STREAMREC_KAFKA_PORT / STREAMREC_KAFKA_CONTROLLER_PORT")
        props = self._prepare()
        new_pid = spawn(self._jvm(MAIN_CLASS, str(props)), self.log_file, self.pid_file, nice=self.k.nice)
        wait_until(self.healthy, self.k.start_timeout_s, "Kafka", alive=lambda: self.pid() is not None,
                   log_file=self.home / "logs" / "server.log")
        self.create_topics()
        return f"started (pid {new_pid}, {self.k.host}:{self.k.port})"

    def down(self) -> str:
        pids = set(find_pids(self.marker))
        pid = self.pid()
        if pid:
            pids.add(pid)
        for p in sorted(pids):
            stop_pid(p)
        self.pid_file.unlink(missing_ok=True)
        return f"stopped {len(pids)} process(es)" if pids else "not running"

    def create_topics(self) -> None:
        if self.sec.secured:
            self.ensure_client_user()
        ensure_topics(f"{self.k.host}:{self.k.port}", self.k.topics, self.k.num_partitions, self.k.compacted_topics,
                      client=self.client_kwargs())

    def ensure_client_user(self) -> None:
        """The clients' SCRAM user with the password the clients are configured with (made or updated)."""
        from kafka import KafkaAdminClient
        from kafka.admin import UserScramCredentialUpsertion

        from streamrec.services.clients import read_secret

        pw = read_secret(f"Kafka user {self.sec.username!r}", self.sec.password_env, self.sec.password_file)
        admin = KafkaAdminClient(**self.client_kwargs(), client_id="streamrec-admin")
        try:
            errors = admin.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(self.sec.username, self.sec.sasl_mechanism, pw)])
        finally:
            admin.close()
        if any(errors.values()):
            raise ServiceError(f"Kafka: could not set the SCRAM credentials of {self.sec.username!r}: {errors}")


def ensure_topics(bootstrap: str, names: tuple[str, ...] | list[str], partitions: int,
                  compacted: tuple[str, ...] | list[str] = (), client: dict[str, Any] | None = None) -> None:
    """Create the topics that do not exist yet (idempotent); those in `compacted` keep the latest record per key.
    `client`: kafka-python arguments (default: the profile's, `clients.kafka_kwargs`)."""
    if not names:
        return
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from streamrec.services.clients import kafka_kwargs

    admin = KafkaAdminClient(**(client or kafka_kwargs(bootstrap)), client_id="streamrec-admin")
    try:
        existing = set(admin.list_topics())
        todo = [NewTopic(n, num_partitions=partitions, replication_factor=1,
                         topic_configs={"cleanup.policy": "compact"} if n in compacted else {})
                for n in names if n not in existing]
        if todo:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(todo)
    finally:
        admin.close()
