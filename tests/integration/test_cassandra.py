"""The real Cassandra node: the product schema applies, and 1,000 rows written come back identical."""

from __future__ import annotations

import datetime as dt

from cassandra.concurrent import execute_concurrent_with_args


def test_write_and_read_back_1000_rows(cassandra_session) -> None:
    insert = cassandra_session.prepare(
        "INSERT INTO recommendations_by_user (user_key, key_id, items, scores, model_version, event_id, event_ts) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)")
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = [
        (f"user-{i:04d}", "k1", [f"item-{(i * 7 + j) % 500}" for j in range(10)],
         [float(10 - j) / 2 for j in range(10)], "v-test", f"ev-{i}", base + dt.timedelta(milliseconds=i))
        for i in range(1000)
    ]
    results = execute_concurrent_with_args(cassandra_session, insert, rows, concurrency=64,
                                           raise_on_first_error=True)
    assert all(ok for ok, _ in results)

    select = cassandra_session.prepare(
        "SELECT user_key, key_id, items, scores, model_version, event_id, event_ts "
        "FROM recommendations_by_user WHERE user_key = ?")
    got = {}
    for ok, res in execute_concurrent_with_args(cassandra_session, select, [(r[0],) for r in rows],
                                                concurrency=64):
        assert ok
        row = res.one()
        got[row.user_key] = row
    assert len(got) == 1000
    for r in rows:
        g = got[r[0]]
        assert (g.key_id, list(g.items), g.model_version, g.event_id) == (r[1], r[2], r[4], r[5])
        assert list(g.scores) == r[3]
        assert g.event_ts.replace(tzinfo=dt.UTC) == r[6]
    # the session's keyspace is shared with the other tests (the job tests write their users' rows there too)
    ours = [r.user_key for r in cassandra_session.execute("SELECT user_key FROM recommendations_by_user")
            if r.user_key.startswith("user-")]
    assert len(ours) == 1000
