"""The bench's paced load generator on the real broker: its Java (LoadGen.java) and Python (kafka-python) forms send
the same records to the same partitions, paced, and state send times on the harness's clock."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer

from streamrec.bench import load
from streamrec.services.clients import kafka_kwargs

PARTITIONS = 3


def _stream(n: int) -> load.Stream:
    """Keyed lines (some keys repeated, one non-ASCII), a few unkeyed ones, payloads of varied length."""
    out: load.Stream = []
    for i in range(n):
        key = None if i % 17 == 5 else f"user-{i % 23}{'é' if i % 23 == 4 else ''}".encode()
        out.append((f'{{"n":{i},"pad":"{"x" * (i % 41)}"}}'.encode(), key, 1_700_000_000_000 + 37 * i))
    return out


def _read(bootstrap: str, topic: str, expected: int) -> list[tuple[int, bytes | None, int, bytes]]:
    """(partition, key, timestamp, value) of every record, in partition order."""
    consumer = KafkaConsumer(topic, **kafka_kwargs(bootstrap), auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000)  # fmt: skip
    got: list[tuple[int, bytes | None, int, bytes]] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=1000, max_records=5000)
            for tp, records in sorted(batch.items(), key=lambda kv: kv[0].partition):
                got.extend((tp.partition, r.key, r.timestamp, r.value) for r in records)
            if len(got) >= expected and not batch:
                break
    finally:
        consumer.close()
    return got


@pytest.mark.parametrize("impl", ["java", "python"])
def test_paced_send_delivers_every_line_where_the_harness_expects_it(kafka_bootstrap: str,
                                                                    make_topic: Callable[..., str], tmp_path: Path,
                                                                    impl: str) -> None:  # fmt: skip
    stream = _stream(300)
    topic = make_topic(f"load-{impl}", partitions=PARTITIONS)
    file = tmp_path / "stream.pkl"
    load.save_stream(stream, file)
    before = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "streamrec.bench.load", "--stream", str(file), "--topic", topic,
                           "--bootstrap", kafka_bootstrap, "--rate", "200", "--seconds", "30", "--partitions",
                           str(PARTITIONS), "--out", str(tmp_path / "load"), "--impl", impl],
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    after = time.monotonic()
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "load.json").read_text())
    assert (summary["attempted"], summary["acked"], summary["failed"], summary["impl"]) == (300, 300, 0, impl)
    sent_at = np.load(tmp_path / "load.npy")
    # send times on the harness's clock (Python's time.monotonic()), in line order, paced at ~200/s (1.5 s)
    assert sent_at.shape == (300,) and not np.isnan(sent_at).any()
    assert before < sent_at[0] and sent_at[-1] < after
    assert (np.diff(sent_at) >= 0).all()
    assert 1.3 < sent_at[-1] - sent_at[0] < 10.0
    got = _read(kafka_bootstrap, topic, 300)
    assert len(got) == 300
    want = {(load.partition_of(k, i, PARTITIONS), k, ts, v) for i, (v, k, ts) in enumerate(stream)}
    assert set(got) == want  # every line once, with its key and event time, in the partition the harness computes
    for p in range(PARTITIONS):  # in stream order within each partition
        values = [v for part, _, _, v in got if part == p]
        assert values == [v for i, (v, k, _) in enumerate(stream) if load.partition_of(k, i, PARTITIONS) == p]


def test_java_load_stops_at_its_time_limit(kafka_bootstrap: str, make_topic: Callable[..., str],
                                           tmp_path: Path) -> None:
    stream = _stream(2000)
    topic = make_topic("load-limit", partitions=PARTITIONS)
    sent_at, summary = load.send_java(stream, topic, kafka_bootstrap, rate=100, seconds=1.0, partitions=PARTITIONS,
                                      work=tmp_path / "load")  # fmt: skip
    n = summary["attempted"]
    assert 80 <= n <= 120, summary  # ~100 lines in 1 s at 100/s, then it stops
    assert not np.isnan(sent_at[:n]).any() and np.isnan(sent_at[n:]).all()
    assert summary["acked"] == n and summary["failed"] == 0
