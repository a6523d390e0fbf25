"""End to end on the real Kafka and Cassandra: the Flink job (`python -m jobs.recommend`, minicluster) and the plain
consumer (`streamrec.bench.consumer`, N processes) on the same simulated events, model, topic layout and sinks; and
the job submitted to the bench's own standalone cluster (system "cluster", `streamrec.bench.cluster`).

Each phase gets fresh output topics and a fresh consumer group, then one of:
- offered rate R (paced): the system is started, a warm-up message must come back as a dead letter (the pipeline is
  live); then a start-up load (`Budget.startup_load_s`, default 2 s from `streamrec bench`): R/s of other users'
  events, whose lists are awaited, because a JVM's first seconds of records run slower than the rest (measured on
  the low-latency profile at 1,000 events/s, 40 s windows: the first 1-3 s at 300-560 ms, the next seconds mostly
  under ~200 ms); its latency is reported apart (`startup_load`). Then a load process sends events at R/s for the
  window;
- max: the events are pre-produced (a backlog) and the system starts on it; the window opens at its first output
  (start-up excluded) and closes when the backlog is done or the window is over.

Throughput. Both systems emit a recommendation at once for about half of the events (the others are debounced), and
which events do is fixed by each user's own sequence. Every line's partition and position in it are known (the load
generator states the partition), so the newest event whose recommendation has appeared, per partition, tells how far
the system has processed: events/s = slope of that progress over the window (read_uncommitted, i.e. as the operator
emits, before the job's checkpoint commits its Kafka transactions). Also reported: the slope of the group's committed
offsets (durable progress; for the job it moves only when a checkpoint completes).

Latency = send time → the recommendation that the event triggered is readable in Kafka: read_committed (what a
product consumer sees; the job's exactly-once outputs appear only when a checkpoint completes) and read_uncommitted
(job only: before the commit). Over events processed within the phase: when a system falls behind, the events it has
not reached are not in the percentiles, which are then lower bounds (and grow with the length of the run).

Every phase is bounded in time and reports what it achieved; it never waits for a system that falls behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from streamrec.bench import sysinfo
from streamrec.bench.consumer import OUTPUT_NAMES as OUTPUTS
from streamrec.bench.report import STEADY_AFTER_S, kept_pace
from streamrec.config import REPO_ROOT
from streamrec.services.flink import FlinkService

BENCH_KEY = "streamrec-bench-key-not-a-secret"
BENCH_KEY_ID = "bench"
WARMUP = b"streamrec bench warm-up: not an event"
STARTUP_PREFIX = b"startup-"  # user / event ids of a paced phase's start-up load (Budget.startup_load_s)


@dataclass(frozen=True)
class Budget:
    """Bounds of every end-to-end phase (all phases finish, whatever the system does)."""

    window_s: float  # measurement window per phase (load duration for paced phases)
    startup_timeout_s: float  # give up on a system that shows no sign of life after this
    backlog_events: int  # events pre-produced for the "max" phases
    drain_s: float  # after the load: time for outputs of what was processed to become visible
    partitions: int = 2  # partitions of every events topic (>= the largest parallelism)
    # paced phases: the system just started gets this many seconds of load at the phase's rate (other users), before
    # the window; its latency is reported apart ("startup"). 0: the window starts with the system's first events
    startup_load_s: float = 0.0
    startup_load_max_events: int = 2000  # at most this many events in it (a 5,000 events/s phase: 0.4 s)


def percentiles(values: list[float] | np.ndarray) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "p99": round(float(p99), 1),
            "max": round(float(v.max()), 1), "n": int(v.size)}  # fmt: skip


def latency_summary(pairs: list[tuple[float, float]], t_from: float, lower_bound: bool) -> dict[str, Any]:
    """A paced phase's latency from (send time, ms) pairs: percentiles over all of them, whether they are a lower
    bound (the system fell behind), and percentiles over those sent `STEADY_AFTER_S` or more after the load began
    at `t_from` ("after_warmup")."""
    out = percentiles([ms for _, ms in pairs])
    out["lower_bound"] = lower_bound
    out["after_warmup"] = {**percentiles([ms for t0, ms in pairs if t0 - t_from >= STEADY_AFTER_S]),
                           "after_s": STEADY_AFTER_S}  # fmt: skip
    return out


def progress_series(first_seen: dict[str, float], line_of: dict[str, int], part: np.ndarray, pos: np.ndarray,
                    partitions: int) -> list[tuple[float, int]]:  # fmt: skip
    """(time, events processed) from the times the event ids' recommendations appeared: per partition, the newest
    line seen so far (its position + 1), summed over partitions."""
    best = [0] * partitions
    out: list[tuple[float, int]] = []
    for eid, t in sorted(first_seen.items(), key=lambda kv: kv[1]):
        line = line_of.get(eid)
        if line is None:
            continue
        p = int(part[line])
        q = int(pos[line]) + 1
        if q > best[p]:
            best[p] = q
            out.append((t, sum(best)))
    return out


def progress_throughput(series: list[tuple[float, int]], t_from: float, t_to: float,
                        skip_s: float = 2.0) -> dict[str, Any]:  # fmt: skip
    """Events/s: least-squares slope of the progress step function sampled every second over [first output after
    t_from + skip_s, t_to]. Outputs can come in bursts (the job's come every few seconds), so a slope between two
    single points would depend on where the window edges fall; the fit over the sampled staircase does not.
    A span under 10 s (a small backlog done in a second or two) is sampled ten times over its length instead.

    `short` is True when fewer than 3 s followed the skipped start-up: the fit then starts at the first output and
    takes in its start-up burst (work done before the first output appeared, e.g. while event-time timers waited
    for every source's watermark), so the slope can be far above the sustained rate (a 30,000-event backlog at
    parallelism 4: 6,358 events/s, against 2,812 on a 150,000-event one in the same session)."""
    pts = [(t, c) for t, c in series if t <= t_to]
    inside = [(t, c) for t, c in pts if t >= t_from]
    out: dict[str, Any] = {"eps": None, "events": (inside[-1][1] - inside[0][1]) if inside else 0, "short": False}
    if not inside:
        return out
    start = inside[0][0] + skip_s
    if t_to - start < 3.0:
        start = inside[0][0]
        out["short"] = True
    span = t_to - start
    if span <= 0:
        return out
    step = 1.0 if span >= 10.0 else span / 10.0
    grid = np.arange(start, t_to + step * 1e-6, step)
    if grid.size < 3:
        return out
    times = np.array([t for t, _ in pts])
    vals = np.array([c for _, c in pts], dtype=np.float64)
    idx = np.searchsorted(times, grid, side="right") - 1
    sampled = np.where(idx >= 0, vals[np.clip(idx, 0, None)], 0.0)
    slope = float(np.polyfit(grid - grid[0], sampled, 1)[0])
    out.update(eps=round(max(slope, 0.0), 1), seconds=round(float(grid[-1] - grid[0]), 1))
    return out


def backlog_completion(series: list[tuple[float, int]], total: int, frac: float = 0.995) -> dict[str, Any]:
    """Backlog phases, beside the slope fit: when progress first reached `frac` of `total` (seconds after the first
    output) and the rate from the first output to then. The job's outputs come in a few large steps (a Python bundle's
    lists leave at its end), so the fit over a window of a few steps depends on where they fall; this does not, but
    it leaves out what was processed before the first output."""
    out: dict[str, Any] = {"done_s": None, "eps": None}
    if not series or total <= 0:
        return out
    t0, c0 = series[0]
    for t, c in series:
        if c >= frac * total:
            span = t - t0
            out.update(done_s=round(span, 1), eps=round((c - c0) / span, 1) if span > 0 else None)
            break
    return out


def commit_throughput(samples: list[tuple[float, int]], t_from: float, t_to: float) -> dict[str, Any]:
    """Durable events/s: growth of the group's committed offsets over [t_from, t_to] divided by its length (the
    job commits only when a checkpoint completes, so its commits are steps, sometimes none in a window)."""
    before = [c for t, c in samples if t <= t_from]
    upto = [c for t, c in samples if t <= t_to]
    inside = [c for t, c in samples if t_from <= t <= t_to]
    c0 = before[-1] if before else 0
    c1 = upto[-1] if upto else c0
    changes = sum(1 for a, b in zip(inside, inside[1:], strict=False) if b != a) + (
        1 if inside and inside[0] != c0 else 0)
    span = t_to - t_from
    return {"eps": round((c1 - c0) / span, 1) if span > 0 else None, "events": c1 - c0, "commits": changes}


class _Background:
    """A daemon thread running `_run()` from `start()`; `stop()` sets `_stop` (which `_run` watches) and joins it."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


class RecWatcher(_Background):
    """Reads a recommendations topic from the beginning; first receive time of each event id whose list was emitted
    at once (`"debounced":false`). Byte search, not JSON parsing: the harness shares the machine."""

    def __init__(self, bootstrap: str, topic: str, isolation: str) -> None:
        from kafka import KafkaConsumer

        from streamrec.services.clients import kafka_kwargs

        super().__init__()
        self.consumer = KafkaConsumer(topic, **kafka_kwargs(bootstrap), auto_offset_reset="earliest",
                                      enable_auto_commit=False, group_id=None, isolation_level=isolation,
                                      fetch_max_wait_ms=100)  # fmt: skip
        self.first: dict[str, float] = {}
        self.count = 0

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.consumer.poll(timeout_ms=100)
                now = time.monotonic()
                for recs in batch.values():
                    for r in recs:
                        self.count += 1
                        v = r.value
                        if v is None or b'"debounced":false' not in v:
                            continue
                        i = v.find(b'"event_id":"')
                        if i >= 0:
                            j = v.find(b'"', i + 12)
                            self.first.setdefault(v[i + 12 : j].decode(), now)
        finally:
            self.consumer.close()


class _Periodic(_Background):
    """A daemon thread calling `tick()` every `every` seconds from `start()` until `stop()`."""

    def __init__(self, every_s: float) -> None:
        super().__init__()
        self.every = every_s

    def tick(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.every)


class OffsetSampler(_Periodic):
    """(time, total committed offset of `topic`) of a consumer group, every `every_s`."""

    def __init__(self, bootstrap: str, group: str, topic: str, every_s: float = 1.0) -> None:
        from kafka import KafkaAdminClient

        from streamrec.services.clients import kafka_kwargs

        super().__init__(every_s)
        self.admin = KafkaAdminClient(**kafka_kwargs(bootstrap), client_id="streamrec-bench-offsets")
        self.group, self.topic = group, topic
        self.samples: list[tuple[float, int]] = []

    def total(self) -> int:
        try:
            offs = self.admin.list_group_offsets({self.group: None}).get(self.group, {})
        except Exception:  # noqa: BLE001 - no group yet
            return 0
        return sum(o.offset for tp, o in offs.items() if tp.topic == self.topic and o.offset >= 0)

    def tick(self) -> None:
        self.samples.append((time.monotonic(), self.total()))

    def stop(self) -> None:
        super().stop()
        self.tick()
        self.admin.close()

    def latest(self) -> int:
        return self.samples[-1][1] if self.samples else 0


class CheckpointSampler(_Periodic):
    """The completed checkpoints of the job running behind `rest_url` (Flink's REST API: the minicluster's, with the
    job's `rest_port`, or the bench cluster's), polled every `every_s` (Flink's REST history keeps only the latest
    few): checkpoint id → (trigger time on the monotonic clock, end-to-end duration in ms). An exactly-once output is
    readable only once the checkpoint after it completes, so the duration adds to its latency.
    `failed`: Flink's count of failed checkpoints over the job's life. It includes triggers that failed before a
    checkpoint existed, which have no id and no history entry: every job phase of the bench showed one, the trigger
    at start-up before every task ran (2026-12-06: `counts.failed` 1 with the first completed checkpoint id 1 and no
    failed entry in the history). `failures`: the failed checkpoints the history showed, id → (trigger time on the
    monotonic clock, Flink's failure message)."""

    def __init__(self, rest_url: str, every_s: float = 2.0) -> None:
        super().__init__(every_s)
        self.rest_url = rest_url.rstrip("/")
        self.done: dict[int, tuple[float, int]] = {}
        self.failed = 0
        self.failures: dict[int, tuple[float, str]] = {}
        self.errors = 0
        self._offset = time.time() - time.monotonic()  # wall clock (REST timestamps) → monotonic

    def _get(self, path: str) -> Any:
        from streamrec.services.flink import rest_json

        return rest_json(self.rest_url + path, timeout_s=5.0)

    def poll(self) -> None:
        try:
            running = [j["id"] for j in self._get("/jobs").get("jobs", []) if j.get("status") == "RUNNING"]
            for job_id in running:
                got = self._get(f"/jobs/{job_id}/checkpoints")
                self.failed = max(self.failed, int((got.get("counts") or {}).get("failed") or 0))
                for h in got.get("history") or []:
                    if h.get("status") == "COMPLETED" and h.get("trigger_timestamp"):
                        self.done[int(h["id"])] = (h["trigger_timestamp"] / 1000 - self._offset,
                                                   int(h["end_to_end_duration"]))  # fmt: skip
                    elif h.get("status") == "FAILED" and h.get("trigger_timestamp"):
                        self.failures[int(h["id"])] = (h["trigger_timestamp"] / 1000 - self._offset,
                                                       str(h.get("failure_message") or ""))  # fmt: skip
        except (OSError, ValueError, KeyError, AttributeError):  # not up yet, or gone: the phase reports what was seen
            self.errors += 1

    def tick(self) -> None:
        self.poll()


def checkpoint_summary(done: Mapping[int, tuple[float, int]], t_from: float, t_to: float, failed: int = 0,
                       failures: Mapping[int, tuple[float, str]] | None = None) -> dict[str, Any]:  # fmt: skip
    """End-to-end durations (ms) of the checkpoints triggered within [t_from, t_to] (monotonic), from
    `CheckpointSampler.done`: count, p50, p90, max; `failed` as Flink counted them over the job's life (with the
    start-up trigger that fails before every task runs: `CheckpointSampler`); `failed_in_window` the failed
    checkpoints of `failures` triggered within the window and `failure_messages` their distinct messages."""
    ms = [d for t, d in done.values() if t_from <= t <= t_to]
    bad = [m for t, m in (failures or {}).values() if t_from <= t <= t_to]
    out: dict[str, Any] = {"n": len(ms), "p50": None, "p90": None, "max": None, "failed": failed,
                           "failed_in_window": len(bad),
                           "failure_messages": sorted({m[:300] for m in bad})}  # fmt: skip
    if ms:
        p50, p90 = np.percentile(np.asarray(ms, dtype=np.float64), [50, 90])
        out.update(p50=round(float(p50)), p90=round(float(p90)), max=max(ms))
    return out


def _first_record(bootstrap: str, topic: str, timeout_s: float, alive: Any) -> float | None:
    """Monotonic time the first record of `topic` is readable (read_uncommitted), or None on timeout / death."""
    from kafka import KafkaConsumer

    from streamrec.services.clients import kafka_kwargs

    c = KafkaConsumer(topic, **kafka_kwargs(bootstrap), auto_offset_reset="earliest", enable_auto_commit=False,
                      group_id=None, fetch_max_wait_ms=100)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if c.poll(timeout_ms=200):
                return time.monotonic()
            if not alive():
                return None
        return None
    finally:
        c.close()


@dataclass
class Workload:
    """The simulated message stream every phase sends (a prefix of it): each line's event id, partition and position
    within its partition."""

    stream: list[tuple[bytes, bytes | None, int]]
    event_ids: list[str | None]
    # per line, its event id if the line is a valid event's (keyed); None for the planted malformed lines (unkeyed),
    # which may carry the event id of any event: the job rejects them, so they count for no event
    valid_ids: list[str | None]
    line_of: dict[str, int]  # event id -> its first valid line
    part: np.ndarray  # (lines,) partition of each line
    pos: np.ndarray  # (lines,) position of the line within its partition
    partitions: int
    users: int
    items: int
    file: Path

    @staticmethod
    def make(n_events: int, seed: int, path: Path, partitions: int) -> Workload:
        import dataclasses

        from streamrec.bench.load import partition_of, save_stream
        from streamrec.data import simulator

        conf = simulator.with_overrides(simulator.load_conf(), events=n_events, seed=seed)
        conf = dataclasses.replace(conf, noise=dataclasses.replace(conf.noise, malformed_rate=0.001,
                                                                   duplicate_rate=0.001))  # fmt: skip
        sim = simulator.simulate(conf)
        ids: list[str | None] = []
        valid: list[str | None] = []
        line_of: dict[str, int] = {}
        part = np.zeros(len(sim.stream), dtype=np.int32)
        pos = np.zeros(len(sim.stream), dtype=np.int64)
        count = [0] * partitions
        stream = []
        for n, (payload, key, ts) in enumerate(sim.stream):
            i = payload.find(b'"event_id":"')
            eid = payload[i + 12 : payload.find(b'"', i + 12)].decode("utf-8", "replace") if i >= 0 else None
            if key is not None:
                # NOTE: the simulator keys a planted duplicate by the user of the event it follows, not by its own
                # user; keyed as producers must (user id), a duplicate lands on its original's partition.
                u = payload.find(b'"user_id":"')
                key = payload[u + 11 : payload.find(b'"', u + 11)] if u >= 0 else key
            stream.append((payload, key, ts))
            ids.append(eid)
            v = eid if key is not None else None
            valid.append(v)
            if v is not None:
                line_of.setdefault(v, n)
            p = partition_of(key, n, partitions)
            part[n], pos[n] = p, count[p]
            count[p] += 1
        save_stream(stream, path)
        return Workload(stream, ids, valid, line_of, part, pos, partitions, len({e.user_id for e in sim.events}),
                        len(sim.items), path)  # fmt: skip

    def send_times(self, sent_at: np.ndarray) -> dict[str, float]:
        """Event id → when its first valid line was sent (`sent_at`: per line, NaN if never sent). The planted
        malformed lines (unkeyed) carry the ids of valid events, often sent long before them; the job rejects them
        (dead letters), so their send times would add the gap to those events' latency."""
        return send_times(self.valid_ids, sent_at)

    def progress(self, first_seen: dict[str, float]) -> list[tuple[float, int]]:
        return progress_series(first_seen, self.line_of, self.part, self.pos, self.partitions)

    def startup_stream(self, n: int) -> tuple[list[tuple[bytes, bytes | None, int]], list[str]]:
        """The first `n` valid lines as other users' events (user and event ids prefixed with `STARTUP_PREFIX`, keys
        likewise; same times, so the event-time clock does not run ahead of the window's load), and their event ids.
        Lines without both ids (the planted malformed ones) are left out: unchanged, they would share ids with the
        window's own lines."""
        out: list[tuple[bytes, bytes | None, int]] = []
        ids: list[str] = []
        for (payload, key, ts), eid in zip(self.stream, self.valid_ids, strict=True):
            if len(out) >= n:
                break
            if eid is None or key is None or b'"user_id":"' not in payload:
                continue
            body = payload.replace(b'"user_id":"', b'"user_id":"' + STARTUP_PREFIX, 1)
            body = body.replace(b'"event_id":"', b'"event_id":"' + STARTUP_PREFIX, 1)
            out.append((body, STARTUP_PREFIX + key, ts))
            ids.append(STARTUP_PREFIX.decode() + eid)
        return out, ids


def job_topic_names() -> list[str]:
    """The job's topic names as `STREAMREC_JOB_TOPICS_*` spells them (read from its config class, which changes)."""
    import dataclasses

    from jobs.config import Topics

    names = [f.name.replace("_", "-") for f in dataclasses.fields(Topics)]
    return names + [o for o in OUTPUTS if o not in names]


@dataclass(frozen=True)
class Baseline:
    """The job as it was at an earlier commit, run side by side with today's (`streamrec bench --baseline-commit`):
    its own code, config, job jar and a model its own code trained on the same simulated data."""

    rev: str  # what was asked for
    commit: str  # the full hash
    dir: Path  # the commit's tree (`git archive`), with its own .state (jars) and artifacts/model
    argv: list[str]  # its `python -m jobs.recommend ...`, run with cwd = dir

    @staticmethod
    def prepare(rev: str, root: Path, train_events: Path, say: Any = print) -> Baseline:
        """Check out `rev` into `root/<commit>` (once), train its model with its own code on `train_events`, build
        its job jar and argv. Raises with the reason when the commit is not in this clone (e.g. a shallow one)."""
        got = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                             capture_output=True, text=True)  # fmt: skip
        if got.returncode != 0:
            raise RuntimeError(f"baseline {rev!r} is not a commit of this clone: {got.stderr.strip()}")
        commit = got.stdout.strip()
        tree = root / commit[:12]
        if not (tree / "jobs" / "recommend.py").exists():
            tree.mkdir(parents=True, exist_ok=True)
            say(f"  baseline {commit[:12]}: checking out into {tree} ...")
            archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", commit], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        env = {**os.environ, "STREAMREC_STATE_DIR": str(tree / ".state")}
        env.pop("STREAMREC_JOB_MODEL_DIR", None)
        if (tree / "operators" / "_native.c").exists() and not list((tree / "operators").glob("_native.*.so")):
            # its C extensions as its pyproject.toml declares them and its `make setup` builds them (setuptools'
            # build_ext, in place): without them the commit's operators would take their slower Python paths
            say(f"  baseline {commit[:12]}: building its C extension ...")
            build = "import tomllib; from setuptools import Distribution, Extension; " \
                    "ext = tomllib.load(open('pyproject.toml', 'rb'))['tool']['setuptools']['ext-modules']; " \
                    "d = Distribution({'ext_modules': [Extension(**{k.replace('-', '_'): v for k, v in e.items()}) " \
                    "for e in ext]}); c = d.get_command_obj('build_ext'); c.inplace = 1; d.run_command('build_ext')"
            got = subprocess.run([sys.executable, "-c", build], cwd=tree, env=env, capture_output=True, text=True)
            if got.returncode != 0:
                raise RuntimeError(f"baseline {commit[:12]}: its C extension did not build: {got.stderr[-2000:]}")
        model = tree / "artifacts" / "model"
        if not (model / "model.onnx").exists():
            say(f"  baseline {commit[:12]}: training its model with its own code on {train_events} ...")
            subprocess.run([sys.executable, "-m", "streamrec.cli", "train", "--data", str(train_events), "--out",
                            str(model), "--epochs", "3", "--no-progress"], cwd=tree, env=env, check=True,
                           capture_output=True)  # fmt: skip
        code = "import json; from streamrec.jobcli import job_argv; print(json.dumps(job_argv('local.yaml', " \
               "'operators.yaml')))"
        out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"baseline {commit[:12]}: could not build its job command: {out.stderr[-2000:]}")
        return Baseline(rev, commit, tree, json.loads(out.stdout.strip().splitlines()[-1]))



def consumer_share(i: int, processes: int, partitions: int) -> list[int]:
    """The events topic's partitions consumer process `i` of `processes` reads: every `processes`-th from `i`, as
    Flink's Kafka source spreads them over its subtasks. A fixed share instead of a consumer group: kafka-python
    3.0.12 can leave a group member stuck in its join (`streamrec.bench.consumer`, `--partitions`)."""
    if processes > partitions:
        raise ValueError(f"{processes} consumer processes for {partitions} partitions: one would read nothing")
    return [p for p in range(partitions) if p % processes == i]


def _assignments(stats_files: list[Path]) -> list[str]:
    """Each consumer process's latest logged partition assignment ("[]" before its first)."""
    out = []
    for f in stats_files:
        log = f.with_name(f.name.replace(".stats.json", ".log"))
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("assignment:")] \
            if log.exists() else []
        out.append(lines[-1].split(":", 1)[1].strip() if lines else "[]")
    return out

class E2E:
    """One benchmark run's end-to-end phases; owns the topics, groups, keyspace and processes it creates."""

    def __init__(self, run_dir: Path, conf: str, operators_conf: str, model_dir: Path, budget: Budget,
                 say: Any = print, load_impl: str = "java") -> None:  # fmt: skip
        from kafka import KafkaAdminClient

        from streamrec.services.clients import kafka_kwargs
        from streamrec.services.settings import services

        self.svc = services()
        self.bootstrap = self.svc.kafka.bootstrap
        self.run_dir = run_dir
        self.conf, self.operators_conf, self.model_dir = conf, operators_conf, model_dir
        self.budget = budget
        self.say = say
        self.load_impl = load_impl  # the paced phases' load generator (streamrec/bench/load.py --impl)
        self.run_id = uuid.uuid4().hex[:8]
        self.keyspace = f"bench_{self.run_id}"
        self.admin = KafkaAdminClient(**kafka_kwargs(self.bootstrap), client_id="streamrec-bench")
        self.topics: list[str] = []
        self.groups: list[str] = []
        self.backlog_topic: str | None = None
        self.keyspace_made = False
        self.baseline: Baseline | None = None  # system "baseline": the job at an earlier commit
        self.cluster: FlinkService | None = None  # system "cluster": the session cluster jobs are submitted to

    # ------------------------------------------------------------------ resources

    def setup(self) -> None:
        from streamrec.services.cassandra import apply_schema

        c = self.svc.cassandra
        apply_schema(c.contact_points, c.native_port, c, keyspace=self.keyspace)
        self.keyspace_made = True

    def _topic(self, name: str, partitions: int) -> str:
        from kafka.admin import NewTopic


        t = f"bench-{self.run_id}-{name}"
        self.admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1)])
        self.topics.append(t)
        return t

    def cleanup(self) -> None:
        """Delete what this run created (topics, groups, keyspace, checkpoints); services stay as they were."""
        with contextlib.suppress(Exception):
            if self.topics:
                self.admin.delete_topics(self.topics)
        with contextlib.suppress(Exception):
            if self.groups:
                self.admin.delete_groups(self.groups)
        with contextlib.suppress(Exception):
            self.admin.close()
        if self.keyspace_made:
            from streamrec.services.cassandra import connect

            with contextlib.suppress(Exception):
                session = connect(self.svc.cassandra.contact_points, self.svc.cassandra.native_port)
                try:
                    session.execute(f"DROP KEYSPACE IF EXISTS {self.keyspace}", timeout=120)
                finally:
                    session.cluster.shutdown()
        import shutil

        shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)

    def _produce_all(self, topic: str, stream: list[tuple[bytes, bytes | None, int]]) -> dict[str, Any]:
        from streamrec.bench.load import send

        _, summary = send(stream, topic, self.bootstrap, rate=0.0, seconds=0.0, partitions=self.budget.partitions)
        return summary

    def prepare_backlog(self, workload: Workload) -> dict[str, Any]:
        """Pre-produce the "max" phases' events once; every max phase reads it with its own consumer group."""
        n = min(self.budget.backlog_events, len(workload.stream))
        self.backlog_topic = self._topic("backlog-events", self.budget.partitions)
        self.say(f"  pre-producing {n:,} events to {self.backlog_topic} ...")
        summary = self._produce_all(self.backlog_topic, workload.stream[:n])
        summary["events"] = n
        return summary

    # ------------------------------------------------------------------ systems

    def _env(self, topics: dict[str, str], group: str, parallelism: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update({f"STREAMREC_JOB_TOPICS_{k.upper().replace('-', '_')}": v for k, v in topics.items()})
        env.update({
            "STREAMREC_JOB_CONSUMER_GROUP": group, "STREAMREC_JOB_KAFKA_SINK_TRANSACTIONAL_ID_PREFIX": group,
            "STREAMREC_JOB_CHECKPOINT_DIR": str(self.run_dir / "checkpoints" / group),
            "STREAMREC_CASSANDRA_KEYSPACE": self.keyspace, "STREAMREC_JOB_MODEL_DIR": str(self.model_dir),
            "STREAMREC_JOB_PARALLELISM": str(parallelism), "STREAMREC_JOB_START_FROM": "earliest",
            "STREAMREC_JOB_BOUNDED": "false", "STREAMREC_PSEUDONYM_KEY": BENCH_KEY,
            "STREAMREC_PSEUDONYM_KEY_ID": BENCH_KEY_ID,
        })  # fmt: skip
        return env

    def _start(self, system: str, parallelism: int, env: dict[str, str], tag: str,
               conf: str) -> tuple[list[Any], list[Path]]:  # fmt: skip
        """Processes of the system under test (each in its own session, so it can be stopped as a group); for
        "cluster", the job submitted detached to `self.cluster` (a `ClusterJob` in place of a process)."""
        from streamrec.jobcli import job_argv

        logs_dir = self.run_dir / "logs"
        logs_dir.mkdir(parents=True, exist_ok=True)
        procs: list[Any] = []
        stats: list[Path] = []
        if system == "job":
            log = open(logs_dir / f"{tag}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(job_argv(conf, self.operators_conf), cwd=REPO_ROOT, env=env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        elif system == "cluster":
            from streamrec.bench.cluster import ClusterJob
            from streamrec.jobcli import submit_argv

            assert self.cluster is not None, "a running cluster first (streamrec.bench.cluster.running)"
            argv, _ = submit_argv(conf, self.operators_conf, detached=True)
            procs.append(ClusterJob.submit(self.cluster, argv, env, logs_dir / f"{tag}.log",
                                           self.budget.startup_timeout_s))  # fmt: skip
        elif system == "baseline":
            assert self.baseline is not None, "Baseline.prepare first"
            base = self.baseline
            env = {**env, "STREAMREC_STATE_DIR": str(base.dir / ".state"),
                   "STREAMREC_JOB_MODEL_DIR": str(base.dir / "artifacts" / "model")}  # fmt: skip
            argv = list(base.argv)
            argv[argv.index("--conf") + 1] = conf  # its own copy of the profile asked for (conf/ of its tree)
            log = open(logs_dir / f"{tag}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(argv, cwd=base.dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))  # fmt: skip
        else:
            for i in range(parallelism):
                st = logs_dir / f"{tag}-{i}.stats.json"
                log = open(logs_dir / f"{tag}-{i}.log", "wb")  # noqa: SIM115
                argv = [sys.executable, "-m", "streamrec.bench.consumer", "--conf", conf,
                        "--operators-conf", self.operators_conf, "--stats", str(st),
                        "--partitions", ",".join(map(str, consumer_share(i, parallelism, self.budget.partitions)))]
                procs.append(subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))  # fmt: skip
                stats.append(st)
        return procs, stats

    @staticmethod
    def _pids(procs: list[Any]) -> list[int]:
        """Every process of the system under test (a cluster job: the cluster's JVMs and their Python workers)."""
        from streamrec.bench.cluster import ClusterJob

        return [q for p in procs for q in (p.pids() if isinstance(p, ClusterJob) else sysinfo.tree(p.pid))]

    @staticmethod
    def _stop(procs: list[Any], timeout_s: float = 40.0) -> None:
        """SIGTERM each process group we started, then SIGKILL what is left (by pid, ours only); a cluster job is
        cancelled, and waited for until the cluster runs no job."""
        from streamrec.bench.cluster import ClusterJob

        for job in [p for p in procs if isinstance(p, ClusterJob)]:
            job.stop(timeout_s + 20)
        procs = [p for p in procs if not isinstance(p, ClusterJob)]
        leftovers = {p.pid: sysinfo.tree(p.pid) for p in procs}
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        time.sleep(0.5)
        for pids in leftovers.values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _load(self, stream_file: Path, topic: str, rate: float, seconds: float, prefix: Path) -> Any:
        """The load generator on `stream_file` (a subprocess): `rate` events/s for `seconds`; its send times and
        summary land at `prefix`.npy / .json."""
        return subprocess.Popen(
            [sys.executable, "-m", "streamrec.bench.load", "--stream", str(stream_file), "--topic", topic,
             "--bootstrap", self.bootstrap, "--rate", str(rate), "--seconds", str(seconds), "--partitions",
             str(self.budget.partitions), "--out", str(prefix), "--impl", self.load_impl], cwd=REPO_ROOT)

    def _startup_load(self, workload: Workload, rate: float, topic: str, tag: str, watcher: RecWatcher,
                      alive: Callable[[], bool]) -> dict[str, Any]:  # fmt: skip
        """A paced phase's start-up load: the system just started gets `Budget.startup_load_s` of load at the phase's
        rate, from other users than the window's (`Workload.startup_stream`), then up to `drain_s` for their lists
        to come out (until none has come for 1 s). A JVM's first seconds of records (code not compiled yet, sinks'
        first writes) run slower than the rest; with this, the window measures the system running, and the start-up
        is reported apart: `latency_ms` of these events (filled in by `startup_latency`)."""
        b = self.budget
        n = max(1, min(int(rate * b.startup_load_s), b.startup_load_max_events))
        stream, ids = workload.startup_stream(n)
        from streamrec.bench.load import save_stream

        path = self.run_dir / f"startup-{tag}.pkl"
        save_stream(stream, path)
        prefix = self.run_dir / f"startup-{tag}"
        proc = self._load(path, topic, rate, b.startup_load_s + 5.0, prefix)
        proc.wait(b.startup_load_s + 180)
        seen = lambda: sum(1 for e in ids if e in watcher.first)  # noqa: E731
        deadline = time.monotonic() + b.drain_s
        last, t_last = seen(), time.monotonic()
        while time.monotonic() < deadline and alive():
            time.sleep(0.25)
            now = seen()
            if now != last:
                last, t_last = now, time.monotonic()
            elif now and time.monotonic() - t_last >= 1.0:
                break
        summary = json.loads(prefix.with_suffix(".json").read_text())
        path.unlink(missing_ok=True)
        return {"events": summary["attempted"], "rate": rate, "seconds": round(summary["send_seconds"], 2),
                "ids": ids, "send_file": str(prefix.with_suffix(".npy"))}

    # ------------------------------------------------------------------ one phase

    def run_phase(self, system: str, parallelism: int, rate: float, workload: Workload,
                  conf: str | None = None) -> dict[str, Any]:  # fmt: skip
        """One bounded phase; `rate` 0 = max (the pre-produced backlog). `conf`: another config than the run's
        (the phase is then reported as "<system> (<conf>)", apart from the comparison)."""
        b = self.budget
        label = f"{system}-{Path(conf).stem}" if conf else system
        label += f"-p{parallelism}-" + (f"{int(rate)}eps" if rate else "max")
        tag = f"{label}-{uuid.uuid4().hex[:4]}"
        group = f"bench-{self.run_id}-{tag}"
        self.groups.append(group)
        # Every topic the job's config names (outputs, and inputs such as items / control, left empty) is this
        # phase's own; the events topic is fresh (paced) or the shared pre-produced backlog (max).
        topics = {name: self._topic(f"{tag}-{name}", 1) for name in job_topic_names() if name != "events"}
        if rate:
            topics["events"] = self._topic(f"{tag}-events", b.partitions)
        else:
            assert self.backlog_topic is not None, "prepare_backlog first"
            topics["events"] = self.backlog_topic
        result: dict[str, Any] = {"system": f"{system} ({conf})" if conf else system, "conf": conf,
                                  "commit": self.baseline.commit if system == "baseline" and self.baseline else None,
                                  "parallelism": parallelism, "offered_rate": rate or None,
                                  "mode": "paced" if rate else "backlog", "label": label, "error": None}  # fmt: skip
        result["speed_probe_s"] = sysinfo.speed_probe()  # the machine's speed before the phase (and after, below)
        env = self._env(topics, group, parallelism)
        svc_pids = sysinfo.service_pids()
        watchers = {"read_committed": RecWatcher(self.bootstrap, topics["recommendations"], "read_committed").start()}
        if system in ("job", "baseline", "cluster"):  # the consumer's writes are not transactional: one view
            watchers["read_uncommitted"] = RecWatcher(self.bootstrap, topics["recommendations"],
                                                      "read_uncommitted").start()  # fmt: skip
        sampler = OffsetSampler(self.bootstrap, group, topics["events"]).start()
        checkpoints: CheckpointSampler | None = None
        if system == "job":  # the minicluster's REST API, on a port of its own for this phase
            from streamrec.bench.cluster import free_port

            port = free_port()
            env["STREAMREC_JOB_REST_PORT"] = str(port)
            checkpoints = CheckpointSampler(f"http://localhost:{port}").start()
        elif system == "cluster" and self.cluster is not None:
            checkpoints = CheckpointSampler(self.cluster.rest_url).start()
        t_spawn = time.monotonic()
        procs: list[Any] = []
        stats_files: list[Path] = []
        load_proc: list[Any] = []
        meter = sysinfo.CpuMeter({
            "system_under_test": lambda: self._pids(procs),
            "kafka": lambda: [p for p in (svc_pids.get("kafka"),) if p],
            "cassandra": lambda: [p for p in (svc_pids.get("cassandra"),) if p],
            "harness_and_load": lambda: [os.getpid()] + [q for p in load_proc for q in sysinfo.tree(p.pid)],
        }, split={"system_under_test": sysinfo.process_kind})  # fmt: skip

        def alive() -> bool:
            return all(p.poll() is None for p in procs)

        sent_at = None
        t_from = t_to = time.monotonic()
        t_fit_end: float | None = None  # paced: the rate is fitted over the load, not the drain after it
        progress_w = watchers.get("read_uncommitted", watchers["read_committed"])
        exit_codes: list[Any] = []
        cores: dict[str, float] = {}
        final: list[str] = []
        try:
            # (inside the try: submitting to a cluster can fail, and the watchers must be stopped all the same)
            started, stats = self._start(system, parallelism, env, tag, conf or self.conf)
            stats_files += stats
            procs += started
            if rate:
                self._produce_all(topics["events"], [(WARMUP, None, workload.stream[0][2])])
                t_ready = _first_record(self.bootstrap, topics["dead-letters"], b.startup_timeout_s, alive)
                if t_ready is None:
                    raise RuntimeError("no sign of life (warm-up dead letter) within "
                                       f"{b.startup_timeout_s:.0f} s" + ("" if alive() else ": it exited"))
                if stats_files and parallelism > 1:
                    # every consumer process in the group holds a partition before the load starts (a process
                    # that joins late would otherwise watch the window go by: seen on a freshly started broker)
                    deadline = time.monotonic() + b.startup_timeout_s
                    while "[]" in _assignments(stats_files) and time.monotonic() < deadline and alive():
                        time.sleep(0.25)
                result["startup_s"] = round(t_ready - t_spawn, 1)
                if b.startup_load_s > 0:
                    result["startup_load"] = self._startup_load(workload, rate, topics["events"], tag, progress_w,
                                                                alive)
                prefix = self.run_dir / f"load-{tag}"
                meter.start()
                t_from = time.monotonic()
                load_proc.append(self._load(workload.file, topics["events"], rate, b.window_s, prefix))
                load_proc[0].wait(b.window_s + 180)
                t_fit_end = time.monotonic() + 1.0
                # what was processed by now becomes visible within a checkpoint (job) / commit interval (consumer)
                drain = min(b.drain_s, 3.0) if system == "consumer" else b.drain_s  # the consumer commits every 1 s
                deadline = time.monotonic() + drain
                while time.monotonic() < deadline and alive():
                    time.sleep(0.5)
                t_to = time.monotonic()
                sent_at = np.load(prefix.with_suffix(".npy"))
                result["load"] = json.loads(prefix.with_suffix(".json").read_text())
                result["offered_events"] = result["load"]["attempted"]
            else:
                total = min(b.backlog_events, len(workload.stream))
                deadline = time.monotonic() + b.startup_timeout_s
                while not progress_w.first and time.monotonic() < deadline and alive():
                    time.sleep(0.25)
                if not progress_w.first:
                    raise RuntimeError(f"no output within {b.startup_timeout_s:.0f} s"
                                       + ("" if alive() else ": it exited"))  # fmt: skip
                t_first = min(progress_w.first.values())
                result["startup_s"] = round(t_first - t_spawn, 1)
                meter.start()
                t_from = t_first  # the window opens at the first output (start-up excluded)
                deadline = t_from + b.window_s
                while time.monotonic() < deadline and alive():
                    if sampler.latest() >= total:
                        break
                    time.sleep(0.5)
                t_to = time.monotonic()
                result["offered_events"] = total
            if not alive():
                result["error"] = "the system exited during the phase"
        except Exception as e:  # noqa: BLE001 - a failed phase is reported, the run goes on
            result["error"] = f"{type(e).__name__}: {e}"
        finally:
            cores = meter.stop() if meter.t0 else {}
            for lp in load_proc:
                if lp.poll() is None:
                    lp.kill()
            exit_codes = [p.poll() for p in procs]
            # the assignments while the phase ran: once one consumer stops and leaves the group, the other can be
            # given every partition before it stops too
            final = _assignments(stats_files)
            if checkpoints is not None:
                checkpoints.stop()
                checkpoints.poll()  # the last ones, before the job is stopped
            self._stop(procs)
            sampler.stop()
            for w in watchers.values():
                w.stop()
        result["exit_codes_before_stop"] = exit_codes
        if system == "cluster" and procs:
            result["cluster_job"] = procs[0].report
        result["cpu_cores"] = cores
        result["window_s"] = round(t_to - t_from, 1)
        series = workload.progress(progress_w.first)
        if not rate and series and series[-1][1] >= 0.995 * result.get("offered_events", 0) > 0:
            # backlog done (the last events of a partition may emit no list of their own, debounced): the fit ends
            # at its last output, not at the commit seen later
            t_fit_end = series[-1][0]
        tp = progress_throughput(series, t_from, min(t_to, t_fit_end or t_to))
        result["throughput_eps"] = tp["eps"]
        # a backlog done within seconds of the first output: its slope is no sustained rate (the headline skips it)
        result["throughput_short"] = bool(tp["short"]) and not rate
        result["processed_at_end"] = series[-1][1] if series else 0
        if not rate:
            done = backlog_completion(series, result.get("offered_events") or 0)
            result["backlog_done_s"], result["completion_eps"] = done["done_s"], done["eps"]
        ct = commit_throughput(sampler.samples, t_from, t_to)
        result["committed_eps"] = ct["eps"]
        result["commits_in_window"] = ct["commits"]
        result["committed_at_end"] = sampler.samples[-1][1] if sampler.samples else 0
        busy = (cores or {}).get("system_under_test")
        result["events_per_core_second"] = round(tp["eps"] / busy, 1) if tp["eps"] and busy else None
        offered = result.get("offered_events") or 0
        start_load: dict[str, Any] | None = result.get("startup_load")
        # + the warm-up message and the start-up load
        in_topic = offered + (1 + (start_load["events"] if start_load else 0) if rate else 0)
        result["caught_up"] = bool(offered) and (result["committed_at_end"] >= in_topic
                                                 or result["processed_at_end"] >= 0.995 * offered)
        result["kept_pace"] = (kept_pace(tp["eps"], (result.get("load") or {}).get("achieved_rate"),
                                         result["caught_up"]) if rate else None)  # fmt: skip
        result["progress_series"] = [(round(t - t_from, 2), c) for t, c in series[:: max(1, len(series) // 400)]]
        result["offsets_series"] = [(round(t - t_from, 2), c) for t, c in sampler.samples]
        result["recommendations_seen"] = {view: w.count for view, w in watchers.items()}
        if checkpoints is not None:  # triggered within the window (paced: the load and the drain after it)
            result["checkpoints_ms"] = checkpoint_summary(checkpoints.done, t_from, t_to, checkpoints.failed,
                                                          checkpoints.failures)
        if sent_at is not None:
            send_time = workload.send_times(sent_at)
            lat: dict[str, Any] = {}
            for view, w in watchers.items():
                pairs = latency_pairs(send_time, w.first)
                lat[view] = latency_summary(pairs, t_from, lower_bound=not result["caught_up"])
                step = max(1, len(pairs) // 400)
                result[f"latency_series_{view}"] = [(round(t0 - t_from, 2), round(ms, 1)) for t0, ms in pairs[::step]]
            result["latency_ms"] = lat
            result["sent_with_event_id"] = len(send_time)
        if start_load:
            result["startup_load"] = startup_latency(start_load, watchers)
        if stats_files:
            result["consumer_stats"] = [json.loads(f.read_text()) if f.exists() else None for f in stats_files]
            result["final_assignments"] = final
            result["balanced"] = all(a not in ("[]", "") for a in final)
        if result["error"] and system in ("job", "baseline", "cluster"):
            log = self.run_dir / "logs" / f"{tag}.log"
            with contextlib.suppress(OSError):
                result["log_tail"] = log.read_text(errors="replace")[-3000:]
        result["speed_probe_after_s"] = sysinfo.speed_probe()
        return result


def send_times(ids: Sequence[str | None], sent_at: np.ndarray) -> dict[str, float]:
    """Event id → when its line was sent (`sent_at`: per line, NaN if never sent). A planted duplicate's id keeps
    its original's (first) send time."""
    out: dict[str, float] = {}
    for i, eid in enumerate(ids[: len(sent_at)]):
        if eid is not None and not np.isnan(sent_at[i]):
            out.setdefault(eid, float(sent_at[i]))
    return out


def latency_pairs(send_time: dict[str, float], first: dict[str, float]) -> list[tuple[float, float]]:
    """(send time, ms until its list was first seen) of every sent event with a list, by send time."""
    return sorted((send_time[e], (t - send_time[e]) * 1000.0) for e, t in first.items() if e in send_time)


def startup_latency(startup: dict[str, Any], watchers: dict[str, RecWatcher]) -> dict[str, Any]:
    """A start-up load's record (`E2E._startup_load`) with its events' latency per view (send → list seen), in
    place of the ids and the send-time file."""
    send_time = send_times(startup["ids"], np.load(startup["send_file"]))
    out = {k: v for k, v in startup.items() if k not in ("ids", "send_file")}
    out["latency_ms"] = {view: percentiles([ms for _, ms in latency_pairs(send_time, w.first)])
                         for view, w in watchers.items()}  # fmt: skip
    return out


def budget_dict(b: Budget) -> dict[str, Any]:
    return asdict(b)
