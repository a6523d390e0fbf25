"""Paced load generator for the benchmark, run as its own process (so its CPU is not the harness's):
`python -m streamrec.bench.load --stream FILE --topic T --rate R --seconds S --out PREFIX [--impl java|python]`.

Sends the stream's messages in order at R messages/s (0: as fast as possible) until all are sent or S seconds have
passed, with key = user id and record timestamp = event ts, as `streamrec simulate --kafka` does, to the partition
Kafka's default partitioner would choose (stated explicitly so unkeyed lines land on a known partition too). Writes
PREFIX.npy (send time per line, `time.monotonic()`, NaN if not sent; the clock is system-wide on Linux, so the
harness compares it with its receive times) and PREFIX.json (counts, seconds, achieved rate).

Two implementations send the same records the same way: `java` (default: `LoadGen.java`, Kafka's Java client from
the broker's own jars) and `python` (kafka-python). They differ in what they cost beside the system under test on
the bench's 2-core machine: at 1,000 messages/s, steady, 0.08 core for the Java client against 0.18-0.24 for
kafka-python (whose sender thread wakes for every produce request); the JVM's start, ~1 s before the first send,
costs ~1 s of CPU while the system under test waits for load.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

Stream = list[tuple[bytes, bytes | None, int]]


def save_stream(stream: Stream, path: Path) -> None:
    """The benchmark's own transient hand-over file (same code on both sides)."""
    with open(path, "wb") as f:
        pickle.dump(stream, f, protocol=pickle.HIGHEST_PROTOCOL)


def load_stream(path: Path) -> Stream:
    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 - written by save_stream in the same run


def partition_of(key: bytes | None, line: int, partitions: int) -> int:
    """Kafka's default partition of a keyed message (murmur2, as the Java client); unkeyed lines round-robin by line
    number instead of at random, so where every line went is known."""
    from kafka.partitioner.default import murmur2

    if key is None:
        return line % partitions
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# The producer settings of both forms (kafka-python names; LoadGen.java gets them as Java client properties)
PRODUCER = {"acks": 1, "linger_ms": 5, "batch_size": 262144, "max_request_size": 2 * 1024 * 1024}


def send(stream: Stream, topic: str, bootstrap: str, rate: float, seconds: float,
         partitions: int) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """Send `stream` paced at `rate` for at most `seconds`; (send times, summary)."""
    from kafka import KafkaProducer

    from streamrec.services.clients import kafka_kwargs

    producer = KafkaProducer(**kafka_kwargs(bootstrap), **PRODUCER)
    sent_at = np.full(len(stream), np.nan)
    lock = threading.Lock()
    acks = {"ok": 0, "failed": 0}

    def ok(_meta: Any) -> None:
        with lock:
            acks["ok"] += 1

    def err(_exc: BaseException) -> None:
        with lock:
            acks["failed"] += 1

    start = time.monotonic()
    deadline = start + seconds if seconds > 0 else float("inf")
    n = 0
    for i, (payload, key, ts) in enumerate(stream):
        now = time.monotonic()
        if now >= deadline:
            break
        if rate > 0 and i % 10 == 0:
            ahead = start + i / rate - now
            if ahead > 0:
                time.sleep(ahead)
        sent_at[i] = time.monotonic()
        fut = producer.send(topic, value=payload, key=key, timestamp_ms=ts, partition=partition_of(key, i, partitions))
        fut.add_callback(ok).add_errback(err)
        n = i + 1
    send_s = time.monotonic() - start
    producer.flush(timeout=120)
    producer.close(timeout=10)
    total_s = time.monotonic() - start
    return sent_at, {"attempted": n, "acked": acks["ok"], "failed": acks["failed"], "send_seconds": send_s,
                     "seconds_with_flush": total_s, "target_rate": rate,
                     "achieved_rate": n / max(send_s, 1e-9)}  # fmt: skip


JAVA_SOURCE = Path(__file__).with_name("LoadGen.java")


def write_binary(stream: Stream, path: Path) -> None:
    """`stream` in the form LoadGen.java reads (big-endian: count; per line key length or -1, key, ts, length,
    payload)."""
    import struct

    with open(path, "wb") as f:
        f.write(struct.pack(">i", len(stream)))
        for payload, key, ts in stream:
            f.write(struct.pack(">i", -1) if key is None else struct.pack(">i", len(key)) + key)
            f.write(struct.pack(">qi", ts, len(payload)))
            f.write(payload)


def send_java(stream: Stream, topic: str, bootstrap: str, rate: float, seconds: float, partitions: int,
              work: Path) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """`send` on Kafka's Java client (LoadGen.java, compiled once against the broker's jars): the same records,
    partitions, pacing and outputs."""
    import subprocess

    from streamrec.services import maven
    from streamrec.services.clients import kafka_java_properties
    from streamrec.services.settings import services

    conf = services()
    kafka_jars = sorted(maven.fetch(conf.state_path, "kafka").glob("*.jar"))
    classes = maven.tool_classes(conf.state_path, JAVA_SOURCE, kafka_jars)
    bin_path, out_path, props = work.with_suffix(".lines"), work.with_suffix(".f64"), work.with_suffix(".properties")
    write_binary(stream, bin_path)
    # the producer settings, and the profile's security settings (SASL/TLS with `--services secure.yaml`; none
    # locally) for the plain (unshaded) client
    settings = {**kafka_java_properties(conf.kafka.security, shaded_prefix=""),
                **{k.replace("_", "."): str(v) for k, v in PRODUCER.items()}}  # fmt: skip
    props.write_text("".join(f"{k}={v}\n".replace("\\", "\\\\") for k, v in settings.items()))
    cp = os.pathsep.join([str(classes), *map(str, kafka_jars)])
    jvm = [conf.java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx512m", "-cp", cp]
    proc = subprocess.run([*jvm, "LoadGen", str(bin_path), topic, bootstrap, repr(float(rate)), repr(float(seconds)),
                           str(partitions), str(out_path), str(props)], capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"LoadGen failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    attempted, acked, failed, send_s, total_s = proc.stdout.split()[-5:]
    sent_at = np.fromfile(out_path, dtype="<f8")
    for f in (bin_path, out_path, props):
        f.unlink()
    n = int(attempted)
    return sent_at, {"attempted": n, "acked": int(acked), "failed": int(failed), "send_seconds": float(send_s),
                     "seconds_with_flush": float(total_s), "target_rate": rate,
                     "achieved_rate": n / max(float(send_s), 1e-9), "impl": "java"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stream", required=True, type=Path)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--rate", type=float, default=0.0, help="messages/s (0: unpaced)")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop sending after this long (0: no limit)")
    ap.add_argument("--partitions", type=int, required=True, help="partitions of the topic")
    ap.add_argument("--out", required=True, type=Path, help="prefix of the .npy / .json outputs")
    ap.add_argument("--impl", choices=("java", "python"), default="java",
                    help="Kafka's Java client (LoadGen.java) or kafka-python: the same records, not the same CPU")
    args = ap.parse_args(argv)
    if args.impl == "java":
        sent_at, summary = send_java(load_stream(args.stream), args.topic, args.bootstrap, args.rate, args.seconds,
                                     args.partitions, args.out)
    else:
        sent_at, summary = send(load_stream(args.stream), args.topic, args.bootstrap, args.rate, args.seconds,
                                args.partitions)
        summary["impl"] = "python"
    np.save(args.out.with_suffix(".npy"), sent_at)
    args.out.with_suffix(".json").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
