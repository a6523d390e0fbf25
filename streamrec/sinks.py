"""The Cassandra sink: idempotent upserts of the job's outputs with cassandra-driver (no Flink import).

There is no Flink Cassandra connector for Flink 2.x, so the job calls this from a Python function. Properties:
- prepared statements, one per output kind;
- idempotent: each row's key is derived from the record (user key / flag id) and every write carries
  `USING TIMESTAMP <event time in µs>`, so a replay after failover rewrites the same cells and an older event can never
  overwrite a newer one, whatever order the writes land in;
- bounded in-flight async writes: `write` blocks (backpressure) while `max_in_flight` writes are pending;
- retries with exponential backoff; a write that exhausts its retries raises, failing the job, which then restarts
  from its last checkpoint instead of dropping the write.

NOTE: Python functions get no checkpoint hook, so writes still in flight when a checkpoint completes are not part of
it. They are retried as above; only a write that then exhausts all retries (minutes of Cassandra being down) after
its checkpoint completed can be lost. `flush()` drains everything at end of input.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class SinkError(RuntimeError):
    """A record the sink cannot write (after retries), or cannot understand."""


@dataclass(frozen=True)
class WriterConf:
    keyspace: str  # keyspace holding the product tables
    max_in_flight: int = 128  # pending async writes before `write` blocks
    retries: int = 6  # retries per write
    backoff_ms: int = 100  # first retry delay, doubling
    consistency: str = "LOCAL_QUORUM"  # consistency level name
    request_timeout_s: float = 10.0  # driver timeout per write


def _ts_us(record: Mapping[str, Any]) -> int:
    return int(record["event_ts"]) * 1000


def bind_recommendation(r: Mapping[str, Any]) -> tuple[Any, ...]:
    items = r["items"]
    ids = [str(i["item_id"]) if isinstance(i, Mapping) else str(i) for i in items]
    scores = r.get("scores")
    if scores is None:
        scores = [float(i.get("score", 0.0)) if isinstance(i, Mapping) else 0.0 for i in items]
    return (r["user_key"], r.get("key_id", ""), ids, [float(s) for s in scores], r.get("model_version", ""),
            r.get("event_id", ""), int(r["event_ts"]), _ts_us(r))


def bind_flag(r: Mapping[str, Any]) -> tuple[Any, ...]:
    evidence = r.get("evidence", {})
    return (r["subject_kind"], r["subject"], r["flag_id"], float(r["score"]), [str(x) for x in r["reasons"]],
            evidence if isinstance(evidence, str) else json.dumps(evidence, sort_keys=True, default=str),
            r.get("model_version", ""), int(r["event_ts"]), _ts_us(r))


def bind_deletion(r: Mapping[str, Any]) -> tuple[Any, ...]:
    return (_ts_us(r), r["user_key"])


class CassandraWriter:
    """Writes recommendation, fraud-flag and deletion records (dicts with a `kind`) to Cassandra."""

    def __init__(self, hosts: list[str], port: int, conf: WriterConf) -> None:
        self.hosts, self.port, self.conf = hosts, port, conf
        self._session: Any = None
        self._stmts: dict[str, Any] = {}
        self._slots = threading.BoundedSemaphore(conf.max_in_flight)
        self._lock = threading.Lock()
        self._failed: deque[tuple[str, tuple[Any, ...], int, BaseException]] = deque()
        self._pending = 0
        self.written = 0
        self.retried = 0

    def open(self) -> None:
        from cassandra import ConsistencyLevel
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import RoundRobinPolicy

        profile = ExecutionProfile(
            load_balancing_policy=RoundRobinPolicy(),
            consistency_level=getattr(ConsistencyLevel, self.conf.consistency),
            request_timeout=self.conf.request_timeout_s,
        )
        cluster = Cluster(self.hosts, port=self.port, execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                          protocol_version=5)
        self._session = cluster.connect(self.conf.keyspace)
        ks = self.conf.keyspace
        self._stmts = {
            "recommendation": self._session.prepare(
                f"INSERT INTO {ks}.recommendations_by_user "
                "(user_key, key_id, items, scores, model_version, event_id, event_ts) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "USING TIMESTAMP ?"),
            "fraud_flag": self._session.prepare(
                f"INSERT INTO {ks}.fraud_flags "
                "(subject_kind, subject, flag_id, score, reasons, evidence, model_version, event_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"),
            "deletion": self._session.prepare(
                f"DELETE FROM {ks}.recommendations_by_user USING TIMESTAMP ? WHERE user_key = ?"),
        }
        for stmt in self._stmts.values():
            stmt.is_idempotent = True

    def write(self, record: Mapping[str, Any]) -> None:
        """Queue one record; blocks while `max_in_flight` writes are pending; raises if an earlier write failed
        all its retries."""
        self._retry_failed()
        kind = record.get("kind")
        binder = {"recommendation": bind_recommendation, "fraud_flag": bind_flag, "deletion": bind_deletion}.get(
            str(kind))
        if binder is None:
            raise SinkError(f"record kind {kind!r} has no Cassandra table")
        try:
            params = binder(record)
        except (KeyError, TypeError, ValueError) as e:
            raise SinkError(f"malformed {kind} record for Cassandra: {e!r}") from e
        self._submit(str(kind), params, attempt=0)

    def _submit(self, kind: str, params: tuple[Any, ...], attempt: int) -> None:
        self._slots.acquire()
        with self._lock:
            self._pending += 1
        try:
            fut = self._session.execute_async(self._stmts[kind], params)
        except Exception as e:  # e.g. NoHostAvailable raised synchronously
            self._done(kind, params, attempt, e)
            return
        fut.add_callbacks(lambda _res: self._done(kind, params, attempt, None),
                          lambda err: self._done(kind, params, attempt, err))

    def _done(self, kind: str, params: tuple[Any, ...], attempt: int, err: BaseException | None) -> None:
        with self._lock:
            self._pending -= 1
            if err is None:
                self.written += 1
            else:
                self._failed.append((kind, params, attempt, err))
        self._slots.release()

    def _retry_failed(self) -> None:
        while True:
            with self._lock:
                if not self._failed:
                    return
                kind, params, attempt, err = self._failed.popleft()
            if attempt >= self.conf.retries:
                raise SinkError(f"Cassandra write of a {kind} failed after {attempt} retries: {err!r}")
            time.sleep(self.conf.backoff_ms * (2 ** attempt) / 1000.0)  # backpressure while Cassandra struggles
            self.retried += 1
            self._submit(kind, params, attempt + 1)

    def flush(self, timeout_s: float = 120.0) -> None:
        """Wait until every queued write has landed (retrying failures); raise if one cannot."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._retry_failed()
            with self._lock:
                if self._pending == 0 and not self._failed:
                    return
            if time.monotonic() > deadline:
                raise SinkError(f"{self._pending} Cassandra writes still pending after {timeout_s} s")
            time.sleep(0.005)

    def close(self) -> None:
        if self._session is not None:
            try:
                self.flush()
            finally:
                self._session.cluster.shutdown()
                self._session = None
