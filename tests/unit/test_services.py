"""Service management logic that needs no running service."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from streamrec import config
from streamrec.services.cassandra import CassandraService, jvm_options, schema_statements
from streamrec.services.flink import _flatten
from streamrec.services.kafka import KafkaService, new_cluster_id
from streamrec.services.proc import ServiceError, cmdline, read_pid, spawn, stop_pid, wait_until
from streamrec.services.settings import ServicesConf


def conf_with(**env: str) -> ServicesConf:
    return config.load(ServicesConf, config.CONF_DIR / "services.yaml", env=env)


def test_stale_pid_file_is_ignored_and_removed(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file.write_text(str(dead.pid))
    assert read_pid(pid_file, "anything") is None
    assert not pid_file.exists()
    pid_file.write_text(str(os.getpid()))  # alive, but not the service's command line
    assert read_pid(pid_file, "streamrec.service=nope") is None


def test_spawn_detached_then_stop(tmp_path: Path) -> None:
    pid = spawn(["sh", "-c", "sleep 60 # marker-xyz"],
                tmp_path / "out.log", tmp_path / "p.pid")
    # (this test failed about once in a few hundred runs, without a trace: the messages say what the process was)
    assert read_pid(tmp_path / "p.pid", "marker-xyz") == pid, _proc_facts(pid, tmp_path / "p.pid")
    stop_pid(pid, timeout_s=5)
    assert read_pid(tmp_path / "p.pid", "marker-xyz") is None, _proc_facts(pid, tmp_path / "p.pid")


def test_spawn_at_lower_priority(tmp_path: Path) -> None:
    """`nice`: the process runs at that lower priority, and where the kernel schedules sessions as groups
    (autogroup) its session's group has that weight too (a thread's own nice value does not count across them)."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    pid = spawn(["sh", "-c", "sleep 60 # marker-nice"], tmp_path / "out.log", tmp_path / "p.pid", nice=7)
    try:
        assert read_pid(tmp_path / "p.pid", "marker-nice") == pid
        deadline = time.monotonic() + 5  # `nice` sets the priority, then execs the command (same pid)
        while cmdline(pid).startswith("nice ") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cmdline(pid).startswith("sh "), cmdline(pid)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(base + 7, 19)
        if Path("/proc/self/autogroup").exists():  # a kernel with autogroup: the session's group has the weight
            group = _autogroup(pid)
            assert group is not None, Path(f"/proc/{pid}/autogroup").read_text()  # its own session: its own group
            assert group[1] == 7, group
            own = _autogroup(os.getpid())  # None in init's session (CI)
            assert own is None or group[0] != own[0]  # not this process's group
    finally:
        stop_pid(pid, timeout_s=5)
    with pytest.raises(ValueError, match="nice must be >= 0"):
        spawn(["true"], tmp_path / "out.log", tmp_path / "q.pid", nice=-1)
    plain = spawn(["sh", "-c", "sleep 60 # marker-plain"], tmp_path / "out.log", tmp_path / "r.pid")
    try:
        assert os.getpriority(os.PRIO_PROCESS, plain) == base  # nice=0: as this process
    finally:
        stop_pid(plain, timeout_s=5)


def _autogroup(pid: int) -> tuple[int, int] | None:
    """(id, nice) of the autogroup of `pid`'s session; None for the root group (the session of init, where CI runs
    this test), for which the kernel prints nothing."""
    m = re.fullmatch(r"/autogroup-(\d+) nice (-?\d+)\s*", Path(f"/proc/{pid}/autogroup").read_text())
    return (int(m[1]), int(m[2])) if m else None


def test_service_priority_from_conf_and_env() -> None:
    """`nice` of each local service: conf/services.yaml, overridable by env; outside 0..19 refused, naming the key."""
    assert conf_with(STREAMREC_KAFKA_NICE="3").kafka.nice == 3
    assert conf_with(STREAMREC_CASSANDRA_NICE="0").cassandra.nice == 0
    with pytest.raises(ValueError, match=r"kafka\.nice must be 0\.\.19 \(STREAMREC_KAFKA_NICE\), got -1"):
        conf_with(STREAMREC_KAFKA_NICE="-1")
    with pytest.raises(ValueError, match=r"cassandra\.nice must be 0\.\.19"):
        conf_with(STREAMREC_CASSANDRA_NICE="20")


def test_read_pid_waits_for_a_process_still_in_exec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after spawn a process can show an empty command line (mid-execve): not a stale pid file."""
    import streamrec.services.proc as proc

    pid = os.getpid()
    (tmp_path / "p.pid").write_text(str(pid))
    reads = iter(["", "", "python marker-xyz"])
    monkeypatch.setattr(proc, "cmdline", lambda _pid: next(reads))
    assert read_pid(tmp_path / "p.pid", "marker-xyz") == pid
    assert (tmp_path / "p.pid").exists()
    monkeypatch.setattr(proc, "cmdline", lambda _pid: "")  # empty for good (a kernel thread, say): stale after 1 s
    assert read_pid(tmp_path / "p.pid", "marker-xyz") is None and not (tmp_path / "p.pid").exists()


def _proc_facts(pid: int, pid_file: Path) -> dict[str, object]:
    from streamrec.services.proc import cmdline, pid_alive

    def read(p: Path) -> str | None:
        try:
            return p.read_text()
        except OSError:
            return None

    return {"pid": pid, "alive": pid_alive(pid), "cmdline": cmdline(pid), "pid_file": read(pid_file),
            "stat": read(Path(f"/proc/{pid}/stat"))}  # fmt: skip


def test_wait_until_reports_death_with_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("line1\nFATAL: port in use\n")
    with pytest.raises(ServiceError, match="port in use"):
        wait_until(lambda: False, 5, "svc", alive=lambda: False, log_file=log)


def test_kafka_properties_follow_config() -> None:
    svc = KafkaService(conf_with(STREAMREC_KAFKA_PORT="19999", STREAMREC_KAFKA_CONTROLLER_PORT="19998"))
    props = dict(line.split("=", 1) for line in svc.server_properties().splitlines())
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19999,CONTROLLER://127.0.0.1:19998"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19998"
    assert props["process.roles"] == "broker,controller"
    assert props["transaction.state.log.replication.factor"] == "1"


def test_kafka_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64
    import uuid

    # 0xf8…: the first base64 character is "-" (kafka-storage then fails: "-t" expected one argument)
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))
    cid = new_cluster_id()
    assert cid == base64.urlsafe_b64encode(b"\x01" * 16).rstrip(b"=").decode()
    assert len(cid) == 22 and base64.urlsafe_b64decode(cid + "==") == b"\x01" * 16


def test_cassandra_yaml_and_jvm_flags() -> None:
    svc = CassandraService(conf_with(STREAMREC_CASSANDRA_NATIVE_PORT="19042", STREAMREC_STATE_DIR="/tmp/sx"))
    y = svc.cassandra_yaml()
    assert y["native_transport_port"] == 19042
    assert y["commitlog_directory"].startswith("/tmp/sx/cassandra")
    flags = jvm_options()
    assert "--add-opens=java.base/java.util=ALL-UNNAMED" in flags
    assert not any(f.startswith("#") for f in flags)


def test_service_jvm_options_reach_the_command_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamrec.services import cassandra, kafka, maven

    monkeypatch.setattr(maven, "fetch", lambda state, name: tmp_path / "jars" / name)  # no jars needed
    conf = conf_with(STREAMREC_STATE_DIR=str(tmp_path), STREAMREC_KAFKA_JVM_OPTIONS="-XX:+UseSerialGC -Dk.x=1",
                     STREAMREC_CASSANDRA_JVM_OPTIONS=" -Dc.y=2 ")  # fmt: skip
    k = KafkaService(conf)._jvm(kafka.MAIN_CLASS)  # noqa: SLF001
    assert k.index("-XX:+UseSerialGC") < k.index("-Dk.x=1") < k.index(kafka.MAIN_CLASS)
    c = CassandraService(conf)._prepare()  # noqa: SLF001
    assert c.index("-Dc.y=2") < c.index(cassandra.MAIN_CLASS) and "-Dk.x=1" not in c
    bare = conf_with(STREAMREC_STATE_DIR=str(tmp_path), STREAMREC_KAFKA_JVM_OPTIONS="",
                     STREAMREC_CASSANDRA_JVM_OPTIONS="")  # fmt: skip
    for cmd in (KafkaService(bare)._jvm(kafka.MAIN_CLASS), CassandraService(bare)._prepare()):  # noqa: SLF001
        assert "" not in cmd and not any("TieredStopAtLevel" in a for a in cmd)


def test_schema_statements_substitute_keyspace() -> None:
    stmts = schema_statements(conf_with().cassandra, keyspace="ks_x")
    assert stmts[0].startswith("CREATE KEYSPACE IF NOT EXISTS ks_x")
    assert any("ks_x.recommendations_by_user" in s for s in stmts)
    assert any("ks_x.fraud_flags" in s for s in stmts)
    assert not any("{keyspace}" in s or "--" in s for s in stmts)


def test_flink_config_flattening() -> None:
    assert _flatten({"env": {"java": {"opts": {"all": "-X"}}}, "a": 1}) == {"env.java.opts.all": "-X", "a": 1}


def test_flink_workers_file_has_one_line_per_taskmanager(tmp_path: Path) -> None:
    from streamrec.services.flink import FlinkService, workers_file

    assert workers_file(1) == "localhost\n" and workers_file(2) == "localhost\nlocalhost\n"
    with pytest.raises(ValueError):
        workers_file(0)
    assert conf_with().flink.taskmanagers == 1  # conf/services.yaml: the cluster of `services up --flink`
    svc = FlinkService(conf_with(STREAMREC_FLINK_TASKMANAGERS="2", STREAMREC_FLINK_TASKMANAGER_SLOTS="1",
                                 STREAMREC_FLINK_REST_PORT="18099"), home=tmp_path / "fl")  # fmt: skip
    svc._prepare()  # noqa: SLF001
    assert (tmp_path / "fl" / "conf" / "workers").read_text().splitlines() == ["localhost", "localhost"]
    import yaml

    cfg = yaml.safe_load((tmp_path / "fl" / "conf" / "config.yaml").read_text())
    assert cfg["taskmanager.numberOfTaskSlots"] == 1 and cfg["rest.port"] == 18099
    assert cfg["env.log.dir"] == str(tmp_path / "fl" / "log")
    assert cfg["io.tmp.dirs"] == str(tmp_path / "fl" / "tmp") and (tmp_path / "fl" / "tmp").is_dir()
    left = tmp_path / "fl" / "tmp" / "tm_127.0.0.1:1-abc" / "blobStorage"  # what a stopped TaskManager leaves
    left.mkdir(parents=True)
    (left / "job.jar").write_bytes(b"x")
    assert svc.down() == "not running" and not (tmp_path / "fl" / "tmp").exists()
    assert (tmp_path / "fl" / "conf" / "config.yaml").exists()  # only the working directories go
    env = svc.env({"KEEP": "1"})
    assert env["KEEP"] == "1" and env["FLINK_CONF_DIR"] == str(tmp_path / "fl" / "conf")


def test_flink_healthy_needs_every_taskmanager(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamrec.services.flink import FlinkService

    svc = FlinkService(conf_with(STREAMREC_FLINK_TASKMANAGERS="2"))
    monkeypatch.setattr(svc, "overview", lambda: {"taskmanagers": 1})
    assert not svc.healthy()
    monkeypatch.setattr(svc, "overview", lambda: {"taskmanagers": 2})
    assert svc.healthy()


def test_flink_cancel_job_parses_the_rest_replies() -> None:
    """`cancel_job` against a fake REST server (parsing only; the real cluster path runs in `streamrec bench`):
    PATCH /jobs/<id>?mode=cancel, then polls until the job is terminal and the slots are free."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from streamrec.services.flink import FlinkService, slots_free

    calls: list[str] = []
    states = ["RUNNING", "CANCELLING", "CANCELED"]
    overviews = [{"jobs-running": 1, "slots-total": 2, "slots-available": 0},
                 {"jobs-running": 0, "slots-total": 2, "slots-available": 2}]  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: object | None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            calls.append(f"GET {self.path}")
            if self.path == "/overview":
                self._reply(200, overviews.pop(0) if len(overviews) > 1 else overviews[0])
            else:
                self._reply(200, {"jid": "j1", "state": states.pop(0) if len(states) > 1 else states[0]})

        def do_PATCH(self) -> None:  # noqa: N802
            calls.append(f"PATCH {self.path}")
            self._reply(202, None)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        svc = FlinkService(conf_with(STREAMREC_FLINK_REST_PORT=str(server.server_address[1])))
        assert svc.cancel_job("j1", timeout_s=10) == "CANCELED"
    finally:
        server.shutdown()
        server.server_close()
    assert calls[:2] == ["GET /jobs/j1", "PATCH /jobs/j1?mode=cancel"]
    assert calls[-2:] == ["GET /jobs/j1", "GET /overview"] and calls.count("GET /overview") == 2
    assert not slots_free({"jobs-running": 0, "slots-total": 2, "slots-available": 1})
