"""Detached service processes with pid files: start, find, stop. No service-specific knowledge here."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ServiceError(RuntimeError):
    """A local service could not be started, checked or stopped; the message says what to look at."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as dead.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in `pid_file` if that process is alive and its command line contains `marker`, else None.

    A stale pid file (process gone, or the pid reused by something else) is removed.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid) and marker in _settled_cmdline(pid):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def _settled_cmdline(pid: int, wait_s: float = 1.0) -> str:
    """The command line of `pid`, waiting up to `wait_s` while it reads empty: a process just spawned can still be
    inside execve after Popen returns (the parent resumes once the new memory map is in place, before the arguments
    are), and its command line reads empty for that moment. Seen: a pid file judged stale right after `spawn`."""
    deadline = time.monotonic() + wait_s
    while True:
        line = cmdline(pid)
        if line or time.monotonic() >= deadline or not pid_alive(pid):
            return line
        time.sleep(0.01)


def find_pids(marker: str) -> list[int]:
    """All live processes whose command line contains `marker` (to catch strays without a pid file)."""
    out = []
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        if marker in cmdline(int(d.name)) and pid_alive(int(d.name)):
            out.append(int(d.name))
    return out


def spawn(argv: Sequence[str], log_file: Path, pid_file: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None, nice: int = 0) -> int:
    """Start `argv` detached (own session, survives this process), output appended to `log_file`. `nice` > 0: at
    that lower CPU priority (`lower_priority`)."""
    if nice < 0:
        raise ValueError(f"nice must be >= 0 (a lower priority than this process's, or 0), got {nice}")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["nice", "-n", str(nice), *argv] if nice else list(argv)  # `nice` execs argv: the pid stays the same
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, cwd=cwd,
        )
    if nice:
        lower_priority(proc.pid, nice)
    pid_file.write_text(str(proc.pid))
    return proc.pid


def lower_priority(pid: int, nice: int) -> bool:
    """Give the session `pid` leads the scheduling weight of `nice` where Linux schedules sessions as groups
    (autogroup, `/proc/sys/kernel/sched_autogroup_enabled`): there the CPU is shared fairly between sessions first,
    and a thread's own nice value counts only against the threads of its session, so `nice` alone would not lower a
    service against the job (it runs in a session of its own). True when the group's weight was set; False where the
    kernel has no autogroup (the threads' nice values, which `spawn` sets, then count directly)."""
    for _ in range(20):
        try:
            Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
        except BlockingIOError:  # EAGAIN: without CAP_SYS_ADMIN, one such change per 100 ms machine-wide
            time.sleep(0.11)
        except OSError:
            return False
        else:
            return True
    return False


def stop_pid(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL the process group if it has not exited."""
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                _reap(pid)
                return
            time.sleep(0.2)
    if pid_alive(pid):
        raise ServiceError(f"process {pid} did not exit after SIGKILL")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, alive: Callable[[], bool] | None = None,
               log_file: Path | None = None, interval_s: float = 0.5) -> None:
    """Poll `check` until true. Fails early if `alive` says the process died, with the log's tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise ServiceError(f"{what} exited during start-up.{_tail(log_file)}")
        time.sleep(interval_s)
    raise ServiceError(f"{what} did not become ready within {timeout_s:.0f} s.{_tail(log_file)}")


def _tail(log_file: Path | None, lines: int = 25) -> str:
    if log_file is None or not log_file.exists():
        return ""
    text = log_file.read_text(errors="replace").splitlines()[-lines:]
    return f"\nLast lines of {log_file}:\n" + "\n".join(text)
