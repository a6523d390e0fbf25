"""The streamrec job: Kafka events → parse (dead letters) → key_by(user) → user operator (ONNX scoring, fraud)
→ recommendations / fraud flags to Kafka and Cassandra; item events → key_by(item) → item operator (shilling).

    events ─► parse ─┬─► key_by(user) ─► user ─┬─► recommendations ─► Kafka, Cassandra
                     │                          ├─► fraud flags ───────► Kafka, Cassandra ◄─ item ◄─ key_by(item) ◄┐
                     │                          ├─► deletions ─────────► Kafka, Cassandra                        │
                     │                          └─► item events ───────────────────────────────────────────────────┘
                     └─► dead letters ─► Kafka
    items ─► parse ─► key_by(item) ─► embed-items ─┐
    control ─► parse ──────────────────────────────┼─► broadcast ─► user (model, catalogue, embeddings, CF)
    CF topic ◄─ item (streaming CF) … ─► parse ─────┘

Run on the minicluster: `python -m jobs.recommend --conf conf/local.yaml` (what `streamrec run` does); on a cluster:
`flink run -py jobs/recommend.py ...` (what `streamrec submit` does).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from jobs.runtime import python_config


def keyed_kafka_sink(job: Any, bootstrap: str, topic: str, wall_clock: bool = False) -> Any:
    """KafkaSink writing "KEY\nVALUE" strings as keyed records and "KEY\n" as tombstones (jobs/java); record times
    are event times, or with `wall_clock` the producer's send times."""
    from pyflink.java_gateway import get_gateway

    builder = kafka_sink_builder(job, bootstrap, topic)
    # NOTE: set on the Java builder directly: PyFlink's set_record_serializer only accepts its own builder's schemas.
    builder._j_builder.setRecordSerializer(get_gateway().jvm.streamrec.flink.KeyedStringSerializer(topic, wall_clock))
    return builder.build()


def kafka_security(builder: Any) -> Any:
    """The services profile's Kafka security on a KafkaSource/KafkaSink builder (nothing for PLAINTEXT). The password
    stays out of the graph: the properties refer to it through a Kafka config provider (streamrec.services.clients)."""
    from streamrec.services.clients import kafka_java_properties
    from streamrec.services.settings import services

    for key, value in kafka_java_properties(services().kafka.security).items():
        builder = builder.set_property(key, value)
    return builder


def kafka_source(job: Any, bootstrap: str, topic: str) -> Any:
    from pyflink.common.serialization import ByteArraySchema
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSource

    start = {
        "earliest": KafkaOffsetsInitializer.earliest(),
        "latest": KafkaOffsetsInitializer.latest(),
        "committed": KafkaOffsetsInitializer.committed_offsets(),
    }[job.start_from]
    builder = (KafkaSource.builder().set_bootstrap_servers(bootstrap).set_topics(topic)
               .set_group_id(job.consumer_group).set_starting_offsets(start)
               # Raw bytes: the validator must see invalid UTF-8 as such (a string schema would replace it with
               # U+FFFD and let a corrupt message through as a valid event).
               .set_value_only_deserializer(ByteArraySchema())
               .set_property("isolation.level", "read_committed")
               .set_property("commit.offsets.on.checkpoint", "true"))
    if job.bounded:
        builder = builder.set_bounded(KafkaOffsetsInitializer.latest())
    return kafka_security(builder).build()


def kafka_sink_builder(job: Any, bootstrap: str, topic: str) -> Any:
    from pyflink.datastream.connectors.base import DeliveryGuarantee
    from pyflink.datastream.connectors.kafka import KafkaSink

    builder = (KafkaSink.builder().set_bootstrap_servers(bootstrap)
               .set_delivery_guarantee(DeliveryGuarantee[job.kafka_sink.delivery])
               .set_property("linger.ms", str(job.kafka_sink.linger_ms))
               .set_property("batch.size", str(job.kafka_sink.batch_size)))
    if job.kafka_sink.delivery == "EXACTLY_ONCE":
        builder = (builder.set_transactional_id_prefix(f"{job.kafka_sink.transactional_id_prefix}-{topic}")
                   .set_property("transaction.timeout.ms", str(job.kafka_sink.transaction_timeout_ms)))
    return kafka_security(builder)


def kafka_sink(job: Any, bootstrap: str, topic: str) -> Any:
    from pyflink.common.serialization import SimpleStringSchema
    from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema

    return kafka_sink_builder(job, bootstrap, topic).set_record_serializer(
        KafkaRecordSerializationSchema.builder().set_topic(topic)
        .set_value_serialization_schema(SimpleStringSchema()).build()).build()


def cassandra_sink(job: Any, hosts: list[str], port: int, keyspace: str, security: Any) -> Any:
    """The job's Cassandra sink (`jobs/java/CassandraSink.java`): the rows of the records the Kafka sinks get (JSON,
    or the recommendations topic's "KEY\nJSON"), written from the JVM."""
    import dataclasses
    import json

    from pyflink.datastream.connectors import Sink
    from pyflink.java_gateway import get_gateway

    from streamrec.services.clients import cassandra_java_settings

    conf = {**dataclasses.asdict(job.cassandra_sink), "hosts": hosts, "port": port, "keyspace": keyspace,
            **(cassandra_java_settings(security) if security is not None else {})}  # fmt: skip
    return Sink(get_gateway().jvm.streamrec.flink.CassandraSink(json.dumps(conf)))


def flink_configuration(job: Any) -> Any:
    """Job-level Flink settings from `conf/local.yaml` (checkpointing, restarts, state backend)."""
    conf = python_config(job.execution_mode)
    c = job.checkpoint
    conf.set_string("execution.checkpointing.interval", f"{c.interval_ms} ms")
    conf.set_string("execution.checkpointing.mode", c.mode)
    conf.set_string("execution.checkpointing.dir", job.path(c.dir).as_uri())
    conf.set_string("execution.checkpointing.min-pause", f"{c.min_pause_ms} ms")
    conf.set_string("execution.checkpointing.timeout", f"{c.timeout_ms} ms")
    conf.set_string("execution.checkpointing.externalized-checkpoint-retention",
                    "RETAIN_ON_CANCELLATION" if c.retain_on_cancel else "DELETE_ON_CANCELLATION")
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", str(job.restart.attempts))
    conf.set_string("restart-strategy.fixed-delay.delay", f"{job.restart.delay_ms} ms")
    conf.set_string("state.backend.type", job.state.backend)
    conf.set_string("pipeline.name", job.job_name)
    conf.set_string("pipeline.max-parallelism", str(job.max_parallelism))
    conf.set_string("python.fn-execution.bundle.size", str(job.bundle_size))
    conf.set_string("python.fn-execution.bundle.time", str(job.bundle_time_ms))
    conf.set_string("pipeline.auto-watermark-interval", f"{job.watermark.interval_ms} ms")
    conf.set_string("python.state.cache-size", str(job.state_cache_size))
    conf.set_string("python.map-state.read-cache-size", str(job.map_state_cache_size))
    conf.set_string("python.metric.enabled", str(job.python_metrics).lower())
    conf.set_string("pipeline.object-reuse", str(job.object_reuse).lower())
    conf.set_string("execution.buffer-timeout.interval", f"{job.buffer_timeout_ms} ms")
    if job.rest_port:  # the minicluster's REST endpoint (a cluster's own config decides its port: left alone)
        conf.set_string("rest.bind-port", str(job.rest_port))
    return conf


def shard_keys(job: Any) -> list[int]:
    """The Flink keys of the job's shards (`jobs/java/ShardKeys.java`: spread over the key groups)."""
    return _key_table(job, legacy=job.batching.key_table == "legacy")


def _key_table(job: Any, legacy: bool) -> list[int]:
    from pyflink.java_gateway import get_gateway

    return list(get_gateway().jvm.streamrec.flink.ShardKeys.table(job.batching.shards, job.max_parallelism, legacy))


def batch_cf(raw: Any, job: Any) -> Any:
    """The CF topic's raw records → Row(0, batch frame) (`ShardBatcher.single`: at most `batching.max_events`
    records or `batching.cf_max_delay_ms`), so ParseCf and the broadcast to the user operators run once per batch."""
    from pyflink.datastream.data_stream import DataStream
    from pyflink.java_gateway import get_gateway

    b = job.batching
    return DataStream(get_gateway().jvm.streamrec.flink.ShardBatcher.single(
        raw._j_data_stream, 0, b.max_events, b.cf_max_delay_ms))


def split(stream: Any) -> Any:
    """One record per output again (the Python operators emit one joined string per batch), in the JVM."""
    from pyflink.datastream.data_stream import DataStream
    from pyflink.java_gateway import get_gateway

    return DataStream(get_gateway().jvm.streamrec.flink.BatchSplitter.split(stream._j_data_stream))


def side_output(stream: Any, tag: Any) -> Any:
    """The side output `tag` of a Python operator, as the JVM stream it is. NOTE: PyFlink's `get_side_output`
    appends a Python identity map (`map(lambda i: i)`) to every side output: one more Python call per record (in
    thread mode one more call holding the interpreter's lock, on the producing operator's thread). Our side outputs'
    types (strings, rows of int and bytes) are the same on both sides, so the map does nothing."""
    from pyflink.datastream.data_stream import DataStream

    return DataStream(stream._j_data_stream.getSideOutput(tag.get_java_output_tag()))


def keyed(stream: Any, value_type: Any) -> Any:
    """A stream of Row(shard key, value) keyed by its key in the JVM, as a PyFlink KeyedStream of `value_type` (what
    `DataStream.key_by` makes, without its Python key-selector operator)."""
    from pyflink.common import Types
    from pyflink.datastream.data_stream import KeyedStream
    from pyflink.java_gateway import get_gateway

    j_keyed = stream._j_data_stream.keyBy(get_gateway().jvm.KeyByKeySelector(),
                                          Types.ROW([Types.INT()]).get_java_type_info())  # fmt: skip
    return KeyedStream(j_keyed, value_type, stream)


def batch_by_user(raw: Any, job: Any, keys: list[int]) -> Any:
    """Raw events → Row(shard key, batch frame), each batch one user shard's (`jobs/java/ShardBatcher.java`)."""
    from pyflink.datastream.data_stream import DataStream
    from pyflink.java_gateway import get_gateway

    gw = get_gateway()
    def j_ints(values: list[int]) -> Any:
        arr = gw.new_array(gw.jvm.int, len(values))
        for i, v in enumerate(values):
            arr[i] = v
        return arr

    b = job.batching
    return DataStream(gw.jvm.streamrec.flink.ShardBatcher.byShard(
        raw._j_data_stream, j_ints(keys), j_ints(_key_table(job, legacy=True)), b.max_events, b.max_delay_ms))


class ContentError(RuntimeError):
    """The job's item-text encoder is missing or is not the one the model's content part was fitted with."""


def content_encoder(job: Any) -> tuple[str, str, int, str] | None:
    """The encoder `EmbedItems` runs (encoder directory, ONNX cache, tokens per text, weights sha256), checked here on
    the client before anything is submitted: its weights against conf/encoder.yaml (the pinned encoder, unless
    `content.encoder_dir` names another) and against the artefact's content part. Exports the ONNX graphs into the
    cache if they are not there yet (`streamrec encoder fetch` does; the workers only read them). None when
    `content.embed_items` is false, or auto and the model has no content part."""
    import json

    mode = str(job.content.embed_items).strip().lower()
    if mode not in ("auto", "true", "false"):
        raise ContentError(f"content.embed_items must be auto, true or false, not {job.content.embed_items!r}")
    if mode == "false":
        return None
    cfg = json.loads((job.path(job.model_dir) / "config.json").read_text())
    if mode == "auto" and not cfg.get("content"):
        return None

    from model_export.content import exported_encoder
    from model_export.encoder_fetch import load_encoder_conf

    enc = load_encoder_conf()
    d = job.path(job.content.encoder_dir) if job.content.encoder_dir else enc.path
    if not (d / "config.json").exists():
        raise ContentError(
            f"content.embed_items is on but there is no encoder in {d}: run `streamrec encoder fetch` "
            "(make setup does) or set content.embed_items: false"
        )
    ex = exported_encoder(d, enc.onnx_cache_path, enc.max_tokens)
    pinned = enc.files.get("model.safetensors")
    if not job.content.encoder_dir and pinned and ex.weights_sha256 != pinned:
        raise ContentError(
            f"encoder {d}: model.safetensors is not the pinned one (conf/encoder.yaml): run `streamrec encoder fetch`"
        )
    want = (cfg.get("content") or {}).get("encoder_weights_sha256")
    if want and want != ex.weights_sha256:
        raise ContentError(
            f"the model's content part was fitted with encoder weights {want[:12]}…, the job's "
            f"encoder {d} has {ex.weights_sha256[:12]}…: set content.encoder_dir to that encoder"
        )
    return str(d), str(enc.onnx_cache_path), enc.max_tokens, ex.weights_sha256


def build(env: Any, job: Any, operators_conf: Any, pseudonymizer: Any, bootstrap: str, cassandra_hosts: list[str],
          cassandra_port: int, keyspace: str, cassandra_security: Any = None, encoder: Any = None) -> None:
    """The job graph. Every operator has a stable uid (savepoint compatibility) and a readable name. `encoder`:
    the item-text encoder (`content_encoder`), None when `content.embed_items` is off."""
    from pyflink.common import Duration, Types, WatermarkStrategy

    from jobs.functions import (
        BROADCAST,
        CF_UPDATES,
        DEAD_LETTERS,
        DELETIONS,
        FRAUD_FLAGS,
        ITEM_EVENTS,
        ITEM_META,
        USER_BATCH,
        EmbedItems,
        ItemFunction,
        ParseCf,
        ParseControl,
        ParseItems,
        UserFunction,
        control_state_descriptor,
    )

    t = job.topics
    keys = shard_keys(job)
    # Event time = the Kafka record timestamp (producers set it to the event's `ts`).
    watermarks = (WatermarkStrategy.for_bounded_out_of_orderness(
        Duration.of_millis(job.watermark.out_of_orderness_ms))
        .with_idleness(Duration.of_millis(job.watermark.idleness_ms)))
    raw = env.from_source(kafka_source(job, bootstrap, t.events), watermarks, "events").uid("events-source")
    batches = batch_by_user(raw, job, keys).name("batch-by-user").uid("batch-by-user")

    # Control plane: `control` (model records, erase requests) and `items` (catalogue updates). Their watermarks
    # are wall-clock publish times and the sources go idle when quiet, so they never hold back event time.
    quiet = (WatermarkStrategy.for_monotonous_timestamps()
             .with_idleness(Duration.of_millis(job.watermark.control_idleness_ms)))
    control = env.from_source(kafka_source(job, bootstrap, t.control), quiet, "control") \
        .uid("control-source").process(ParseControl(t.control, keys, job.patch_workers()), output_type=USER_BATCH) \
        .name("parse-control").uid("parse-control")
    items_in = env.from_source(kafka_source(job, bootstrap, t.items), quiet, "items").uid("items-source")
    if encoder is None:
        parsed_items = catalogue = items_in.process(ParseItems(t.items, job.patch_workers()),
                                                    output_type=Types.PICKLED_BYTE_ARRAY()) \
            .name("parse-items").uid("parse-items")
    else:  # item records keyed by item shard; their text embedded there (batched), records and embeddings broadcast
        parsed_items = items_in.process(ParseItems(t.items, job.patch_workers(), keys), output_type=ITEM_META) \
            .name("parse-items").uid("parse-items")
        catalogue = keyed(parsed_items, Types.PICKLED_BYTE_ARRAY()) \
            .process(EmbedItems(job, *encoder), output_type=Types.PICKLED_BYTE_ARRAY()) \
            .name("embed-items").uid("embed-items")
    item_functions = [parsed_items] if encoder is None else [parsed_items, catalogue]
    control_plane = [catalogue]
    if operators_conf.cf.enabled:  # the item operator's CF neighbours come back from the job's CF topic; like the
        # control plane's, its records carry wall-clock times (the sink's send times) and it goes idle when quiet.
        # Read back in batches (JVM), parsed once per batch: every parsed record goes to every user-operator instance
        cf_raw = env.from_source(kafka_source(job, bootstrap, job.cf_topic()), quiet, "cf").uid("cf-source")
        cf_in = batch_cf(cf_raw, job).name("batch-cf").uid("batch-cf") \
            .process(ParseCf(job.cf_topic(), job.patch_workers()), output_type=Types.PICKLED_BYTE_ARRAY()) \
            .name("parse-cf").uid("parse-cf")
        control_plane.append(cf_in)
        item_functions.append(cf_in)
    broadcast = side_output(control, BROADCAST).union(*control_plane).broadcast(control_state_descriptor())

    # Erase requests travel with the event batches, keyed by user shard: they reach the state they must clear.
    users = keyed(batches.union(control), Types.PRIMITIVE_ARRAY(Types.BYTE())) \
        .connect(broadcast) \
        .process(UserFunction(job, operators_conf, pseudonymizer, t.events, keys, keys),
                 output_type=Types.STRING()) \
        .name("user-operator").uid("user-operator")

    items = keyed(side_output(users, ITEM_EVENTS), Types.PICKLED_BYTE_ARRAY()) \
        .process(ItemFunction(job, operators_conf), output_type=Types.STRING()) \
        .name("item-operator").uid("item-operator")

    flags = side_output(users, FRAUD_FLAGS).union(items)
    deletions = side_output(users, DELETIONS)
    dead = side_output(users, DEAD_LETTERS).union(
        side_output(items, DEAD_LETTERS), side_output(control, DEAD_LETTERS),
        *(side_output(f, DEAD_LETTERS) for f in item_functions))

    if operators_conf.cf.enabled:  # wall-clock record times: read back, they must not hold the watermark back
        split(side_output(items, CF_UPDATES)).name("split-cf").uid("split-cf") \
            .sink_to(keyed_kafka_sink(job, bootstrap, job.cf_topic(), wall_clock=True)).name("kafka-cf").uid("kafka-cf")
    recs = split(users).name("split-recommendations").uid("split-recommendations")
    recs.sink_to(keyed_kafka_sink(job, bootstrap, t.recommendations)) \
        .name("kafka-recommendations").uid("kafka-recommendations")
    rows = [recs]  # what Cassandra keeps: the lists, flags and deletions, as Kafka gets them
    for stream, topic, uid in ((flags, t.fraud_flags, "fraud-flags"), (dead, t.dead_letters, "dead-letters"),
                               (deletions, t.deletions, "deletions")):
        records = split(stream).name(f"split-{uid}").uid(f"split-{uid}")
        records.sink_to(kafka_sink(job, bootstrap, topic)).name(f"kafka-{uid}").uid(f"kafka-{uid}")
        if uid != "dead-letters":
            rows.append(records)
    if job.cassandra_sink.enabled:
        rows[0].union(*rows[1:]).sink_to(cassandra_sink(job, cassandra_hosts, cassandra_port, keyspace,
                                                        cassandra_security)) \
            .name("cassandra").uid("cassandra")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the streamrec Flink job")
    ap.add_argument("--conf", default="local.yaml", help="job config (conf/local.yaml)")
    ap.add_argument("--operators-conf", default="operators.yaml", help="operator thresholds (conf/operators.yaml)")
    ap.add_argument("--jar", action="append", default=[],
                    help="jar to ship with the job (the connector on the minicluster; jobs/java everywhere)")
    ap.add_argument("--from-checkpoint", default="", help="restore from this checkpoint/savepoint path")
    args = ap.parse_args(argv)

    from jobs.config import load_job_conf
    from operators.config import load_operators_conf
    from operators.privacy import Pseudonymizer
    from streamrec.services.settings import services

    job = load_job_conf(args.conf)
    # config errors first, before any endpoint is contacted or topic created
    if job.execution_mode not in ("process", "thread"):
        raise SystemExit(f"execution_mode must be process or thread, not {job.execution_mode!r}")
    if job.python_workers not in ("auto", "loopback", "process"):
        raise SystemExit(f"python_workers must be auto, loopback or process, not {job.python_workers!r}")
    if job.input_flush_ms < -1:
        raise SystemExit(f"input_flush_ms must be >= 0, or -1 (off), not {job.input_flush_ms}")
    if job.batching.key_table not in ("balanced", "legacy"):
        raise SystemExit(f"batching.key_table must be balanced or legacy, not {job.batching.key_table!r}")
    # The minicluster's JVM starts with PyFlink's gateway (the first Flink call below) and takes JVM_ARGS; the
    # user's own JVM_ARGS come after ours, so they win. (`flink run` ignores this: the cluster's config decides.)
    os.environ["JVM_ARGS"] = f"{job.jvm_options} {os.environ.get('JVM_ARGS', '')}".strip()
    operators_conf = load_operators_conf(args.operators_conf)
    # Fails here, before anything is submitted, when STREAMREC_PSEUDONYM_KEY / _KEY_ID are missing.
    pseudonymizer = Pseudonymizer.from_env(allow_dev_key=operators_conf.privacy.allow_dev_key)
    svc = services()
    if job.check_endpoints_s > 0:
        from streamrec.services.clients import CredentialsError, check_endpoints

        try:
            check_endpoints(svc, job.check_endpoints_s, cassandra=job.cassandra_sink.enabled)
        except CredentialsError as e:
            print(f"streamrec job: cannot start: {e}", file=sys.stderr)
            return 2

    try:
        encoder = content_encoder(job)
    except ContentError as e:
        print(f"streamrec job: cannot start: {e}", file=sys.stderr)
        return 2
    if operators_conf.cf.enabled:  # the job's own CF feedback topic (compacted: the latest neighbours per item)
        from streamrec.services.kafka import ensure_topics

        ensure_topics(svc.kafka.bootstrap, [job.cf_topic()], svc.kafka.num_partitions, compacted=[job.cf_topic()])

    # Read by PyFlink when the environment opens. Unset, the minicluster runs every Python operator inside this
    # process (loopback) and a cluster starts Python worker processes; "process" forces the latter everywhere
    # (setting "loopback" explicitly would make `flink run` on a cluster fail, so it is left unset).
    if job.worker_mode() == "process":
        os.environ["_python_worker_execution_mode"] = "process"  # noqa: SIM112 - PyFlink reads this exact name
    conf = flink_configuration(job)
    if args.from_checkpoint:
        conf.set_string("execution.state-recovery.path", args.from_checkpoint)
    from pyflink.datastream import StreamExecutionEnvironment

    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(job.parallelism)
    for jar in args.jar:
        env.add_jars(f"file://{jar}")
    build(env, job, operators_conf, pseudonymizer, svc.kafka.bootstrap, svc.cassandra.contact_points,
          svc.cassandra.native_port, svc.cassandra.keyspace, svc.cassandra.security, encoder)
    # What env.execute does, with the process-mode Python operators' input streamed in between (jobs/java).
    graph = env._generate_stream_graph(clear_transformations=True, job_name=job.job_name)
    streamed = stream_input(graph, job)
    print(f"streamrec job: Python operators with streamed input: {streamed}", file=sys.stderr)
    env._j_stream_execution_environment.execute(graph)
    return 0


def stream_input(graph: Any, job: Any) -> int:
    """Process mode: every Python operator of the Java stream graph sends the input waiting for its Python worker
    whenever a record arrives `input_flush_ms` after the last send (`jobs/java/StreamedInput.java`), not only at 1 MB
    or the bundle's end; returns how many operators. -1 (or thread mode): none."""
    if job.execution_mode != "process" or job.input_flush_ms < 0:
        return 0
    from pyflink.java_gateway import get_gateway

    return int(get_gateway().jvm.streamrec.flink.StreamedInput.apply(graph, job.input_flush_ms))


if __name__ == "__main__":
    sys.exit(main())
