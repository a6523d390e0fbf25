"""The stream job's configuration (`conf/local.yaml`): frozen dataclasses, env overrides STREAMREC_JOB_*."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streamrec import config


@dataclass(frozen=True)
class Topics:
    events: str = "events"  # behaviour events in
    items: str = "items"  # item metadata in (catalogue updates: availability, categories)
    control: str = "control"  # control records in (model hot-swap, erase requests)
    recommendations: str = "recommendations"  # top-K lists out
    fraud_flags: str = "fraud-flags"  # fraud flags out
    dead_letters: str = "dead-letters"  # rejected input out
    deletions: str = "deletions"  # erasure records out
    cf: str = ""  # the job's own streaming-CF feedback topic (compacted; "": <consumer_group>-cf), made at start


@dataclass(frozen=True)
class Watermark:
    out_of_orderness_ms: int = 5000  # bounded out-of-orderness of event time
    idleness_ms: int = 10000  # idle partitions stop holding the watermark after this
    control_idleness_ms: int = 1000  # ... on the control-plane sources (items, control, the CF topic)
    interval_ms: int = 1000  # pipeline.auto-watermark-interval: how often sources emit watermarks


@dataclass(frozen=True)
class Checkpoint:
    interval_ms: int = 5000  # checkpoint interval
    mode: str = "EXACTLY_ONCE"  # EXACTLY_ONCE | AT_LEAST_ONCE
    dir: str = ".state/checkpoints"  # checkpoint storage directory
    savepoint_dir: str = ".state/savepoints"  # where `streamrec savepoint` writes unless told otherwise
    min_pause_ms: int = 1000  # minimum pause between checkpoints
    timeout_ms: int = 120000  # checkpoint timeout
    retain_on_cancel: bool = True  # keep the latest checkpoint when the job stops


@dataclass(frozen=True)
class Restart:
    attempts: int = 3  # fixed-delay restart attempts
    delay_ms: int = 2000  # delay between attempts


@dataclass(frozen=True)
class StateConf:
    backend: str = "hashmap"  # hashmap | rocksdb
    ttl_days: float = 30.0  # Flink state TTL (processing time) backstop


@dataclass(frozen=True)
class KafkaSinkConf:
    delivery: str = "EXACTLY_ONCE"  # NONE | AT_LEAST_ONCE | EXACTLY_ONCE
    transactional_id_prefix: str = "streamrec"  # unique per job on a cluster
    transaction_timeout_ms: int = 600000  # <= broker transaction.max.timeout.ms
    linger_ms: int = 50  # the producers' linger.ms: how long a batch waits for more records (conf/local.yaml)
    batch_size: int = 262144  # the producers' batch.size: bytes per partition batch


@dataclass(frozen=True)
class CassandraSinkConf:
    enabled: bool = True  # write to Cassandra at all
    max_in_flight: int = 128  # bounded async writes (backpressure beyond)
    retries: int = 60  # retries per write before failing the job
    backoff_ms: int = 100  # first retry delay, doubling ...
    max_backoff_ms: int = 2000  # ... up to this
    consistency: str = "LOCAL_QUORUM"  # write consistency level
    request_timeout_s: float = 10.0  # per-write timeout
    batch_max_rows: int = 10  # statements per UNLOGGED batch (each one partition)
    batch_max_bytes: int = 4096  # estimated bytes per batch (Cassandra warns above 5 KiB)
    linger_ms: int = 5  # a batch that is not full is sent this long after its first row
    coalesce_ms: int = 1000  # a list row is held this long (at most) for a newer list of its user (0: never)
    coalesce_max_users: int = 10000  # users whose rows are held at once (one more sends them all)


@dataclass(frozen=True)
class Batching:
    shards: int = 8  # user (and item) shards: the unit of batching and of parallelism (>= the job's parallelism)
    max_events: int = 1024  # a shard's batch is sent to the Python operator when it holds this many events...
    max_delay_ms: int = 50  # ... or when its oldest event has waited this long (processing time)
    key_table: str = "balanced"  # shard keys: balanced | legacy (the table before 2026-12-03; its state needs it)
    cf_max_delay_ms: int = 200  # the CF topic's records reach the Python operators in batches (of <= max_events)


@dataclass(frozen=True)
class ContentConf:
    embed_items: str = "auto"  # embed item text in the stream: auto (the model has a content part) | true | false
    encoder_dir: str = ""  # sentence-transformers directory ("": conf/encoder.yaml `dir`)
    int8: bool = True  # the encoder's int8 ONNX graph (else fp32)
    batch_delay_ms: int = 200  # processing time a queued text waits for others to share its encoder call
    max_batch: int = 32  # texts per encoder call


@dataclass(frozen=True)
class JobConf:
    job_name: str = "streamrec"  # Flink job name
    parallelism: int = 1  # operator parallelism
    max_parallelism: int = 128  # pipeline.max-parallelism: key groups (fixed: the shard keys are chosen from them)
    execution_mode: str = "process"  # python.execution-mode
    model_store: str = ".state/models"  # where `streamrec model publish` copies artefacts (workers read them here)
    python_workers: str = "auto"  # minicluster: loopback (one Python process) | process (one per operator) | auto
    jvm_options: str = "-XX:TieredStopAtLevel=1"  # minicluster: the job's JVM flags (before the user's JVM_ARGS)
    rest_port: int = 0  # minicluster: Flink's REST API / web UI on this port (rest.bind-port); 0: any free port
    bundle_size: int = 1000  # python.fn-execution.bundle.size
    bundle_time_ms: int = 1000  # python.fn-execution.bundle.time
    state_cache_size: int = 100_000  # python.state.cache-size: keyed states cached per Python worker
    map_state_cache_size: int = 20_000  # python.map-state.read-cache-size: entries cached per MapState and key
    python_metrics: bool = False  # python.metric.enabled: Flink metrics from the Python operators
    worker_patches: bool = True  # jobs/worker_patches.py: no per-bundle waits in process-mode Python workers
    input_flush_ms: int = 20  # process mode: input waiting for the Python worker is sent when a record arrives this
    #   long after the last send (0: every record; -1: at 1 MB or the bundle's end, as released); jobs/java
    object_reuse: bool = True  # pipeline.object-reuse: JVM operators pass records without copying
    gc_freeze: bool = True  # jobs/heap.py: the Python heap at operator open() hidden from the cyclic collector
    gc_young_threshold: int = 100_000  # jobs/heap.py: the collector's youngest-generation threshold (0: CPython's)
    buffer_timeout_ms: int = 100  # execution.buffer-timeout.interval: network buffers flushed at least this often
    model_dir: str = "artifacts/model"  # model artefact directory
    use_int8: bool = False  # score with the int8 model
    scorer_threads: int = 1  # onnxruntime intra-op threads
    consumer_group: str = "streamrec-job"  # Kafka consumer group
    start_from: str = "earliest"  # earliest | latest | committed
    bounded: bool = False  # stop at the end of the input present at start
    check_endpoints_s: float = 10.0  # first log in to Kafka (and Cassandra) as the job will, this long at most; 0: off
    topics: Topics = field(default_factory=Topics)
    batching: Batching = field(default_factory=Batching)
    watermark: Watermark = field(default_factory=Watermark)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    restart: Restart = field(default_factory=Restart)
    state: StateConf = field(default_factory=StateConf)
    kafka_sink: KafkaSinkConf = field(default_factory=KafkaSinkConf)
    cassandra_sink: CassandraSinkConf = field(default_factory=CassandraSinkConf)
    content: ContentConf = field(default_factory=ContentConf)

    def worker_mode(self) -> str:
        """The minicluster's Python worker mode: `python_workers`, with auto = loopback at parallelism 1 (one
        process, fastest start-up) and process above (one worker process per operator instance: more than one core)."""
        if self.python_workers == "auto":
            return "loopback" if self.parallelism <= 1 else "process"
        return self.python_workers

    def patch_workers(self) -> bool:
        """Whether the Python workers get `jobs/worker_patches.py` (process mode only: thread mode has no bundles)."""
        return self.worker_patches and self.execution_mode == "process"

    def cf_topic(self) -> str:
        """The topic the item operator publishes CF neighbours to and the user operators read them back from."""
        return self.topics.cf or f"{self.consumer_group}-cf"

    def describe(self) -> str:
        """What decides the job's latency, in one line: execution mode, Python bundles (process mode only), Kafka
        sink delivery, shards and batch bounds (the demo summary and the bench report name the profile so)."""
        shards = f"{self.batching.shards} shard" + ("s" if self.batching.shards != 1 else "")
        return (f"{self.execution_mode} mode"
                + (f", Python bundles {self.bundle_time_ms} ms" if self.execution_mode == "process" else "")
                + f", Kafka sink {self.kafka_sink.delivery}, {shards}, batches of <= "
                f"{self.batching.max_events} events or {self.batching.max_delay_ms} ms")  # fmt: skip

    def path(self, p: str) -> Path:
        """A config path made absolute against the repo root."""
        q = Path(p)
        return q if q.is_absolute() else config.REPO_ROOT / q


def load_job_conf(path: str | Path = "local.yaml") -> JobConf:
    return config.load(JobConf, path, prefix="STREAMREC_JOB")
