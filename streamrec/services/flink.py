"""A local standalone Flink session cluster from the distribution inside the `apache-flink` wheel.

`bin/start-cluster.sh` with our own config directory (FLINK_CONF_DIR), so `flink run -py` behaves as on a user's
cluster. Logs and pid files live under `<state>/flink` (or another `home`: the bench starts a cluster of its own beside
the one `services up --flink` starts). `flink.taskmanagers` TaskManagers: start-cluster.sh starts one per line of the
`workers` file (bin/config.sh, TMWorkers: all lines localhost → `taskmanager.sh start` once per line, here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamrec.services.proc import ServiceError, find_pids, port_open, stop_pid, wait_until
from streamrec.services.settings import ServicesConf


def flink_home() -> Path:
    spec = importlib.util.find_spec("pyflink")
    if spec is None or spec.origin is None:
        raise ServiceError("apache-flink is not installed in this Python environment (run `make setup`)")
    home = Path(spec.origin).parent
    if not (home / "bin" / "flink").exists():
        raise ServiceError(f"no Flink distribution under {home}")
    return home


def _flatten(d: dict[str, object], prefix: str = "") -> dict[str, object]:
    """Nested YAML keys to Flink's dotted form (a config must not hold both forms of one key)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Job states after which a job holds no slot and runs no task (JobStatus.isGloballyTerminalState, plus SUSPENDED).
TERMINAL_STATES = frozenset({"FINISHED", "CANCELED", "FAILED", "SUSPENDED"})


def workers_file(taskmanagers: int) -> str:
    """conf/workers for `taskmanagers` TaskManagers on this machine (start-cluster.sh starts one per line)."""
    if taskmanagers < 1:
        raise ValueError(f"flink.taskmanagers must be >= 1, not {taskmanagers}")
    return "localhost\n" * taskmanagers


def slots_free(overview: Mapping[str, Any]) -> bool:
    """From `GET /overview`: no job running and every slot available again."""
    return (int(overview.get("jobs-running", 0)) == 0
            and int(overview.get("slots-available", -1)) == int(overview.get("slots-total", 0)))


def rest_json(url: str, method: str = "GET", timeout_s: float = 10.0, body: Any = None) -> Any:
    """JSON of one call to a Flink REST API (`body` sent as JSON); None for an empty answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})  # fmt: skip
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        answer = r.read()
    return json.loads(answer) if answer else None


class FlinkService:
    name = "flink"

    def __init__(self, conf: ServicesConf, home: Path | None = None) -> None:
        self.conf = conf
        self.f = conf.flink
        self.home = home if home is not None else conf.services_path / "flink"
        self.conf_dir = self.home / "conf"
        self.log_dir = self.home / "log"
        self.pid_dir = self.home / "pid"
        # io.tmp.dirs: the JobManager's and TaskManagers' working directories (jm_* / tm_*: job jars in blobStorage,
        # ~60 MB per TaskManager and run), which Flink leaves behind when it stops; here they go under the cluster's
        # home, and `down` removes them once nothing of the cluster runs (/tmp had gathered 11 of them, 750 MB)
        self.tmp_dir = self.home / "tmp"
        self.marker = f"-Dlog.file={self.log_dir}/"

    @property
    def rest_url(self) -> str:
        return f"http://{self.f.rest_address}:{self.f.rest_port}"

    def config_yaml(self) -> dict[str, object]:
        f = self.f
        java_home = self.conf.java_home or os.environ.get("JAVA_HOME", "")
        cfg: dict[str, object] = {
            "jobmanager.rpc.address": "localhost",
            "jobmanager.rpc.port": f.rpc_port,
            "jobmanager.bind-host": "127.0.0.1",
            "taskmanager.bind-host": "127.0.0.1",
            "taskmanager.host": "127.0.0.1",
            "jobmanager.memory.process.size": f.jobmanager_memory,
            "taskmanager.memory.process.size": f.taskmanager_memory,
            "taskmanager.memory.jvm-metaspace.size": f.taskmanager_metaspace,
            "env.java.opts.taskmanager": f.taskmanager_jvm_options,
            "taskmanager.numberOfTaskSlots": f.taskmanager_slots,
            "parallelism.default": 1,
            "rest.address": f.rest_address,
            "rest.bind-address": f.rest_address,
            "rest.port": f.rest_port,
            "env.pid.dir": str(self.pid_dir),
            "env.log.dir": str(self.log_dir),
            "io.tmp.dirs": str(self.tmp_dir),
            "python.executable": sys.executable,
            "python.client.executable": sys.executable,
        }
        if java_home:
            cfg["env.java.home"] = java_home
        return cfg

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) plus what Flink's scripts and the client need to find this
        cluster (FLINK_CONF_DIR) and the venv."""
        env = dict(os.environ if base is None else base)
        env["FLINK_CONF_DIR"] = str(self.conf_dir)
        env["FLINK_LOG_DIR"] = str(self.log_dir)
        env.setdefault("FLINK_HOME", str(flink_home()))
        from jobs.runtime import export_pythonpath

        export_pythonpath(env)  # the TaskManager's embedded Python (thread mode) must see the venv
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        return env

    def _prepare(self) -> None:
        import yaml

        src = flink_home() / "conf"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(src):
            if name.startswith(("log4j", "logback")):
                shutil.copy(src / name, self.conf_dir / name)
        (self.conf_dir / "masters").write_text(f"localhost:{self.f.rest_port}\n")
        (self.conf_dir / "workers").write_text(workers_file(self.f.taskmanagers))
        # The shipped config carries the JVM flags Flink needs on Java 17 (env.java.opts.all); keep it, override ours.
        shipped = _flatten(yaml.safe_load((src / "config.yaml").read_text()) or {})
        merged = {**shipped, **self.config_yaml()}
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))

    def overview(self) -> dict[str, object] | None:
        if not port_open(self.f.rest_address, self.f.rest_port):
            return None
        try:
            with urllib.request.urlopen(self.rest_url + "/overview", timeout=3) as r:
                data: dict[str, object] = json.load(r)
                return data
        except (OSError, ValueError):
            return None

    def healthy(self) -> bool:
        """The REST API answers and every TaskManager of `flink.taskmanagers` has registered."""
        ov = self.overview()
        return bool(ov and int(str(ov.get("taskmanagers", 0))) >= self.f.taskmanagers)

    def rest(self, path: str, method: str = "GET", timeout_s: float = 10.0, body: Any = None) -> Any:
        """JSON of one REST call (`path` from the root, e.g. "/jobs/overview"; `body` sent as JSON); None for an
        empty answer."""
        return rest_json(self.rest_url + path, method, timeout_s, body)

    def job_state(self, job_id: str) -> str:
        """The job's state ("RUNNING", "CANCELED", ...) from `GET /jobs/<id>`."""
        return str(self.rest(f"/jobs/{job_id}")["state"])

    def cancel_job(self, job_id: str, timeout_s: float = 60.0) -> str:
        """`PATCH /jobs/<id>?mode=cancel`, then wait until the job is in a terminal state and the cluster runs no
        job and has all its slots free again (so a job submitted next gets them); returns the final state."""
        state = self.job_state(job_id)
        if state not in TERMINAL_STATES:
            try:
                self.rest(f"/jobs/{job_id}?mode=cancel", method="PATCH")
            except urllib.error.HTTPError as e:  # it may have ended between the two calls
                if self.job_state(job_id) not in TERMINAL_STATES:
                    raise ServiceError(f"cancelling job {job_id} failed: HTTP {e.code} {e.read()[:500]!r}") from e
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.job_state(job_id)
            ov = self.overview()
            if state in TERMINAL_STATES and ov is not None and slots_free(ov):
                return state
            if time.monotonic() >= deadline:
                raise ServiceError(f"job {job_id} still {state} {timeout_s:.0f} s after cancel (overview {ov})")
            time.sleep(0.5)

    def running_job(self, name: str) -> str:
        """The id of the one RUNNING job called `name` (ServiceError when there is none, or more than one)."""
        jobs = [j for j in self.rest("/jobs/overview")["jobs"] if j["name"] == name and j["state"] == "RUNNING"]
        if len(jobs) != 1:
            raise ServiceError(f"{len(jobs)} running jobs named {name!r} on {self.rest_url}: give the job id")
        return str(jobs[0]["jid"])

    def savepoint(self, job_id: str, target_dir: str, stop: bool, timeout_s: float = 300.0) -> str:
        """A savepoint of the job in `target_dir` (`POST /jobs/<id>/stop` when `stop`: the job then ends, its Kafka
        transactions committed; else `POST /jobs/<id>/savepoints`, the job goes on); returns the savepoint's path."""
        body = ({"targetDirectory": target_dir, "drain": False} if stop
                else {"target-directory": target_dir, "cancel-job": False})  # fmt: skip
        try:
            trigger = self.rest(f"/jobs/{job_id}/" + ("stop" if stop else "savepoints"), "POST", 30, body)["request-id"]
        except urllib.error.HTTPError as e:
            raise ServiceError(f"savepoint of job {job_id}: HTTP {e.code} {e.read()[:500]!r}") from e
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = self.rest(f"/jobs/{job_id}/savepoints/{trigger}")
            if st["status"]["id"] == "COMPLETED":
                op = st.get("operation") or {}
                if "location" in op:
                    return str(op["location"])
                raise ServiceError(f"savepoint of job {job_id} failed: {str(op.get('failure-cause'))[:1000]}")
            time.sleep(0.5)
        raise ServiceError(f"savepoint of job {job_id} not done after {timeout_s:.0f} s")

    def pids(self) -> list[int]:
        return find_pids(self.marker)

    def status(self) -> str:
        pids = self.pids()
        if pids and self.healthy():
            return f"running (pids {pids}, {self.rest_url})"
        if pids:
            return f"starting or unhealthy (pids {pids})"
        if self.healthy():
            return f"answering on {self.rest_url} but not started by us"
        return "stopped"

    def _script(self, name: str) -> None:
        proc = subprocess.run(["bash", str(flink_home() / "bin" / name)], env=self.env(), capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise ServiceError(f"{name} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

    def up(self) -> str:
        pids = self.pids()
        if pids:
            try:
                wait_until(self.healthy, 30, "Flink cluster")
                return f"already running (pids {pids})"
            except ServiceError:
                self.down()
        if port_open(self.f.rest_address, self.f.rest_port):
            raise ServiceError(f"port {self.f.rest_port} is taken by a process this state dir did not start; "
                               "stop it, or set STREAMREC_FLINK_REST_PORT")
        self._prepare()
        self._script("start-cluster.sh")
        wait_until(self.healthy, self.f.start_timeout_s, "Flink cluster",
                   alive=lambda: bool(self.pids()), log_file=self._jm_log())
        return f"started (pids {self.pids()}, {self.rest_url})"

    def _jm_log(self) -> Path | None:
        logs = sorted(self.log_dir.glob("*standalonesession*.log"))
        return logs[-1] if logs else None

    def down(self) -> str:
        """Stop the cluster; then its working directories (`io.tmp.dirs`) go, once none of its processes runs."""
        if not self.pids():
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            return "not running"
        if self.conf_dir.exists():
            with contextlib.suppress(ServiceError, subprocess.TimeoutExpired):
                self._script("stop-cluster.sh")
        stray = self.pids()
        for p in stray:
            stop_pid(p)
        if not self.pids():
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        return "stopped"

    def run_argv(self, *args: str) -> tuple[list[str], dict[str, str]]:
        """argv and environment for `bin/flink <args>` against this cluster."""
        if not (self.conf_dir / "config.yaml").exists():
            self._prepare()  # a cluster started elsewhere: the client still needs a config pointing at it
        return ["bash", str(flink_home() / "bin" / "flink"), *args], self.env()
