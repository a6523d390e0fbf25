"""Service endpoints and local-service settings, from `conf/services.yaml` (+ STREAMREC_* env overrides).

`STREAMREC_SERVICES_CONF` names another profile in `conf/` (e.g. `secure.yaml`: SASL/TLS Kafka, authenticated TLS
Cassandra); `streamrec --services FILE` sets it for the command and every process it starts (the job, its workers)."""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from streamrec import config


@dataclass(frozen=True)
class KafkaSecurity:
    """How clients authenticate to Kafka. Secrets never come from YAML: the password is read from the environment
    variable `password_env`, else from the file `password_file` (its whole content, no trailing newline)."""

    protocol: str = "PLAINTEXT"  # PLAINTEXT or SASL_SSL
    sasl_mechanism: str = "SCRAM-SHA-512"  # with SASL_SSL
    username: str = ""  # SASL user of every streamrec client (the job, the CLI, the bench)
    password_env: str = "STREAMREC_KAFKA_PASSWORD"  # environment variable holding the password ...
    password_file: str = ""  # ... else this file (relative paths: from the repo root)
    ca_file: str = ""  # PEM file of the CA(s) the clients trust; empty: the system's

    @property
    def secured(self) -> bool:
        return self.protocol != "PLAINTEXT"


@dataclass(frozen=True)
class CassandraSecurity:
    """How clients authenticate to Cassandra (PasswordAuthenticator) and whether they speak TLS. The password as
    for Kafka: `password_env`, else `password_file`."""

    tls: bool = False  # client-to-node TLS, verifying the node's certificate and host name
    username: str = ""  # empty: no credentials (AllowAllAuthenticator)
    password_env: str = "STREAMREC_CASSANDRA_PASSWORD"
    password_file: str = ""
    ca_file: str = ""  # PEM file of the CA(s) the clients trust; empty: the system's

    @property
    def secured(self) -> bool:
        return self.tls or bool(self.username)


def _check_nice(section: str, nice: int) -> None:
    """A local service's `nice` (`spawn` lowers its priority by it): 0..19."""
    if not 0 <= nice <= 19:
        raise ValueError(f"{section}.nice must be 0..19 (STREAMREC_{section.upper()}_NICE), got {nice}")


@dataclass(frozen=True)
class KafkaConf:
    managed: bool = True  # start/stop a local broker
    bootstrap: str = "127.0.0.1:9092"  # clients' bootstrap servers
    host: str = "127.0.0.1"  # local broker bind address
    port: int = 9092  # PLAINTEXT listener
    controller_port: int = 9093  # KRaft controller listener
    heap: str = "512m"  # -Xmx of the local broker
    jvm_options: str = "-XX:TieredStopAtLevel=1"  # extra JVM options of the local broker, space-separated ("": none)
    nice: int = 10  # the local broker's CPU priority below the job's (0: as `services up`'s; conf/services.yaml)
    start_timeout_s: int = 90  # how long `up` waits for the broker to answer
    num_partitions: int = 2  # partitions of topics created by `up`
    topics: tuple[str, ...] = ()  # topics created by `up`
    compacted_topics: tuple[str, ...] = ()  # of those, the ones created with cleanup.policy=compact
    transaction_max_timeout_ms: int = 900000  # broker's transaction.max.timeout.ms
    security: KafkaSecurity = KafkaSecurity()

    def __post_init__(self) -> None:
        _check_nice("kafka", self.nice)


@dataclass(frozen=True)
class CassandraConf:
    managed: bool = True  # start/stop a local node
    hosts: str = "127.0.0.1"  # comma-separated contact points
    host: str = "127.0.0.1"  # local node bind address
    native_port: int = 9042  # CQL port
    storage_port: int = 7000  # inter-node port (bound even on one node)
    heap: str = "1G"  # -Xmx and -Xms of the local node
    jvm_options: str = "-XX:TieredStopAtLevel=1"  # extra JVM options of the local node, besides
    # conf/cassandra-jvm17.options (its fixed flags), space-separated ("": none)
    nice: int = 10  # the local node's CPU priority below the job's (0: as `services up`'s; conf/services.yaml)
    start_timeout_s: int = 180  # how long `up` waits for CQL to answer
    keyspace: str = "streamrec"  # keyspace the job writes
    schema_file: str = "conf/cassandra-schema.cql"  # CQL applied by `up`, {keyspace} substituted
    security: CassandraSecurity = CassandraSecurity()

    def __post_init__(self) -> None:
        _check_nice("cassandra", self.nice)

    @property
    def contact_points(self) -> list[str]:
        return [h.strip() for h in self.hosts.split(",") if h.strip()]


@dataclass(frozen=True)
class FlinkConf:
    managed: bool = True  # `up --flink` starts a local standalone session cluster
    rest_address: str = "127.0.0.1"  # JobManager REST address
    rest_port: int = 8081  # JobManager REST port
    rpc_port: int = 6123  # JobManager RPC port
    taskmanagers: int = 1  # TaskManagers start-cluster.sh starts on this machine (one per line of conf/workers)
    taskmanager_slots: int = 2  # slots of each local TaskManager
    taskmanager_memory: str = "2048m"  # taskmanager.memory.process.size
    taskmanager_metaspace: str = "512m"  # taskmanager.memory.jvm-metaspace.size (Flink's 256m: see conf/services.yaml)
    taskmanager_jvm_options: str = "-XX:TieredStopAtLevel=1"  # env.java.opts.taskmanager (conf/services.yaml)
    jobmanager_memory: str = "1024m"  # jobmanager.memory.process.size
    start_timeout_s: int = 60  # how long `up --flink` waits for the REST API


@dataclass(frozen=True)
class ServicesConf:
    state_dir: str = ".state"  # jars, logs and data of local services (relative to the repo root)
    # Data, logs and config of the local services; empty: state_dir. A second profile (conf/secure.yaml) runs its own
    # services here, beside the default ones, with the same jars.
    services_dir: str = ""
    java_home: str = ""  # Java 17 home; empty: $JAVA_HOME, else `java` on PATH
    # Keys, certificates and passwords of the local services (`streamrec services certs`, `make certs`); used only
    # when a profile secures them (conf/secure.yaml). Git-ignored, never in the repo.
    secrets_dir: str = ".state/secrets"
    kafka: KafkaConf = KafkaConf()
    cassandra: CassandraConf = CassandraConf()
    flink: FlinkConf = FlinkConf()

    @property
    def state_path(self) -> Path:
        p = Path(self.state_dir)
        return p if p.is_absolute() else config.REPO_ROOT / p

    @property
    def services_path(self) -> Path:
        if not self.services_dir:
            return self.state_path
        p = Path(self.services_dir)
        return p if p.is_absolute() else config.REPO_ROOT / p

    @property
    def secrets_path(self) -> Path:
        p = Path(self.secrets_dir)
        return p if p.is_absolute() else config.REPO_ROOT / p

    @property
    def java(self) -> str:
        """Path of the `java` executable to run the services with."""
        home = self.java_home or os.environ.get("JAVA_HOME", "")
        if home:
            return str(Path(home) / "bin" / "java")
        found = shutil.which("java")
        if not found:
            raise RuntimeError("no Java found: install Java 17 or set STREAMREC_JAVA_HOME")
        return found


PROFILE_ENV = "STREAMREC_SERVICES_CONF"


def profile() -> str:
    """The services profile in use: `$STREAMREC_SERVICES_CONF`, default `services.yaml` (a file in conf/ or a path)."""
    return os.environ.get(PROFILE_ENV) or "services.yaml"


@functools.cache
def services() -> ServicesConf:
    """The services config (cached: env overrides are read once per process)."""
    return config.load(ServicesConf, config.CONF_DIR / profile())  # an absolute path stays itself


def kafka_bootstrap() -> str:
    return services().kafka.bootstrap


def cassandra_hosts() -> list[str]:
    return services().cassandra.contact_points
