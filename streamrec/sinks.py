"""The Cassandra sink: idempotent upserts of the job's outputs with cassandra-driver (no Flink import).

The bench's plain consumer writes with this (what a user would write by hand in Python). The job writes the same rows
from the JVM (`jobs/java/CassandraSink.java`, same statements, batching and retries), so that Cassandra costs its
Python operators nothing. Properties:
- prepared statements, one per output kind;
- idempotent: each row's key is derived from the record (user key / flag id) and every write carries
  `USING TIMESTAMP <event time in µs>`, so a replay after failover rewrites the same cells and an older event can never
  overwrite a newer one, whatever order the writes land in;
- rows are sent in small UNLOGGED batches (`batch_max_rows` statements, about `batch_max_bytes` of values, below
  Cassandra's default `unlogged_batch_across_partitions_warn_threshold` (10) and `batch_size_warn_threshold` (5 KiB)).
  Each statement in a batch keeps its own `USING TIMESTAMP`, and an unlogged batch has no atomicity across partitions
  that anything here relies on: every statement is an idempotent upsert or delete, so a batch that half-applied and is
  sent again converges to the same cells. Batching is only a cheaper transport (one request, one response, one
  callback per batch instead of per row: about 1/3 of the Python CPU and of the Cassandra CPU per row);
- bounded in flight: `write`/`write_many` block (backpressure) while `max_in_flight` rows are pending; besides those,
  at most one open batch (< `batch_max_rows` rows) waits for more rows or for `flush()`;
- retries of a failed request (a whole batch) with exponential backoff (capped: a node away for a minute or two is
  ridden out, the operators blocking meanwhile); a batch Cassandra rejects as too large is split
  and its halves sent again; a write that exhausts its retries raises, failing the job, which then restarts from its
  last checkpoint instead of dropping the write.

`send()` sends the open batch without waiting, `flush()` sends it and drains everything (the plain consumer flushes
before it commits its offsets).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from operators.batch import to_json

if TYPE_CHECKING:
    from streamrec.services.settings import CassandraSecurity

log = logging.getLogger(__name__)


class SinkError(RuntimeError):
    """A record the sink cannot write (after retries), or cannot understand."""


@dataclass(frozen=True)
class WriterConf:
    keyspace: str  # keyspace holding the product tables
    max_in_flight: int = 128  # rows in pending requests before `write` blocks
    retries: int = 60  # retries per request (a batch or a single row)
    backoff_ms: int = 100  # first retry delay, doubling ...
    max_backoff_ms: int = 2000  # ... up to this: 60 retries span about two minutes of Cassandra being away
    consistency: str = "LOCAL_QUORUM"  # consistency level name
    request_timeout_s: float = 10.0  # driver timeout per request
    # Rows per UNLOGGED batch (1: one request per row). Each row is one partition at most, so this bounds the
    # partitions per batch: keep it <= Cassandra's unlogged_batch_across_partitions_warn_threshold (default 10).
    batch_max_rows: int = 10
    # Estimated bytes per batch (bound values + 16 per cell); Cassandra warns on every multi-partition batch above
    # batch_size_warn_threshold (default 5 KiB) and rejects above batch_size_fail_threshold (default 50 KiB).
    batch_max_bytes: int = 4096


def _ts_us(record: Mapping[str, Any]) -> int:
    return int(record["event_ts"]) * 1000


def bind_recommendation(r: Mapping[str, Any]) -> tuple[Any, ...]:
    items = r["items"]
    ids = [i if type(i) is str else str(i["item_id"]) if isinstance(i, Mapping) else str(i) for i in items]
    scores = r.get("scores")
    if scores is None:
        scores = [float(i.get("score", 0.0)) if isinstance(i, Mapping) else 0.0 for i in items]
    return (r["user_key"], r.get("key_id", ""), ids, [float(s) for s in scores], r.get("model_version", ""),
            r.get("event_id", ""), int(r["event_ts"]), _ts_us(r))


def bind_flag(r: Mapping[str, Any]) -> tuple[Any, ...]:
    evidence = r.get("evidence", {})
    return (r["subject_kind"], r["subject"], r["flag_id"], float(r["score"]), [str(x) for x in r["reasons"]],
            # as the job's Kafka records carry it, so the JVM sink writes the same text
            evidence if isinstance(evidence, str) else to_json(evidence),
            r.get("model_version", ""), int(r["event_ts"]), _ts_us(r))


def bind_deletion(r: Mapping[str, Any]) -> tuple[Any, ...]:
    return (_ts_us(r), r["user_key"])


def bind_flag_deletion(r: Mapping[str, Any]) -> tuple[Any, ...]:
    return (_ts_us(r), r.get("subject_kind", "user"), r.get("subject") or r["user_key"])


# ------------------------------------------------------------------ serialisation
# cassandra-driver's `PreparedStatement.bind` costs ~8 µs per row here (generic per-type dispatch, and `timestamp`
# from an int goes through two caught exceptions); these produce the same bytes for the types the binders above
# produce in ~3 µs. Used only for the CQL types listed, checked against each prepared statement's metadata when it is
# prepared; anything unexpected (a value of another type, a float out of float32 range, ...) falls back to the
# driver's own `bind`, which serialises it or raises its own error.

_i32 = struct.Struct(">i").pack
_i64 = struct.Struct(">q").pack
_f64 = struct.Struct(">d").pack


def _text(v: Any) -> bytes | None:
    return None if v is None else v.encode("utf-8")


def _text_list(v: Any) -> bytes:
    if type(v) is not list:
        raise TypeError("not a list")
    enc = [x.encode("utf-8") for x in v]
    return b"".join([_i32(len(enc)), *[_i32(len(e)) + e for e in enc]])


def _float_list(v: Any) -> bytes:
    if type(v) is not list:
        raise TypeError("not a list")
    n = len(v)
    return struct.pack(">i" + "if" * n, n, *[y for x in v for y in (4, x)])


def _double(v: Any) -> bytes:
    return _f64(v)


def _bigint(v: Any) -> bytes:
    if type(v) is not int:
        raise TypeError("not an int")
    return _i64(v)


_FAST: dict[str, Callable[[Any], bytes | None]] = {
    "varchar": _text, "text": _text, "list<varchar>": _text_list, "list<text>": _text_list,
    "list<float>": _float_list, "double": _double, "bigint": _bigint, "timestamp": _bigint,
}  # fmt: skip


class _Stmt:
    """A prepared statement and how to turn a record into its serialised values."""

    __slots__ = ("prepared", "binder", "fast")

    def __init__(self, prepared: Any, binder: Callable[[Mapping[str, Any]], tuple[Any, ...]]) -> None:
        self.prepared, self.binder = prepared, binder
        prepared.is_idempotent = True
        try:
            self.fast: tuple[Callable[[Any], bytes | None], ...] | None = tuple(
                _FAST[m.type.cql_parameterized_type()] for m in prepared.column_metadata)
        except KeyError:  # a column type without a fast path: the driver serialises every row
            self.fast = None

    def values(self, params: tuple[Any, ...]) -> list[bytes | None]:
        fast = self.fast
        if fast is not None and len(params) == len(fast):
            try:
                return [f(v) for f, v in zip(fast, params, strict=True)]
            except Exception:  # the driver below serialises it, or raises its own error
                pass
        return list(self.prepared.bind(params).values)


def _size(values: list[bytes | None]) -> int:
    """Roughly Cassandra's `IMutation.dataSize` of a row (what batch_size_warn_threshold is compared with): the
    values plus timestamp, TTL and deletion time per cell. Measured against the sizes Cassandra 5 reports: 1.01-1.2x
    of them for these tables (it counts key columns and the write timestamp as cells; deletions count 0 there)."""
    return sum(16 if v is None else len(v) + 16 for v in values)


class _Group:
    """Rows sent as one request: a single statement or an UNLOGGED batch."""

    __slots__ = ("rows", "nbytes")

    def __init__(self) -> None:
        self.rows: list[tuple[Any, list[bytes | None]]] = []
        self.nbytes = 0


class CassandraWriter:
    """Writes recommendation, fraud-flag and deletion records (dicts with a `kind`) to Cassandra.

    `write(record)` or `write_many(records)` queue rows (sent as soon as a batch is full), `flush()` sends the rest and
    waits until everything has landed, `close()` flushes and disconnects. Not thread-safe: one caller thread."""

    def __init__(self, hosts: list[str], port: int, conf: WriterConf,
                 security: CassandraSecurity | None = None) -> None:
        """`security`: credentials and TLS (default: none); its password is read in `open()`."""
        self.hosts, self.port, self.conf, self.security = hosts, port, conf, security
        self._session: Any = None
        self._stmts: dict[str, _Stmt] = {}
        self._cv = threading.Condition(threading.Lock())
        self._in_flight = 0  # rows in requests sent and not answered (guarded by _cv)
        self._failed: deque[tuple[_Group, int, BaseException]] = deque()  # (rows, attempt, error), guarded by _cv
        self._open = _Group()
        self._max_rows = max(1, min(conf.batch_max_rows, conf.max_in_flight))
        self._max_bytes = conf.batch_max_bytes
        self.written = 0  # rows acknowledged by Cassandra
        self.retried = 0  # requests sent again after a failure
        self.requests = 0  # requests sent (batches and single rows)
        self.server_warnings = 0  # responses carrying a Cassandra warning (e.g. a batch above a threshold)

    def open(self) -> None:
        from cassandra import ConsistencyLevel
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import ConstantReconnectionPolicy, RoundRobinPolicy

        from streamrec.services.clients import cassandra_cluster_kwargs

        profile = ExecutionProfile(
            load_balancing_policy=RoundRobinPolicy(),
            consistency_level=getattr(ConsistencyLevel, self.conf.consistency),
            request_timeout=self.conf.request_timeout_s,
        )
        # TCP_NODELAY: the driver writes a request in 4 KiB chunks; without it a batch a little over 4 KiB waits for
        # the server's delayed ACK (Nagle), ~40 ms per request.
        # A node that went away is tried again every second (the driver's default backs off to 10 minutes: after a
        # 30 s outage the writes would wait for its next attempt, up to a minute later).
        cluster = Cluster(self.hosts, port=self.port, execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                          protocol_version=5, sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                          reconnection_policy=ConstantReconnectionPolicy(1.0, max_attempts=None),
                          **(cassandra_cluster_kwargs(self.security, self.hosts, self.port) if self.security else {}))
        self._session = cluster.connect(self.conf.keyspace)
        ks, prep = self.conf.keyspace, self._session.prepare
        self._stmts = {
            "recommendation": _Stmt(prep(
                f"INSERT INTO {ks}.recommendations_by_user "
                "(user_key, key_id, items, scores, model_version, event_id, event_ts) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "USING TIMESTAMP ?"), bind_recommendation),
            "fraud_flag": _Stmt(prep(
                f"INSERT INTO {ks}.fraud_flags "
                "(subject_kind, subject, flag_id, score, reasons, evidence, model_version, event_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"), bind_flag),
            "deletion": _Stmt(prep(
                f"DELETE FROM {ks}.recommendations_by_user USING TIMESTAMP ? WHERE user_key = ?"), bind_deletion),
            "deletion:fraud_flags": _Stmt(prep(
                f"DELETE FROM {ks}.fraud_flags USING TIMESTAMP ? WHERE subject_kind = ? AND subject = ?"),
                bind_flag_deletion),
        }
        self._stmts["detector_alarm"] = self._stmts["fraud_flag"]  # subject_kind 'detector', subject its name

    # ------------------------------------------------------------------ queueing rows

    def write(self, record: Mapping[str, Any]) -> None:
        """Queue one record; blocks while `max_in_flight` rows are pending; raises if an earlier write failed all its
        retries, or if the record is not one the sink can write."""
        if self._failed:
            self._retry_failed()
        self._add(record)

    def write_many(self, records: Iterable[Mapping[str, Any]]) -> None:
        """`write` of each record (the same batching; one call per batch of rows). `flush()` waits for them."""
        if self._failed:
            self._retry_failed()
        add = self._add
        for r in records:
            add(r)

    def _add(self, record: Mapping[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "deletion" and record.get("table", "recommendations_by_user") != "recommendations_by_user":
            kind = f"deletion:{record['table']}"
        stmt = self._stmts.get(kind) if isinstance(kind, str) else None
        if stmt is None:
            raise SinkError(f"record kind {kind!r} has no Cassandra table")
        try:
            values = stmt.values(stmt.binder(record))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, struct.error) as e:
            raise SinkError(f"malformed {kind} record for Cassandra: {e!r}") from e
        size = _size(values)
        g = self._open
        if g.rows and (len(g.rows) >= self._max_rows or g.nbytes + size > self._max_bytes):
            self._send(g, 0)
            g = self._open = _Group()
        g.rows.append((stmt.prepared, values))
        g.nbytes += size
        if len(g.rows) >= self._max_rows:
            self._send(g, 0)
            self._open = _Group()

    # ------------------------------------------------------------------ requests

    def _send(self, group: _Group, attempt: int) -> None:
        n = len(group.rows)
        with self._cv:
            while self._in_flight and self._in_flight + n > self.conf.max_in_flight:
                self._cv.wait()
            self._in_flight += n
        try:
            fut = self._session.execute_async(self._request(group))
        except Exception as e:  # e.g. NoHostAvailable raised synchronously
            self._failed_request(e, group, attempt)
            return
        self.requests += 1
        fut.add_callbacks(self._landed, self._failed_request, callback_args=(n, fut),
                          errback_args=(group, attempt))

    def _request(self, group: _Group) -> Any:
        from cassandra.query import BatchStatement, BatchType, BoundStatement

        if len(group.rows) == 1:
            prepared, values = group.rows[0]
            bound = BoundStatement(prepared)
            bound.values = values
            return bound
        batch = BatchStatement(BatchType.UNLOGGED)
        batch.is_idempotent = True
        for prepared, values in group.rows:
            bound = BoundStatement(prepared)
            bound.values = values
            batch.add(bound)
        return batch

    def _landed(self, _result: Any, n: int, fut: Any) -> None:  # on the driver's event loop thread
        warnings = fut.warnings
        with self._cv:
            if warnings:
                self.server_warnings += 1
                nth = self.server_warnings
            self._in_flight -= n
            self.written += n
            self._cv.notify_all()
        if warnings and (nth <= 5 or nth % 1000 == 0):
            log.warning("Cassandra warned (%d so far): %s", nth, "; ".join(warnings))

    def _failed_request(self, err: BaseException, group: _Group, attempt: int) -> None:  # event loop thread
        with self._cv:
            self._in_flight -= len(group.rows)
            self._failed.append((group, attempt, err))
            self._cv.notify_all()

    def _retry_failed(self) -> None:
        from cassandra import InvalidRequest

        while True:
            with self._cv:
                if not self._failed:
                    return
                group, attempt, err = self._failed.popleft()
            if isinstance(err, InvalidRequest) and "too large" in str(err) and len(group.rows) > 1:
                half = len(group.rows) // 2  # above batch_size_fail_threshold: send the halves
                for part in (group.rows[:half], group.rows[half:]):
                    g = _Group()
                    g.rows = part
                    self.retried += 1
                    self._send(g, attempt)
                continue
            if attempt >= self.conf.retries:
                raise SinkError(f"Cassandra write of {len(group.rows)} row(s) failed after {attempt} retries: {err!r}")
            # backpressure while Cassandra struggles or is away
            time.sleep(min(self.conf.backoff_ms * 2 ** min(attempt, 30), self.conf.max_backoff_ms) / 1000.0)
            self.retried += 1
            self._send(group, attempt + 1)

    def send(self) -> None:
        """Send the open batch now, without waiting for it (nor for anything else) to land; failures surface on the
        next `write`, `send` or `flush`."""
        if self._failed:
            self._retry_failed()
        if self._open.rows:
            g, self._open = self._open, _Group()
            self._send(g, 0)

    def flush(self, timeout_s: float = 120.0) -> None:
        """Send the open batch and wait until every queued write has landed (retrying failures); raise if one
        cannot."""
        if self._open.rows:
            g, self._open = self._open, _Group()
            self._send(g, 0)
        deadline = time.monotonic() + timeout_s
        while True:
            self._retry_failed()
            with self._cv:
                if self._in_flight == 0 and not self._failed:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SinkError(f"{self._in_flight} Cassandra rows still pending after {timeout_s} s")
                if not self._failed:
                    self._cv.wait(left)

    def close(self) -> None:
        if self._session is not None:
            try:
                self.flush()
            finally:
                self._session.cluster.shutdown()
                self._session = None
