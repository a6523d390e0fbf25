"""`streamrec services up` twice, then `down`: the second `up` is a no-op and nothing is left running.

Runs a second, isolated set of services (own state dir and ports) so it does not disturb the session's services.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streamrec.config import REPO_ROOT
from streamrec.services.proc import find_pids

PORTS = {
    "STREAMREC_KAFKA_PORT": "19092", "STREAMREC_KAFKA_CONTROLLER_PORT": "19093",
    "STREAMREC_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
    "STREAMREC_CASSANDRA_NATIVE_PORT": "19042", "STREAMREC_CASSANDRA_STORAGE_PORT": "17000",
    "STREAMREC_FLINK_REST_PORT": "18081", "STREAMREC_FLINK_RPC_PORT": "16123",
}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamrec.cli", "services", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


def test_up_twice_then_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # Reuse the fetched jars instead of resolving them again.
    (state / "jars").mkdir(parents=True)
    for name in ("kafka", "cassandra", "flink"):
        (state / "jars" / name).symlink_to(REPO_ROOT / ".state" / "jars" / name)
    env = {**os.environ, **PORTS, "STREAMREC_STATE_DIR": str(state), "STREAMREC_SERVICES_DIR": str(state)}
    markers = [f"streamrec.service=kafka:{state}", f"streamrec.service=cassandra:{state}",
               f"-Dlog.file={state}/flink/log/"]
    try:
        first = _cli(env, "up", "--flink")
        assert first.returncode == 0, first.stdout + first.stderr
        assert first.stdout.count("started") == 3, first.stdout
        for m in markers:
            assert find_pids(m), f"no process for {m}"
        pids_before = sorted(p for m in markers for p in find_pids(m))

        second = _cli(env, "up", "--flink")
        assert second.returncode == 0, second.stdout + second.stderr
        assert second.stdout.count("already running") == 3, second.stdout
        assert sorted(p for m in markers for p in find_pids(m)) == pids_before

        status = _cli(env, "status")
        assert status.stdout.count("running (") == 3, status.stdout
    finally:
        down = _cli(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    for m in markers:
        assert find_pids(m) == [], f"left behind: {m}"

