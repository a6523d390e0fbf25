"""The job on a Flink standalone session cluster of the bench's own (`streamrec bench --cluster-parallelism 1,2`):
how its throughput scales with parallelism when each parallel instance has a TaskManager (and so its own Python worker
processes) of its own.

The cluster: `streamrec.services.flink.FlinkService` with its home (conf, logs, pid files) under the run's work dir,
free REST and RPC ports (never the cluster of `services up --flink` or of the tests), N TaskManagers with one slot
each. It is started before the cluster phases and stopped after them, whatever happens (no JVM or Python worker is
left behind: what survives stop-cluster.sh is killed by pid).

Each phase is `E2E.run_phase("cluster", p, 0, ...)`: the same pre-produced backlog, topics, watchers and throughput
fit as the minicluster's "max" phases; the job is submitted as `streamrec submit --detached` does
(`streamrec.jobcli.submit_argv`) and a `ClusterJob` stands in for its process: alive while the Flink job is, stopped
by cancelling it through the REST API and waiting until it holds no slot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from streamrec.bench import sysinfo
from streamrec.config import REPO_ROOT
from streamrec.services.flink import TERMINAL_STATES, FlinkService
from streamrec.services.proc import cmdline, pid_alive

USER_OPERATOR = "user-operator"  # name of the job's user operator (jobs/recommend.py), part of its vertex's name
_JOB_ID = re.compile(r"JobID ([0-9a-f]{32})")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bench_flink(home: Path, taskmanagers: int, slots: int) -> FlinkService:
    """A FlinkService of its own: `home` for conf / logs / pids, free REST and RPC ports, `taskmanagers` × `slots`
    (memory and the rest as in conf/services.yaml)."""
    from streamrec.services.settings import services

    svc = services()
    f = dataclasses.replace(svc.flink, rest_port=free_port(svc.flink.rest_address), rpc_port=free_port(),
                            taskmanagers=taskmanagers, taskmanager_slots=slots)  # fmt: skip
    return FlinkService(dataclasses.replace(svc, flink=f), home=home)


def job_id_from(output: str) -> str | None:
    """The JobID `flink run -d` printed ("Job has been submitted with JobID <32 hex>")."""
    m = _JOB_ID.search(output)
    return m.group(1) if m else None


def placement(job: Mapping[str, Any], vertices: Mapping[str, Mapping[str, Any]],
              operator: str = USER_OPERATOR) -> list[dict[str, Any]]:  # fmt: skip
    """Where the subtasks of the vertices whose name holds `operator` run: from `GET /jobs/<id>` (`job`) and
    `GET /jobs/<id>/vertices/<vid>` of each (`vertices`, by vertex id)."""
    out = []
    for v in job.get("vertices", []):
        if operator not in str(v.get("name", "")):
            continue
        detail = vertices.get(v["id"], {})
        out.append({"vertex": v["id"], "name": v["name"], "parallelism": v.get("parallelism"),
                    "subtasks": [{"subtask": s.get("subtask"), "status": s.get("status"),
                                  "taskmanager_id": s.get("taskmanager-id"),
                                  "endpoint": s.get("endpoint") or s.get("host")}
                                 for s in detail.get("subtasks", [])]})  # fmt: skip
    return out


def distinct_taskmanagers(placed: Sequence[Mapping[str, Any]]) -> int:
    """How many TaskManagers the placed subtasks (of `placement`) run on."""
    return len({s["taskmanager_id"] for v in placed for s in v["subtasks"] if s.get("taskmanager_id")})


class ClusterJob:
    """A job submitted detached to the bench's cluster, in place of a process in `E2E.run_phase`: `poll()` is None
    while it runs, `stop()` cancels it (REST) and waits until it is gone; `report` holds what the phase result
    records (job id, submission, where its user-operator subtasks ran, the cluster's TaskManagers)."""

    def __init__(self, cluster: FlinkService, job_id: str, report: dict[str, Any]) -> None:
        self.cluster = cluster
        self.job_id = job_id
        self.report = report
        self.poll_every_s = 1.0  # run_phase polls every 0.25 s; REST is asked at most this often
        self._last: tuple[float, int | None] = (-1e9, None)  # (when, poll result)
        self.stopped = False

    @staticmethod
    def submit(cluster: FlinkService, argv: list[str], env: dict[str, str], log: Path,
               timeout_s: float) -> ClusterJob:  # fmt: skip
        """Run `flink run -d ...` (argv and env from `submit_argv`, pointed at `cluster`) until it returns."""
        t0 = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=cluster.env(env), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
            try:
                code = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                code = None
        text = log.read_text(errors="replace")
        job_id = job_id_from(text)
        if code != 0 or job_id is None:
            raise RuntimeError("flink run -d " + (f"exited {code}" if code is not None else
                                                   f"did not return within {timeout_s:.0f} s")
                               + ("" if job_id else ", no JobID printed") + f":\n{text[-3000:]}")  # fmt: skip
        return ClusterJob(cluster, job_id, {"job_id": job_id, "submit_s": round(time.monotonic() - t0, 1)})

    def poll(self) -> int | None:
        now = time.monotonic()
        if self.stopped or now - self._last[0] < self.poll_every_s:
            return 0 if self.stopped else self._last[1]
        try:
            state = self.cluster.job_state(self.job_id)
            code = 1 if state in TERMINAL_STATES else None
        except OSError:  # REST not answering: gone if the cluster's JVMs are
            code = None if self.cluster.pids() else 1
        self._last = (now, code)
        return code

    def pids(self) -> list[int]:
        """The cluster's JVMs (JobManager, TaskManagers) and their Python workers: the system under test."""
        return [q for p in self.cluster.pids() for q in sysinfo.tree(p)]

    def evidence(self) -> dict[str, Any]:
        """While the job runs: its state, the cluster overview, TaskManager ids, where the user-operator subtasks
        run and the Python processes under each TaskManager JVM (process mode: workers beside the JVM)."""
        c = self.cluster
        job = c.rest(f"/jobs/{self.job_id}")
        vertices = {v["id"]: c.rest(f"/jobs/{self.job_id}/vertices/{v['id']}") for v in job.get("vertices", [])
                    if USER_OPERATOR in str(v.get("name", ""))}  # fmt: skip
        placed = placement(job, vertices)
        tms = c.rest("/taskmanagers").get("taskmanagers", [])
        return {"state": job.get("state"), "overview": c.overview(),
                "taskmanager_ids": [t.get("id") for t in tms],
                "user_operator_subtasks": placed, "user_operator_taskmanagers": distinct_taskmanagers(placed),
                "python_processes_by_taskmanager_jvm": python_children(c)}

    def stop(self, timeout_s: float) -> None:
        if self.stopped:
            return
        try:
            self.report.update(self.evidence())
        except Exception as e:  # noqa: BLE001 - the cancel below matters more than the evidence
            self.report["evidence_error"] = f"{type(e).__name__}: {e}"
        t0 = time.monotonic()
        try:
            self.report["final_state"] = self.cluster.cancel_job(self.job_id, timeout_s)
        except Exception as e:  # noqa: BLE001 - reported; the cluster is stopped at the end in any case
            self.report["cancel_error"] = f"{type(e).__name__}: {e}"
        self.report["cancel_s"] = round(time.monotonic() - t0, 1)
        self.stopped = True


def is_python(line: str) -> bool:
    """A command line (as `proc.cmdline` gives it) run by a Python interpreter (not a script named *python*)."""
    return Path(line.split(" ", 1)[0]).name.startswith("python")


def python_children(cluster: FlinkService) -> dict[str, int]:
    """Python interpreters under each TaskManager JVM (process mode: the Beam boot process and its SDK worker per
    Python task), by the TaskManager's log file name (which carries its instance number)."""
    out = {}
    for pid in cluster.pids():
        line = cmdline(pid)
        if "taskexecutor" not in line and "TaskManagerRunner" not in line:
            continue
        m = re.search(r"-Dlog\.file=\S*/([^/\s]+)\.log", line)
        out[m.group(1) if m else str(pid)] = sum(1 for q in sysinfo.tree(pid)[1:] if is_python(cmdline(q)))
    return out


@contextlib.contextmanager
def running(cluster: FlinkService, say: Callable[[str], None] = print,
            facts: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Start `cluster`, yield facts about it (into `facts` if given, so they outlive a failed start), and stop it
    afterwards whatever happens: stop-cluster.sh, then every process of it still alive (JVMs found by their log-file
    marker, and their Python workers) killed by pid."""
    facts = {} if facts is None else facts
    facts.update(rest_url=cluster.rest_url, home=str(cluster.home))
    try:
        t0 = time.monotonic()
        say(f"  starting a Flink cluster: {cluster.f.taskmanagers} TaskManagers × {cluster.f.taskmanager_slots} "
            f"slot(s), {cluster.rest_url}, under {cluster.home} ...")
        facts["up"] = cluster.up()
        facts["startup_s"] = round(time.monotonic() - t0, 1)
        facts["overview_at_start"] = cluster.overview()
        facts["taskmanager_ids"] = [t.get("id") for t in cluster.rest("/taskmanagers").get("taskmanagers", [])]
        yield facts
    finally:
        facts["leftover_pids"] = stop(cluster)


def stop(cluster: FlinkService) -> list[int]:
    """Stop `cluster` and every process under its JVMs; returns the pids still alive after all that (none)."""
    ours = {q: cmdline(q) for p in cluster.pids() for q in sysinfo.tree(p)}

    def left() -> list[int]:  # still alive and still the same process (not a reused pid)
        return sorted(p for p, line in ours.items() if pid_alive(p) and cmdline(p) == line)

    with contextlib.suppress(Exception):
        cluster.down()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and left():
        time.sleep(0.5)
    for p in left():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    time.sleep(0.5)
    return sorted(set(left()) | set(cluster.pids()))


def _mb(size: str) -> int:
    """Flink memory size ("2048m", "1g", "1024mb") in MiB."""
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)b?", size.strip().lower())
    if not m:
        raise ValueError(f"not a memory size: {size!r}")
    return int(int(m.group(1)) * {"k": 1 / 1024, "": 1 / 2**20, "m": 1, "g": 1024, "t": 2**20}[m.group(2)])


def memory_mb(taskmanagers: int, taskmanager_memory: str, jobmanager_memory: str) -> dict[str, int | None]:
    """The cluster's JVM process sizes beside what the machine has available (/proc/meminfo) before it starts."""
    avail = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) // 1024
    return {"needed": taskmanagers * _mb(taskmanager_memory) + _mb(jobmanager_memory), "available": avail}


def measure(runner: Any, workload: Any, pars: Sequence[int], home: Path,
            say: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """The "cluster" phases at each parallelism in `pars` on the pre-produced backlog (`runner.prepare_backlog`
    first), on a cluster of max(pars) TaskManagers × 1 slot started for them and stopped after them."""
    taskmanagers = max(pars)
    cluster = bench_flink(home, taskmanagers, 1)
    out: dict[str, Any] = {"by_parallelism": {}, "taskmanagers": taskmanagers, "slots_per_taskmanager": 1,
                           "taskmanager_memory": cluster.f.taskmanager_memory,
                           "jobmanager_memory": cluster.f.jobmanager_memory,
                           "memory_mb": memory_mb(taskmanagers, cluster.f.taskmanager_memory,
                                                  cluster.f.jobmanager_memory),
                           "submit": "flink run -d -py jobs/recommend.py ... (streamrec.jobcli.submit_argv)",
                           "errors": []}  # fmt: skip
    mem = out["memory_mb"]
    if mem["available"] is not None and mem["needed"] > 0.8 * mem["available"]:
        out["errors"].append(f"cluster not started: its JVMs need {mem['needed']:,} MB, "
                             f"{mem['available']:,} MB available")
        say(f"  {out['errors'][-1]}")
        return out
    try:
        out["instance"] = {}
        with running(cluster, say, out["instance"]) as facts:
            ov = facts.get("overview_at_start") or {}
            say(f"  cluster up in {facts['startup_s']} s: {ov.get('taskmanagers')} TaskManagers, "
                f"{ov.get('slots-total')} slots ({', '.join(facts['taskmanager_ids'])})")
            runner.cluster = cluster
            for p in pars:
                say(f"cluster: the job submitted with flink run -d, p={p}, max (backlog) ...")
                ph = runner.run_phase("cluster", p, 0.0, workload)
                out["by_parallelism"][str(p)] = ph
                job = ph.get("cluster_job", {})
                say(f"  → processed {ph.get('throughput_eps') or 0:,.0f} events/s, committed "
                    f"{ph.get('committed_eps') or 0:,.0f}/s, start-up {ph.get('startup_s')} s; user-operator "
                    f"subtasks on {job.get('user_operator_taskmanagers')} TaskManager(s), Python interpreters per "
                    f"TaskManager {job.get('python_processes_by_taskmanager_jvm')}, job {job.get('job_id')} "
                    f"{job.get('final_state')} after cancel"
                    + (f", ERROR {ph['error']}" if ph.get("error") else ""))  # fmt: skip
                if ph.get("error"):
                    out["errors"].append(f"{ph['label']}: {ph['error']}")
    except Exception as e:  # noqa: BLE001 - what was measured stays; the cluster is stopped by `running`
        out["errors"].append(f"cluster: {type(e).__name__}: {e}")
        say(f"  cluster phases stopped: {type(e).__name__}: {e}")
    finally:
        runner.cluster = None
    left = out.get("instance", {}).get("leftover_pids")
    say(f"  cluster stopped; processes left: {left if left else 'none'}")
    return out
