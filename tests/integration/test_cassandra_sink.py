"""The Cassandra sink against the real node: idempotent, event-time ordered, bounded, deletions, batched, retried."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from streamrec.services.cassandra import apply_schema, connect
from streamrec.services.settings import ServicesConf
from streamrec.sinks import CassandraWriter, SinkError, WriterConf


@pytest.fixture(scope="module")
def sink_keyspace(cassandra_up: ServicesConf) -> Iterator[str]:
    """A keyspace of this module's own (the session one is shared with tests that count its rows)."""
    c = cassandra_up.cassandra
    ks = f"test_sink_{uuid.uuid4().hex[:12]}"
    apply_schema(c.contact_points, c.native_port, c, keyspace=ks)
    yield ks
    session = connect(c.contact_points, c.native_port)
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=60)
    finally:
        session.cluster.shutdown()


@pytest.fixture
def sink_session(cassandra_up: ServicesConf, sink_keyspace: str) -> Iterator[Any]:
    c = cassandra_up.cassandra
    session = connect(c.contact_points, c.native_port, keyspace=sink_keyspace)
    yield session
    session.cluster.shutdown()


def rec(user: str, ts: int, items: list[str], event_id: str = "e") -> dict:
    return {"kind": "recommendation", "user_key": user, "key_id": "k1", "items": items,
            "scores": [1.0 / (i + 1) for i in range(len(items))], "model_version": "v1", "event_id": event_id,
            "event_ts": ts}


def flag(subject: str, flag_id: str, ts: int) -> dict:
    return {"kind": "fraud_flag", "subject_kind": "user", "subject": subject, "flag_id": flag_id, "score": 0.9,
            "reasons": ["velocity_burst"], "evidence": {"events_per_min": 120}, "model_version": "v1", "event_ts": ts}


def writer(conf: ServicesConf, keyspace: str, **kw: Any) -> CassandraWriter:
    w = CassandraWriter(conf.cassandra.contact_points, conf.cassandra.native_port,
                        WriterConf(keyspace=keyspace, consistency="ONE", **kw), security=conf.cassandra.security)
    w.open()
    return w


def recs_of(session: Any, users: set[str]) -> dict[str, tuple[list[str], str, int]]:
    """user -> (items, event_id, write time of `items` in µs), for `users` only."""
    return {row.user_key: (list(row.items), row.event_id, row.wt) for row in
            session.execute("SELECT user_key, items, event_id, WRITETIME(items) AS wt FROM recommendations_by_user")
            if row.user_key in users}


def count_requests(w: CassandraWriter) -> list[int]:
    """Wrap the session's `execute_async`: the rows in flight at each request (its own included) are recorded."""
    seen: list[int] = []
    real = w._session.execute_async

    def execute_async(query: Any, *a: Any, **kw: Any) -> Any:
        seen.append(w._in_flight)
        return real(query, *a, **kw)

    w._session.execute_async = execute_async
    return seen


def test_replay_is_idempotent_and_older_events_never_win(cassandra_up, sink_keyspace, sink_session):
    w = writer(cassandra_up, sink_keyspace, max_in_flight=4)
    records = [rec(f"sink-u{i}", 1_700_000_000_000 + i, [f"i{i}", f"j{i}"], f"e{i}") for i in range(300)]
    ours = {r["user_key"] for r in records}
    for r in records:
        w.write(r)
    w.flush()
    first = recs_of(sink_session, ours)
    # A replay (same records, reversed order) and a stale update for u0 that arrives late.
    for r in reversed(records):
        w.write(r)
    w.write(rec("sink-u0", 1_600_000_000_000, ["stale"], "old"))
    w.flush()
    again = recs_of(sink_session, ours)
    assert len(first) == 300
    assert again == first
    assert {u: wt for u, (_, _, wt) in first.items()} == {r["user_key"]: r["event_ts"] * 1000 for r in records}
    assert w.written == 601
    w.close()


def test_flags_and_deletion(cassandra_up, sink_keyspace, sink_session):
    w = writer(cassandra_up, sink_keyspace)
    f = flag("ux", "f1", 1_700_000_000_000)
    w.write(f)
    w.write(f)  # replayed: same row
    w.write(rec("ux", 1_700_000_000_000, ["a"]))
    w.flush()
    rows = list(sink_session.execute(
        "SELECT flag_id, score, reasons, evidence FROM fraud_flags WHERE subject_kind='user' AND subject='ux'"))
    assert [(r.flag_id, r.reasons) for r in rows] == [("f1", ["velocity_burst"])]
    assert rows[0].evidence == '{"events_per_min":120}'
    w.write({"kind": "deletion", "user_key": "ux", "event_ts": 1_700_000_000_001})
    w.flush()
    assert sink_session.execute("SELECT * FROM recommendations_by_user WHERE user_key='ux'").one() is None
    w.close()


def test_erasure_deletes_the_users_flags_up_to_its_event_time(cassandra_up, sink_keyspace, sink_session):
    """The erase of a user writes one deletion per table (operators.user): both are applied, at the erase's event
    time, so a flag raised after the erase survives and one raised before does not."""
    w = writer(cassandra_up, sink_keyspace)
    w.write_many([flag("uy", "old", 1_700_000_000_000), flag("uy", "new", 1_700_000_000_009),
                  flag("uz", "other", 1_700_000_000_000), rec("uy", 1_700_000_000_000, ["a"])])
    w.flush()
    base = {"kind": "deletion", "target": "cassandra", "user_key": "uy", "event_ts": 1_700_000_000_005}
    w.write_many([{**base, "table": "recommendations_by_user"},
                  {**base, "table": "fraud_flags", "subject_kind": "user", "subject": "uy"}])
    w.flush()
    flags = {(r.subject, r.flag_id) for r in sink_session.execute("SELECT subject, flag_id FROM fraud_flags")}
    assert ("uy", "old") not in flags
    assert {("uy", "new"), ("uz", "other")} <= flags
    assert sink_session.execute("SELECT * FROM recommendations_by_user WHERE user_key='uy'").one() is None
    with pytest.raises(SinkError, match="has no Cassandra table"):
        w.write({**base, "table": "nope"})
    w.close()


def test_rows_are_grouped_into_bounded_batches_each_with_its_own_timestamp(cassandra_up, sink_keyspace,
                                                                           sink_session):
    w = writer(cassandra_up, sink_keyspace, batch_max_rows=10, max_in_flight=20)
    in_flight = count_requests(w)
    records = [rec(f"grp-u{i}", 1_700_000_100_000 + 7 * i, [f"i{i}"], f"e{i}") for i in range(45)]
    w.write_many(records)
    assert w.requests == 4  # 4 full batches of 10 sent as they filled; 5 rows in the open batch
    w.flush()
    assert w.requests == 5 and w.written == 45 and w.server_warnings == 0
    assert max(in_flight) == 20  # rows pending after each send: never more than max_in_flight
    got = recs_of(sink_session, {r["user_key"] for r in records})
    assert got == {r["user_key"]: (r["items"], r["event_id"], r["event_ts"] * 1000) for r in records}
    # Big rows: the byte budget splits batches before Cassandra's 5 KiB warning threshold (no warning comes back).
    big = [rec(f"grp-big{i}", 1_700_000_100_000, [f"item-with-a-long-id-{j:06d}" for j in range(40)]) for i in range(9)]
    before = w.requests
    w.write_many(big)
    w.flush()
    assert w.requests - before == 5  # ~2.1 KB each: 2 rows per 4 KiB batch
    assert w.server_warnings == 0
    w.close()


def test_a_failed_batch_is_retried_whole_and_a_half_applied_one_converges(cassandra_up, sink_keyspace,
                                                                          sink_session):
    from cassandra import OperationTimedOut

    w = writer(cassandra_up, sink_keyspace, batch_max_rows=10, backoff_ms=1)
    real = w._session.execute_async
    calls = {"n": 0}

    def flaky(query: Any, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # applied, but the client gives up waiting: the batch is sent again
            real(query, *a, **kw).result()
            raise OperationTimedOut("test: applied, then timed out")
        if calls["n"] == 2:  # fails before reaching Cassandra
            raise OperationTimedOut("test: not sent")
        return real(query, *a, **kw)

    w._session.execute_async = flaky
    records = [rec(f"retry-u{i}", 1_700_000_200_000 + i, [f"i{i}"], f"e{i}") for i in range(20)]
    w.write_many(records)
    w.flush()
    assert w.retried == 2 and w.written == 20
    assert recs_of(sink_session, {r["user_key"] for r in records}) == {
        r["user_key"]: (r["items"], r["event_id"], r["event_ts"] * 1000) for r in records}
    w.close()


def test_a_batch_cassandra_rejects_as_too_large_is_split(cassandra_up, sink_keyspace, sink_session):
    """Above batch_size_fail_threshold (50 KiB) Cassandra refuses the batch: it is sent again in halves."""
    w = writer(cassandra_up, sink_keyspace, batch_max_rows=60, batch_max_bytes=1 << 30, max_in_flight=60)
    records = [rec(f"huge-u{i}", 1_700_000_300_000, [f"item-with-a-long-id-{j:06d}" for j in range(50)])
               for i in range(60)]  # ~125 KB
    w.write_many(records)
    w.flush()
    assert w.retried >= 2 and w.written == 60
    assert len(recs_of(sink_session, {r["user_key"] for r in records})) == 60
    w.close()


def test_a_write_that_exhausts_its_retries_raises(cassandra_up, sink_keyspace):
    w = writer(cassandra_up, sink_keyspace, retries=2, backoff_ms=1, request_timeout_s=0.000001)
    w.write_many([rec(f"to-u{i}", 1_700_000_400_000, ["a"]) for i in range(3)])
    with pytest.raises(SinkError, match="after 2 retries"):
        w.flush(timeout_s=30)
    assert w.retried == 2
    w._session.cluster.shutdown()


def test_fast_serialisation_is_the_drivers(cassandra_up, sink_keyspace):
    """The sink's own serialisation gives the driver's bytes (edge cases included), or falls back to the driver."""
    w = writer(cassandra_up, sink_keyspace)
    records = [
        rec("ü-ß-😀", 0, []),
        {**rec("u", 2**40, ["x" * 300, "é"]), "model_version": None, "scores": [0, 3.4e38, -1e-40]},
        {**rec("u", 1, []), "items": [{"item_id": 7, "score": 2}, "s", 5], "scores": None},
        {**flag("u", "f", 1), "score": 1, "evidence": "raw", "reasons": []},
        {"kind": "deletion", "user_key": "u", "event_ts": 5},
        {"kind": "deletion", "table": "fraud_flags", "user_key": "u", "event_ts": 5},
    ]
    for r in records:
        kind = "deletion:fraud_flags" if r.get("table") == "fraud_flags" else r["kind"]
        stmt = w._stmts[kind]
        assert stmt.fast is not None
        params = stmt.binder(r)
        assert stmt.values(params) == stmt.prepared.bind(params).values
    for bad in ({**rec("u", 1, ["a"]), "scores": [1e39]},  # out of float32 range, as for the driver
                {**rec("u", 1, ["a"]), "user_key": 5}):
        with pytest.raises(SinkError, match="malformed"):
            w.write(bad)
    w.close()


def test_unknown_kind_is_an_error(cassandra_up, sink_keyspace):
    w = writer(cassandra_up, sink_keyspace)
    try:
        for bad in ({"kind": "nope"}, {"kind": "recommendation", "user_key": "u"}):
            try:
                w.write(bad)
            except SinkError as e:
                assert "nope" in str(e) or "malformed" in str(e)
            else:
                raise AssertionError(f"accepted {bad}")
    finally:
        w.close()
