"""The real broker: what goes in comes out, exactly."""

from __future__ import annotations

from kafka import KafkaConsumer, KafkaProducer

from streamrec.services.clients import kafka_kwargs


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(**kafka_kwargs(bootstrap), acks="all", linger_ms=5, batch_size=64 * 1024)
    futures = [producer.send(topic, value=v, key=str(i % 97).encode()) for i, v in enumerate(values)]
    producer.flush(60)
    for f in futures:
        f.get(timeout=30)  # raises if the broker refused a record
    producer.close()


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0,
                isolation_level: str = "read_uncommitted") -> list[bytes]:
    import time

    consumer = KafkaConsumer(topic, **kafka_kwargs(bootstrap), auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000, isolation_level=isolation_level)
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=1000, max_records=5000)
            for records in batch.values():
                out.extend(r.value for r in records)
            if len(out) >= expected and not batch:
                break
    finally:
        consumer.close()
    return out


def test_produce_and_consume_10000_exactly(kafka_bootstrap: str, make_topic) -> None:
    topic = make_topic("roundtrip", partitions=3)
    values = [f'{{"n":{i},"pad":"{"x" * (i % 50)}"}}'.encode() for i in range(10_000)]
    produce(kafka_bootstrap, topic, values)
    got = consume_all(kafka_bootstrap, topic, expected=len(values))
    assert len(got) == len(values)
    assert sorted(got) == sorted(values)
