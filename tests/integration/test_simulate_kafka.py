"""`streamrec simulate --kafka` on the real broker: paced at 5,000 messages/s, everything lands, exactly."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer

from streamrec.data import cli as data_cli
from streamrec.data.simulator import load_conf, simulate, with_overrides
from streamrec.services.clients import kafka_kwargs

pytestmark = pytest.mark.integration

EVENTS = 50_000
RATE = 5_000.0
SEED = 11


def consume(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 90.0
) -> list[tuple[bytes, bytes | None, int]]:
    """Everything in `topic` from the start: stop once `expected` arrived and a poll comes back empty."""
    consumer = KafkaConsumer(
        topic,
        **kafka_kwargs(bootstrap),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    out: list[tuple[bytes, bytes | None, int]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=2000, max_records=10_000)
            for records in batch.values():
                out.extend((r.value, r.key, r.timestamp) for r in records)
            if len(out) >= expected and not batch:
                break
    finally:
        consumer.close()
    return out


def test_simulate_kafka_5000_per_second(
    kafka_bootstrap: str,
    kafka_topic: str,
    make_topic: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    items_topic = make_topic("items")
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers())
    args = parser.parse_args(
        ["simulate", "--kafka", "--topic", kafka_topic, "--items-topic", items_topic, "--rate", str(RATE),
         "--events", str(EVENTS), "--seed", str(SEED), "--no-progress"]
    )  # fmt: skip
    t0 = time.monotonic()
    assert args.func(args) == 0
    wall = time.monotonic() - t0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    sent = summary["sent"]
    print(out, f"wall {wall:.1f} s")

    assert summary["failed"] == 0 and summary["topic"] == kafka_topic
    assert abs(sent - EVENTS) <= 0.05 * EVENTS
    # Paced, not blasted: 50,000 messages at 5,000/s cannot take less than ~10 s. The upper bound is loose on
    # purpose: on a loaded 2-core machine the producer may fall behind the target (it never runs ahead of it).
    assert summary["seconds"] >= 0.95 * EVENTS / RATE, summary
    assert summary["rate"] <= RATE * 1.05, summary
    assert summary["seconds"] <= 4 * EVENTS / RATE, summary

    landed = consume(kafka_bootstrap, kafka_topic, expected=sent)
    assert len(landed) == sent
    # What landed is exactly the simulated stream (deterministic simulator): payloads, keys, timestamps.
    expected = simulate(with_overrides(load_conf(), events=EVENTS, seed=SEED)).stream
    assert sorted(landed) == sorted(expected)

    items = consume(kafka_bootstrap, items_topic, expected=summary["items_sent"], timeout_s=30)
    assert len(items) == summary["items_sent"] == load_conf().catalogue.n_items
