"""`streamrec bench`'s end-to-end harness on the real Kafka and Cassandra, with the plain consumer (two processes in
one group) on a few hundred events: paced and backlog phases, latency and throughput measured, outputs in Kafka and
Cassandra, and everything the run created removed afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamrec.services.clients import kafka_kwargs
from tests.integration.test_kafka import consume_all
from tests.tiny_model import TINY_MODEL_YAML

RATE = 40.0
WINDOW_S = 8.0


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamrec.bench.models import synthetic_artifact

    d = tmp_path_factory.mktemp("bench-model")
    (d / "tiny.yaml").write_text(TINY_MODEL_YAML)
    return synthetic_artifact(3000, model_conf=d / "tiny.yaml", cache_dir=d / "cache")  # the simulator's catalogue


def test_consumer_phases(kafka_bootstrap: str, cassandra_up: Any, bench_model: Path, tmp_path: Path) -> None:
    from kafka import KafkaAdminClient

    from streamrec.bench.e2e import E2E, Budget, Workload
    from streamrec.bench.report import kept_pace
    from streamrec.services.cassandra import connect

    budget = Budget(window_s=WINDOW_S, startup_timeout_s=120, backlog_events=600, drain_s=4, partitions=2)
    workload = Workload.make(1000, 3, tmp_path / "stream.pkl", budget.partitions)
    e = E2E(tmp_path, "local.yaml", "operators.yaml", bench_model, budget, say=lambda _m: None)
    e.setup()
    try:
        paced = e.run_phase("consumer", 2, RATE, workload)
        e.prepare_backlog(workload)
        backlog = e.run_phase("consumer", 1, 0.0, workload)

        c = e.svc.cassandra
        session = connect(c.contact_points, c.native_port, keyspace=e.keyspace)
        try:
            rows = session.execute("SELECT count(*) FROM recommendations_by_user").one()[0]
        finally:
            session.cluster.shutdown()
        recs_topic = next(t for t in e.topics if "-consumer-p2-40eps-" in t and t.endswith("-recommendations"))
        recs = consume_all(kafka_bootstrap, recs_topic, expected=1, timeout_s=15)
    finally:
        e.cleanup()

    # paced: both processes got a partition, everything sent was processed, at the offered rate
    assert paced["error"] is None, paced
    assert paced["balanced"], paced["final_assignments"]
    assert paced["load"]["acked"] == paced["offered_events"] >= RATE * WINDOW_S * 0.9
    assert paced["caught_up"], (paced["processed_at_end"], paced["offered_events"])
    assert paced["kept_pace"] is kept_pace(paced["throughput_eps"], paced["load"]["achieved_rate"], True)
    assert paced["throughput_eps"] == pytest.approx(RATE, rel=0.3)
    stats = [s for s in paced["consumer_stats"] if s]
    assert len(stats) == 2 and all(s["events"] > 0 for s in stats)
    assert sum(s["events"] for s in stats) >= paced["offered_events"]  # + the warm-up message, + re-deliveries
    lat = paced["latency_ms"]["read_committed"]
    # an event's latency is measured when a list carries its id: at most one list per user per debounce interval
    # (an event after its user's due debounce timer is debounced itself, the timer's list built first), ~1 in 4 here
    assert lat["n"] > 0.15 * paced["offered_events"] and 0 < lat["p50"] <= lat["p95"] <= lat["p99"] < 10_000
    assert sum(s["sent"].get("recommendations", 0) for s in stats) == len(recs) == paced["recommendations_seen"][
        "read_committed"]
    assert rows > 0  # the Cassandra sink wrote
    cores = paced["cpu_cores"]
    assert cores["system_under_test"] > 0 and cores["machine_total"] >= cores["system_under_test"]

    # backlog: one process, the window opened at its first output, the 600 events done
    assert backlog["error"] is None, backlog
    assert backlog["startup_s"] > 0 and backlog["throughput_eps"] and backlog["throughput_eps"] > 0
    assert backlog["caught_up"] and backlog["committed_at_end"] == 600
    assert backlog["kept_pace"] is None  # no offered rate to keep pace with
    # the 600 were done within the window (which ends when the commit shows it): the fitted rate is at least about
    # their average over it, however short the window was
    assert backlog["throughput_eps"] >= 0.5 * 600 / max(backlog["window_s"], 0.1), backlog

    # nothing left behind
    admin = KafkaAdminClient(**kafka_kwargs(kafka_bootstrap))
    try:
        left = set(admin.list_topics()) & set(e.topics)
    finally:
        admin.close()
    assert not left
