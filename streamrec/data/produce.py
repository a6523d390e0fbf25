"""Load generator: send a simulation's message stream to Kafka at a target rate.

Pacing uses the monotonic clock (this is a load generator, not per-event logic). Message key = user_id
bytes (a user's events stay in one partition, in order), record timestamp = event ts. Malformed lines are
sent as they are, without a key, so the stream job's dead-letter path is exercised. `sent` counts
acknowledged messages only, after the final flush.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from streamrec.data.simulator import ProducerConf, Simulation


class ProduceError(RuntimeError):
    """The broker could not be reached or the final flush timed out."""


@dataclass(frozen=True)
class ProduceResult:
    topic: str
    items_topic: str | None
    attempted: int  # event-stream messages handed to the producer
    sent: int  # acknowledged by the broker
    failed: int  # delivery errors
    items_sent: int  # acknowledged item-metadata messages
    seconds: float  # from the first event send to the end of the flush
    target_rate: float
    achieved_rate: float  # sent / seconds


class _Acks:
    """Delivery callbacks run on the producer's I/O thread; count under a lock."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.first_error: str | None = None
        self._lock = threading.Lock()

    def on_ok(self, _meta: Any) -> None:
        with self._lock:
            self.ok += 1

    def on_err(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            if self.first_error is None:
                self.first_error = f"{type(exc).__name__}: {exc}"


def make_producer(conf: ProducerConf, bootstrap: str) -> Any:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from streamrec.services.clients import kafka_kwargs

    acks: int | str = conf.acks if conf.acks == "all" else int(conf.acks)
    try:
        return KafkaProducer(
            **kafka_kwargs(bootstrap),
            acks=acks,
            linger_ms=conf.linger_ms,
            batch_size=conf.batch_size,
            compression_type=None if conf.compression in ("", "none") else conf.compression,
            max_request_size=2 * 1024 * 1024,
        )
    except KafkaError as e:
        raise ProduceError(f"cannot connect to Kafka at {bootstrap}: {type(e).__name__}: {e}") from e


def produce(
    sim: Simulation,
    topic: str,
    items_topic: str | None,
    rate: float,
    conf: ProducerConf,
    bootstrap: str | None = None,
    progress: bool = True,
) -> ProduceResult:
    """Send items (unpaced), then the event stream at `rate` messages/s (0 = unpaced); flush; count acks."""
    from kafka.errors import KafkaError

    if bootstrap is None:
        from streamrec.services.settings import kafka_bootstrap

        bootstrap = kafka_bootstrap()
    producer = make_producer(conf, bootstrap)
    item_acks, acks = _Acks(), _Acks()
    try:
        if items_topic:
            for it in sim.items:
                fut = producer.send(items_topic, value=it.to_json().encode("utf-8"), key=it.item_id.encode())
                fut.add_callback(item_acks.on_ok).add_errback(item_acks.on_err)
            producer.flush(timeout=conf.flush_timeout_s)
        n = len(sim.stream)
        bar = _Bar(n, topic) if progress else None
        start = time.monotonic()
        for i, (payload, key, ts) in enumerate(sim.stream):
            if rate > 0 and i % 50 == 0:
                ahead = start + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                if bar is not None and i % 1000 == 0:
                    bar.update(i)
            fut = producer.send(topic, value=payload, key=key, timestamp_ms=ts)
            fut.add_callback(acks.on_ok).add_errback(acks.on_err)
        producer.flush(timeout=conf.flush_timeout_s)
        seconds = time.monotonic() - start
        if bar is not None:
            bar.update(n)
            bar.close()
    except KafkaError as e:
        raise ProduceError(f"Kafka error while producing: {type(e).__name__}: {e}") from e
    finally:
        producer.close(timeout=10)
    if acks.ok + acks.failed < len(sim.stream):
        raise ProduceError(
            f"flush returned with {len(sim.stream) - acks.ok - acks.failed} messages unacknowledged "
            f"(producer.flush_timeout_s={conf.flush_timeout_s})"
        )
    return ProduceResult(
        topic=topic,
        items_topic=items_topic,
        attempted=len(sim.stream),
        sent=acks.ok,
        failed=acks.failed,
        items_sent=item_acks.ok,
        seconds=seconds,
        target_rate=rate,
        achieved_rate=acks.ok / max(seconds, 1e-9),
    )


class _Bar:
    """A rich progress bar on stderr (stdout stays parseable)."""

    def __init__(self, total: int, topic: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(
            TextColumn(f"producing to {topic}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._p.add_task("produce", total=total)
        self._p.start()

    def update(self, done: int) -> None:
        self._p.update(self._task, completed=done)

    def close(self) -> None:
        self._p.stop()
