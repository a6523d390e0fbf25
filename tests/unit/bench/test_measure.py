"""The harness's arithmetic: throughput from progress and from committed offsets, latency percentiles, the
partitioning the load generator states, and the exclusive stage breakdown of the profile."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamrec.bench.e2e import (
    CheckpointSampler,
    backlog_completion,
    checkpoint_summary,
    commit_throughput,
    percentiles,
    progress_series,
    progress_throughput,
)
from streamrec.bench.load import partition_of
from streamrec.bench.micro import profile_breakdown
from streamrec.bench.report import kept_pace


def test_progress_series_sums_the_newest_line_per_partition() -> None:
    # lines 0..5: partitions 0,1,0,1,0,1 -> positions 0,0,1,1,2,2
    part = np.array([0, 1, 0, 1, 0, 1])
    pos = np.array([0, 0, 1, 1, 2, 2])
    line_of = {f"e{i}": i for i in range(6)}
    seen = {"e2": 1.0, "e1": 2.0, "e0": 3.0, "e5": 4.0}  # e0 after e2: no progress in partition 0
    assert progress_series(seen, line_of, part, pos, 2) == [(1.0, 2), (2.0, 3), (4.0, 5)]


def test_progress_throughput_skips_the_first_seconds() -> None:
    series = [(float(t), 100 * t) for t in range(0, 21)]
    series[1] = (1.0, 5)  # start-up: slow
    tp = progress_throughput(series, 0.0, 20.0, skip_s=2.0)
    assert tp["eps"] == pytest.approx(100.0)
    assert progress_throughput([], 0, 1)["eps"] is None


def test_progress_throughput_is_robust_to_bursts() -> None:
    # 100 events/s processed, but outputs appear in bursts every 5 s (2.5 s after the work), plus a start-up burst
    series = [(0.0, 1000)] + [(5.0 * k + 2.5, 1000 + 500 * k) for k in range(1, 9)]
    for t_to in (20.0, 21.0, 22.4, 23.0, 39.0):
        assert progress_throughput(series, 0.0, t_to)["eps"] == pytest.approx(100.0, rel=0.25), t_to


def test_progress_throughput_of_a_backlog_done_in_seconds() -> None:
    # 600 events at 400/s: done 1.5 s after the first output; a 1 s grid would have too few points (was None)
    series = [(10.0 + i / 400.0, i + 1) for i in range(600)]
    assert progress_throughput(series, 10.0, series[-1][0])["eps"] == pytest.approx(400.0, rel=0.05)
    assert progress_throughput(series, 10.0, 10.0)["eps"] is None  # no span, no rate


def test_progress_throughput_flags_a_backlog_done_at_its_first_output() -> None:
    # the 2026-12-04 quick bench at parallelism 4: 27,524 of 30,000 outputs within 0.82 s of the first (the work
    # was done before it, timers waiting for the watermark), the rest by 3.59 s: a slope of thousands per second
    # that no sustained rate supports. The same job on a backlog five times larger: a long steady staircase.
    burst = [(0.0, 42), (0.82, 27_524), (1.5, 29_926), (3.59, 29_984)]
    tp = progress_throughput(burst, 0.0, 3.59)
    assert tp["short"] and tp["eps"] is not None and tp["eps"] > 4_000
    steady = [(float(t), 2_800 * t) for t in range(0, 45)]
    tp = progress_throughput(steady, 0.0, 44.0)
    assert not tp["short"] and tp["eps"] == pytest.approx(2_800.0)


def test_kept_pace_needs_the_rate_during_the_load_not_only_the_drain() -> None:
    # 20 s of load at 1,000 events/s sent. A system 3 s behind but at the sent rate kept pace; one that processed
    # 600/s during the load and the rest in the drain after it caught up all the same, but did not keep pace
    behind = [(float(t), 1000 * max(t - 3, 0)) for t in range(0, 24)]
    slow = [(float(t), 600 * t) for t in range(0, 21)] + [(20.0 + k, 12_000 + 1000 * k) for k in range(1, 9)]
    for series, pace in ((behind, True), (slow, False)):
        eps = progress_throughput(series, 0.0, 21.0)["eps"]
        assert series[-1][1] >= 20_000  # everything was processed by the end of the phase
        assert kept_pace(eps, 1000.0, caught_up=True) is pace, eps
    assert not kept_pace(1000.0, 1000.0, caught_up=False)  # at the rate, but some of it never processed
    assert not kept_pace(None, 1000.0, caught_up=True) and not kept_pace(990.0, None, caught_up=True)


def test_backlog_completion_from_the_first_output_to_done() -> None:
    # steps of a few large bundles, then a straggler long after 99.5 % was reached
    series = [(100.0, 1000), (110.0, 50_000), (130.0, 99_600), (150.0, 100_000)]
    assert backlog_completion(series, 100_000) == {"done_s": 30.0, "eps": pytest.approx(98_600 / 30, abs=0.1)}
    assert backlog_completion(series[:2], 100_000) == {"done_s": None, "eps": None}  # not done in the window
    assert backlog_completion([], 100) == {"done_s": None, "eps": None}


def test_commit_throughput_is_the_window_average() -> None:
    samples = [(float(t), 500 * (t // 5)) for t in range(0, 31)]  # commits of 500 every 5 s
    tp = commit_throughput(samples, 5.0, 30.0)
    assert tp["eps"] == pytest.approx(100.0) and tp["commits"] == 5
    flat = [(float(t), 7) for t in range(10)]
    assert commit_throughput(flat, 0.0, 9.0)["eps"] == 0.0  # no checkpoint completed: nothing durable


def test_percentiles() -> None:
    p = percentiles(list(range(1, 101)))
    assert p["n"] == 100 and p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.0, abs=0.05)
    assert percentiles([])["p99"] is None


def test_partition_of_matches_kafkas_default_partitioner() -> None:
    from kafka.partitioner.default import DefaultPartitioner

    class Cluster:
        def topics(self) -> set[str]:
            return {"t"}

        def partitions_for_topic(self, _t: str) -> set[int]:
            return {0, 1, 2}

        def available_partitions_for_topic(self, _t: str) -> set[int]:
            return {0, 1, 2}

    dp = DefaultPartitioner()
    for k in (b"u0000001", b"u0002075", b"x", b"user-42"):
        assert partition_of(k, 0, 3) == dp.partition("t", k, k, None, None, Cluster())
    assert [partition_of(None, i, 3) for i in range(4)] == [0, 1, 2, 0]


def test_profile_breakdown_is_exclusive() -> None:
    secs = {"parse": 1.0, "user_operator": 6.0, "user_timer": 1.0, "state_decode": 1.0, "state_encode": 1.0,
            "model_total": 3.0, "model_onnxruntime_run": 2.0, "kafka_send": 0.5, "poll": 0.5}  # fmt: skip
    rows = {r["stage"]: r for r in profile_breakdown(secs, 1000)}
    assert rows["model: onnxruntime run"]["us_per_event"] == 2000.0
    assert rows["model: inputs/outputs (Scorer)"]["us_per_event"] == 1000.0
    assert rows["user operator: rest (update, dedup, hashing, pseudonym, records)"]["us_per_event"] == 2000.0
    total = sum(r["us_per_event"] for r in rows.values())
    assert total == pytest.approx(9000.0)  # parse + user step + timers + sinks, nothing counted twice
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0, abs=1e-3)


def test_workload_progress_matches_what_a_partition_reader_processed(bench_model: Any, tmp_path: Any) -> None:
    """A reader of partition 0 only (a consumer that has not reached partition 1): the progress measured from its
    recommendations is what it read, although the stream has duplicates and malformed lines carrying other events'
    ids."""
    import json

    from streamrec.bench import micro
    from streamrec.bench.e2e import Workload

    w = Workload.make(3000, 5, tmp_path / "s.pkl", 2)
    dup_keys: dict[str, set[bytes]] = {}
    for (_payload, key, _), eid in zip(w.stream, w.event_ids, strict=True):
        if key is not None and eid is not None:
            dup_keys.setdefault(eid, set()).add(key)
    assert all(len(k) == 1 for k in dup_keys.values())  # a duplicate is keyed like its original
    assert all(w.stream[line][1] is not None for line in w.line_of.values())  # ids map to valid events' lines
    p0 = [w.stream[i] for i in range(len(w.stream)) if w.part[i] == 0]
    h = micro.make_handler(bench_model)
    first: dict[str, float] = {}
    n_read = 1200
    for t, (payload, _k, ts) in enumerate(p0[:n_read]):
        for name, _key, v in h.handle(payload, ts).kafka:
            if name == "recommendations" and v and '"debounced":false' in v:
                first.setdefault(json.loads(v)["event_id"], float(t))
    progress = w.progress(first)[-1][1]
    assert n_read - 15 <= progress <= n_read


def test_profile_breakdown_without_the_operator_split() -> None:
    rows = profile_breakdown({"parse": 1.0, "user_operator": 5.0, "kafka_send": 1.0, "commit": 0.0}, 1000)
    names = [r["stage"] for r in rows]
    assert names[0].startswith("user operator (") and "not split" in names[0]
    assert not any("flush" in n for n in names)  # a stage that took no time is left out


def test_latency_summary_leaves_the_first_seconds_out_of_after_warmup() -> None:
    """Events sent in the first STEADY_AFTER_S seconds of load count in the whole-phase percentiles only: slow ones
    there (a job's start-up) lift the whole p99, not the after-warm-up one."""
    from streamrec.bench.e2e import STEADY_AFTER_S, latency_summary

    t_from = 100.0
    slow = [(t_from + i * 0.01, 900.0) for i in range(200)]  # the first 2 s: 900 ms each
    fast = [(t_from + STEADY_AFTER_S + i * 0.01, 50.0 + i % 10) for i in range(2000)]
    mid = [(t_from + 5.0 + i * 0.01, 100.0) for i in range(100)]  # before the cut too
    lat = latency_summary(slow + mid + fast, t_from, lower_bound=False)
    assert lat["n"] == 2300 and lat["p99"] == 900.0 and lat["lower_bound"] is False
    steady = lat["after_warmup"]
    assert steady["n"] == 2000 and steady["after_s"] == STEADY_AFTER_S
    assert steady["p99"] is not None and steady["p99"] < 60.0
    assert latency_summary([], t_from, lower_bound=True)["after_warmup"]["p99"] is None


def test_startup_stream_is_other_users_at_the_same_times(tmp_path: Any) -> None:
    """The start-up load: the stream's first valid lines with user and event ids (and keys) prefixed, times kept, the
    malformed lines left out; none of its ids is one of the window's."""
    import json

    from streamrec.bench.e2e import STARTUP_PREFIX, Workload

    w = Workload.make(3000, 5, tmp_path / "s.pkl", 2)
    stream, ids = w.startup_stream(500)
    assert len(stream) == len(ids) == 500
    valid = [(line, eid) for line, eid in zip(w.stream, w.event_ids, strict=True)
             if eid is not None and line[1] is not None and b'"user_id":"' in line[0]][:500]  # fmt: skip
    for (payload, key, ts), eid, ((orig, okey, ots), oid) in zip(stream, ids, valid, strict=True):
        ev, src = json.loads(payload), json.loads(orig)
        assert ev["user_id"] == "startup-" + src["user_id"] and ev["event_id"] == eid == "startup-" + oid
        assert {k: v for k, v in ev.items() if k not in ("user_id", "event_id")} == \
               {k: v for k, v in src.items() if k not in ("user_id", "event_id")}
        assert key == STARTUP_PREFIX + okey and ts == ots
    assert not set(ids) & set(w.line_of)


def test_startup_latency_from_send_times_and_first_seen(tmp_path: Any) -> None:
    """Each start-up event's latency: when its list was first seen minus when it was sent; events never sent or with no
    list are not counted."""
    from types import SimpleNamespace

    from streamrec.bench.e2e import startup_latency

    np.save(tmp_path / "s.npy", np.array([10.0, 11.0, np.nan, 12.0]))
    w = SimpleNamespace(first={"a": 10.2, "b": 11.05, "c": 20.0})
    got = startup_latency({"events": 4, "rate": 2.0, "seconds": 2.0, "ids": ["a", "b", "c", "d"],
                           "send_file": str(tmp_path / "s.npy")}, {"read_committed": w})  # type: ignore[dict-item]
    assert "ids" not in got and "send_file" not in got and got["events"] == 4
    lat = got["latency_ms"]["read_committed"]
    assert lat["n"] == 2 and lat["max"] == pytest.approx(200.0) and lat["p50"] == pytest.approx(125.0)


def test_startup_latency_counts_a_duplicate_line_once_from_its_first_send(tmp_path: Any) -> None:
    """A planted duplicate in the start-up load (the same event id on two lines): one latency, from the first send, as
    the window's own latency does (the duplicate, sent after the list appeared, would otherwise give a negative one)."""
    from types import SimpleNamespace

    from streamrec.bench.e2e import startup_latency

    np.save(tmp_path / "s.npy", np.array([10.0, 30.0]))
    w = SimpleNamespace(first={"a": 10.2})
    got = startup_latency({"events": 2, "ids": ["a", "a"], "send_file": str(tmp_path / "s.npy")},
                          {"read_committed": w})  # type: ignore[dict-item]
    lat = got["latency_ms"]["read_committed"]
    assert lat["n"] == 1 and lat["max"] == pytest.approx(200.0)


def test_send_times_skip_the_malformed_lines_that_carry_valid_events_ids(tmp_path: Any) -> None:
    """A planted malformed line (unkeyed, rejected by the job) carries the id of a valid event sent later: the event's
    send time is its valid line's, not the malformed one's (which once put 30-50 s "latencies" into the maximum)."""
    from streamrec.bench.e2e import Workload, send_times

    w = Workload.make(3000, 5, tmp_path / "s.pkl", 2)
    sent_at = np.arange(len(w.stream), dtype=float)  # line i sent at i s
    sent_at[len(sent_at) // 2] = np.nan  # one line never sent
    got = w.send_times(sent_at)
    earlier = [eid for i, ((_p, key, _t), eid) in enumerate(zip(w.stream, w.event_ids, strict=True))
               if key is None and eid is not None and w.line_of.get(eid, -1) > i]  # fmt: skip
    assert earlier  # the stream has such lines: without them this test would prove nothing
    assert all(got[eid] == float(w.line_of[eid]) for eid in earlier)
    naive = send_times(w.event_ids, sent_at)
    assert all(naive[eid] < got[eid] for eid in earlier)  # what counting them gave
    keyed = {eid for (_p, key, _t), eid in zip(w.stream, w.event_ids, strict=True) if key is not None and eid}
    assert set(got) <= keyed and len(keyed - set(got)) <= 1  # every valid event but (perhaps) the unsent line's


def test_checkpoint_summary_keeps_the_checkpoints_triggered_in_the_window() -> None:
    done = {1: (5.0, 900), 2: (10.0, 300), 3: (15.0, 500), 4: (20.0, 700), 5: (25.0, 5000)}
    s = checkpoint_summary(done, 9.0, 21.0, failed=1)
    assert s == {"n": 3, "p50": 500, "p90": 660, "max": 700, "failed": 1, "failed_in_window": 0,
                 "failure_messages": []}  # fmt: skip
    assert checkpoint_summary(done, 30.0, 40.0) == {"n": 0, "p50": None, "p90": None, "max": None, "failed": 0,
                                                    "failed_in_window": 0, "failure_messages": []}  # fmt: skip


def test_checkpoint_summary_tells_failures_in_the_window_from_the_jobs_count() -> None:
    """Flink's count (`failed`) covers the job's life, the start-up trigger included; the window's own failures
    come from the history entries the sampler kept, with their messages once each."""
    done = {2: (10.0, 300), 5: (25.0, 400)}
    failures = {3: (14.0, "Checkpoint expired before completing."), 4: (18.0, "Checkpoint expired before completing."),
                6: (30.0, "Task failure")}  # fmt: skip
    s = checkpoint_summary(done, 9.0, 21.0, failed=4, failures=failures)
    assert (s["n"], s["failed"], s["failed_in_window"]) == (1, 4, 2)
    assert s["failure_messages"] == ["Checkpoint expired before completing."]
    assert checkpoint_summary(done, 0.0, 9.0, failed=1, failures=failures)["failed_in_window"] == 0


def test_checkpoint_sampler_reads_flinks_rest_answers() -> None:
    """`CheckpointSampler.poll` against an HTTP server answering as Flink's REST API does (the fields it reads,
    in the shape of Flink 2.3's /jobs and /jobs/:id/checkpoints): completed checkpoints kept by id across polls
    (Flink's history holds only the latest few), failed ones apart with their messages, in-progress ones not, the
    failed count taken; a server that does not answer is counted, not raised."""
    import http.server
    import json
    import threading
    import time

    now_ms = int(time.time() * 1000)
    answers: dict[str, object] = {
        "/jobs": {"jobs": [{"id": "old", "status": "CANCELED"}, {"id": "j1", "status": "RUNNING"}]},
        "/jobs/j1/checkpoints": {"counts": {"completed": 2, "failed": 1}, "history": [
            {"id": 3, "status": "IN_PROGRESS", "trigger_timestamp": now_ms, "end_to_end_duration": 10},
            {"id": 2, "status": "COMPLETED", "trigger_timestamp": now_ms - 5000, "end_to_end_duration": 640},
            {"id": 1, "status": "FAILED", "trigger_timestamp": now_ms - 10000, "end_to_end_duration": 99,
             "failure_message": "Checkpoint expired before completing."}]},
    }  # fmt: skip

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = json.dumps(answers.get(self.path, {})).encode()
            self.send_response(200 if self.path in answers else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        s = CheckpointSampler(f"http://127.0.0.1:{server.server_address[1]}")
        s.poll()
        assert set(s.done) == {2} and s.done[2][1] == 640 and s.failed == 1
        assert set(s.failures) == {1} and s.failures[1][1] == "Checkpoint expired before completing."
        assert abs(s.failures[1][0] - (time.monotonic() - 10.0)) < 1.0
        assert abs(s.done[2][0] - (time.monotonic() - 5.0)) < 1.0  # on the monotonic clock
        answers["/jobs/j1/checkpoints"] = {"counts": {"failed": 1}, "history": [
            {"id": 4, "status": "COMPLETED", "trigger_timestamp": now_ms, "end_to_end_duration": 410}]}  # fmt: skip
        s.poll()
        assert {k: v[1] for k, v in s.done.items()} == {2: 640, 4: 410}
    finally:
        server.shutdown()
        server.server_close()
    s.poll()  # gone
    assert s.errors == 1 and len(s.done) == 2
