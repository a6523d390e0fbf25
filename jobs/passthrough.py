"""Smoke job: Kafka topic → validate as JSON → Kafka topic, through Flink's official Kafka connector.

Proves the wiring the product stands on (KafkaSource, a Python operator, KafkaSink, the connector jar on this Flink
version), on the minicluster (`python -m jobs.passthrough ...`) and on a cluster (`flink run -py jobs/passthrough.py`).
Each record is tagged with the job's name so a consumer can tell it went through Flink.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)

from jobs.recommend import kafka_security
from jobs.runtime import python_config


def tag(raw: str) -> str:
    """Parse, tag, re-serialise; anything that is not a JSON object passes through wrapped, never dropped."""
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        obj = {"raw": raw}
    obj["via"] = "flink-passthrough"
    return json.dumps(obj, separators=(",", ":"))


def build(env: StreamExecutionEnvironment, bootstrap: str, in_topic: str, out_topic: str, group: str,
          bounded: bool, delivery: str, txn_prefix: str) -> None:
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(bootstrap)
        .set_topics(in_topic)
        .set_group_id(group)
        .set_starting_offsets(KafkaOffsetsInitializer.earliest())
        .set_value_only_deserializer(SimpleStringSchema())
    )
    if bounded:
        builder = builder.set_bounded(KafkaOffsetsInitializer.latest())
    sink_builder = (
        KafkaSink.builder()
        .set_bootstrap_servers(bootstrap)
        .set_record_serializer(
            KafkaRecordSerializationSchema.builder()
            .set_topic(out_topic)
            .set_value_serialization_schema(SimpleStringSchema())
            .build()
        )
        .set_delivery_guarantee(DeliveryGuarantee[delivery])
    )
    if delivery == "EXACTLY_ONCE":
        sink_builder = sink_builder.set_transactional_id_prefix(txn_prefix).set_property(
            "transaction.timeout.ms", "600000")
    (
        env.from_source(kafka_security(builder).build(), WatermarkStrategy.no_watermarks(), "kafka-in")
        .uid("kafka-in")
        .map(tag, output_type=Types.STRING())
        .name("tag")
        .uid("tag")
        .sink_to(kafka_security(sink_builder).build())
        .name("kafka-out")
        .uid("kafka-out")
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--in-topic", required=True)
    ap.add_argument("--out-topic", required=True)
    ap.add_argument("--group", default="streamrec-passthrough")
    ap.add_argument("--bounded", action="store_true", help="stop at the input's current end")
    ap.add_argument("--delivery", default="EXACTLY_ONCE", choices=["NONE", "AT_LEAST_ONCE", "EXACTLY_ONCE"])
    ap.add_argument("--checkpoint-ms", type=int, default=2000)
    ap.add_argument("--jar", action="append", default=[], help="connector jar to load (minicluster runs)")
    ap.add_argument("--execution-mode", default="thread", choices=["thread", "process"])
    args = ap.parse_args(argv)

    conf = python_config(args.execution_mode)
    # Fail fast instead of restarting forever (Flink's default once checkpointing is on).
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", "2")
    conf.set_string("restart-strategy.fixed-delay.delay", "1 s")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    env.enable_checkpointing(args.checkpoint_ms)
    for jar in args.jar:
        env.add_jars(f"file://{jar}")
    build(env, args.bootstrap, args.in_topic, args.out_topic, args.group, args.bounded, args.delivery,
          txn_prefix=f"{args.group}-{args.out_topic}")
    env.execute(f"passthrough {args.in_topic} -> {args.out_topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
