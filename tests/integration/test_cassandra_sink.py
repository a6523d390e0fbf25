"""The Cassandra sink against the real node: idempotent, event-time ordered, bounded, deletions."""

from __future__ import annotations

from streamrec.services.settings import ServicesConf
from streamrec.sinks import CassandraWriter, SinkError, WriterConf


def rec(user: str, ts: int, items: list[str], event_id: str = "e") -> dict:
    return {"kind": "recommendation", "user_key": user, "key_id": "k1", "items": items,
            "scores": [1.0 / (i + 1) for i in range(len(items))], "model_version": "v1", "event_id": event_id,
            "event_ts": ts}


def writer(conf: ServicesConf, keyspace: str, **kw: int) -> CassandraWriter:
    w = CassandraWriter(conf.cassandra.contact_points, conf.cassandra.native_port,
                        WriterConf(keyspace=keyspace, consistency="ONE", **kw))
    w.open()
    return w


def test_replay_is_idempotent_and_older_events_never_win(cassandra_up, cassandra_keyspace, cassandra_session):
    w = writer(cassandra_up, cassandra_keyspace, max_in_flight=4)
    records = [rec(f"sink-u{i}", 1_700_000_000_000 + i, [f"i{i}", f"j{i}"], f"e{i}") for i in range(300)]
    ours = {r["user_key"] for r in records}  # the keyspace is shared with other tests
    for r in records:
        w.write(r)
    w.flush()
    first = {row.user_key: (list(row.items), row.event_id) for row in
             cassandra_session.execute("SELECT user_key, items, event_id FROM recommendations_by_user")
             if row.user_key in ours}
    # A replay (same records, reversed order) and a stale update for u0 that arrives late.
    for r in reversed(records):
        w.write(r)
    w.write(rec("sink-u0", 1_600_000_000_000, ["stale"], "old"))
    w.flush()
    again = {row.user_key: (list(row.items), row.event_id) for row in
             cassandra_session.execute("SELECT user_key, items, event_id FROM recommendations_by_user")
             if row.user_key in ours}
    assert len(first) == 300
    assert again == first
    assert w.written == 601
    w.close()


def test_flags_and_deletion(cassandra_up, cassandra_keyspace, cassandra_session):
    w = writer(cassandra_up, cassandra_keyspace)
    flag = {"kind": "fraud_flag", "subject_kind": "user", "subject": "ux", "flag_id": "f1", "score": 0.9,
            "reasons": ["velocity_burst"], "evidence": {"events_per_min": 120}, "model_version": "v1",
            "event_ts": 1_700_000_000_000}
    w.write(flag)
    w.write(flag)  # replayed: same row
    w.write(rec("ux", 1_700_000_000_000, ["a"]))
    w.flush()
    rows = list(cassandra_session.execute(
        "SELECT flag_id, score, reasons, evidence FROM fraud_flags WHERE subject_kind='user' AND subject='ux'"))
    assert [(r.flag_id, r.reasons) for r in rows] == [("f1", ["velocity_burst"])]
    assert '"events_per_min": 120' in rows[0].evidence
    w.write({"kind": "deletion", "user_key": "ux", "event_ts": 1_700_000_000_001})
    w.flush()
    assert cassandra_session.execute("SELECT * FROM recommendations_by_user WHERE user_key='ux'").one() is None
    w.close()


def test_unknown_kind_is_an_error(cassandra_up, cassandra_keyspace):
    w = writer(cassandra_up, cassandra_keyspace)
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
