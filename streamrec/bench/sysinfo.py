"""Machine facts for the report and every figure's caption, and CPU accounting of process trees from /proc."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamrec.config import REPO_ROOT

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory, load, versions, commit (read-only git)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions = {}
    for mod in ("onnxruntime", "numpy", "kafka", "cassandra", "pyflink"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", "") or getattr(getattr(m, "version", None), "__version__", "")
        except Exception:  # noqa: BLE001 - a version is informative only
            versions[mod] = ""
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": mem_gb,
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "commit": commit,
    }


def speed_probe(additions: int = 1_000_000, rounds: int = 3) -> float:
    """This machine's speed now: the seconds a loop of 5,000,000 additions in a Python function takes (the fastest
    of `rounds` loops of `additions`, scaled; ~0.15 s on a quiet 2-core bench host). One core, no I/O: it moves with
    the CPU share and clock the host gives this process, not with the code under test; this project's hosts are
    shared and vary up to 2x within an hour, so phases compare fairly only at similar probes. A tight loop: it does
    not see memory-bandwidth or cache contention."""
    best = float("inf")
    for _ in range(max(1, rounds)):
        t0 = time.perf_counter()
        total = 0
        for i in range(additions):
            total += i
        best = min(best, time.perf_counter() - t0)
    return round(best * 5_000_000 / max(1, additions), 3)


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, cpu seconds user+system) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK


def tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st is not None:
                children.setdefault(st[0], []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def machine_busy() -> tuple[float, float, float]:
    """(busy, total, steal) CPU seconds of the whole machine since boot, from /proc/stat (busy includes steal)."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    v = [int(x) / _TICK for x in parts[:8]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v) - idle, sum(v), v[7]


def process_kind(pid: int) -> str:
    """"jvm" for a Java process (a TaskManager, the minicluster), "python" for anything else (Python workers, the
    job's client, a consumer), from /proc/PID/comm; "gone" when it has exited."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    return "jvm" if comm == "java" else "python"


class CpuMeter:
    """CPU seconds used by named process trees between `start()` and `stop()`, sampled every `every_s` (processes
    that exit between samples keep what was last seen). `split`: for some trees, a kind per process (e.g.
    `process_kind`); their CPU is then also reported per kind as "TREE.KIND" (parts of the tree, not added to
    "everything_else")."""

    def __init__(self, roots: dict[str, Callable[[], list[int]]], every_s: float = 2.0,
                 split: dict[str, Callable[[int], str]] | None = None) -> None:  # fmt: skip
        self.roots = roots
        self.split = split or {}
        self.kinds: dict[int, str] = {}
        self.every = every_s
        self.seen: dict[str, dict[int, float]] = {k: {} for k in roots}
        self.first: dict[str, dict[int, float]] = {k: {} for k in roots}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = self.t1 = 0.0
        self._busy0 = (0.0, 0.0, 0.0)

    def _sample(self) -> None:
        for name, pids in self.roots.items():
            try:
                ps = pids()
            except Exception:  # noqa: BLE001 - a vanished process tree is simply not counted
                ps = []
            for p in ps:
                st = _stat(p)
                if st is None:
                    continue
                self.first[name].setdefault(p, st[1])
                self.seen[name][p] = st[1]
                if name in self.split:  # every sample: a child seen between its fork and its exec is corrected
                    kind = self.split[name](p)
                    if kind != "gone":
                        self.kinds[p] = kind

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._busy0 = machine_busy()
        self._sample()
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """Cores used per tree over the interval (CPU seconds / wall seconds)."""
        self._sample()
        self._stop.set()
        self._thread.join(5)
        self.t1 = time.monotonic()
        wall = max(self.t1 - self.t0, 1e-9)
        out = {name: round(sum(self.seen[name][p] - self.first[name].get(p, 0.0) for p in self.seen[name]) / wall, 3)
               for name in self.roots}  # fmt: skip
        for name in self.split:
            for p, cpu in self.seen[name].items():
                key = f"{name}.{self.kinds.get(p, 'gone')}"
                out[key] = out.get(key, 0.0) + (cpu - self.first[name].get(p, 0.0)) / wall
        out = {k: round(v, 3) for k, v in out.items()}
        busy1 = machine_busy()
        out["machine_total"] = round((busy1[0] - self._busy0[0]) / wall, 3)
        out["everything_else"] = round(max(0.0, out["machine_total"] - sum(out[n] for n in self.roots)), 3)
        # time the hypervisor ran others on this machine's cores (a shared host's contention; counted in the total)
        out["steal"] = round((busy1[2] - self._busy0[2]) / wall, 3)
        return out


def service_pids() -> dict[str, int | None]:
    """Pids of the local Kafka and Cassandra (whoever started them), from their pid files."""
    from streamrec.services.cassandra import CassandraService
    from streamrec.services.kafka import KafkaService
    from streamrec.services.settings import services

    svc = services()
    out: dict[str, int | None] = {}
    for name, s in (("kafka", KafkaService(svc)), ("cassandra", CassandraService(svc))):
        try:
            out[name] = s.pid()
        except Exception:  # noqa: BLE001
            out[name] = None
    return out
