"""The pure parts of the bench's cluster phases: the JobID from `flink run -d`, where subtasks ran (REST replies as
Flink 2.3 gives them), the job handle's liveness and stop, and the cluster's own ports and home. The real path (a
2-TaskManager cluster, `flink run`, cancel) runs in `streamrec bench`."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from streamrec.bench import cluster
from streamrec.bench.cluster import ClusterJob, distinct_taskmanagers, job_id_from, placement
from streamrec.bench.e2e import E2E

JOB = {"jid": "6d873a304c847d59c0ce969737593224", "state": "RUNNING", "vertices": [
    {"id": "cbc357ccb763df2852fee8c4fc7d55f2", "name": "Source: kafka-events -> parse", "parallelism": 2},
    {"id": "6891c180380849fb50c6bd2bce1dc38c", "parallelism": 2,
     "name": "user-operator -> (Map, split-recommendations -> kafka-recommendations: Writer)"}]}  # fmt: skip
VERTEX = {"id": "6891c180380849fb50c6bd2bce1dc38c", "parallelism": 2, "subtasks": [
    {"subtask": 0, "status": "RUNNING", "attempt": 0, "endpoint": "localhost:37503",
     "taskmanager-id": "127.0.0.1:43549-d62305", "start-time": 1, "duration": 5},
    {"subtask": 1, "status": "RUNNING", "attempt": 0, "endpoint": "localhost:41109",
     "taskmanager-id": "127.0.0.1:42517-d34a5f", "start-time": 1, "duration": 5}]}  # fmt: skip


def test_job_id_from_flink_run_output() -> None:
    out = "log line\nJob has been submitted with JobID 6d873a304c847d59c0ce969737593224\n"
    assert job_id_from(out) == "6d873a304c847d59c0ce969737593224"
    assert job_id_from("org.apache.flink.client.program.ProgramInvocationException: boom") is None


def test_placement_of_the_user_operator_subtasks() -> None:
    placed = placement(JOB, {VERTEX["id"]: VERTEX})
    assert [v["vertex"] for v in placed] == [VERTEX["id"]]  # the source vertex is not the user operator's
    assert placed[0]["subtasks"] == [
        {"subtask": 0, "status": "RUNNING", "taskmanager_id": "127.0.0.1:43549-d62305", "endpoint": "localhost:37503"},
        {"subtask": 1, "status": "RUNNING", "taskmanager_id": "127.0.0.1:42517-d34a5f", "endpoint": "localhost:41109"}]
    assert distinct_taskmanagers(placed) == 2
    both_on_one = {**VERTEX, "subtasks": [{**s, "taskmanager-id": "tm-a"} for s in VERTEX["subtasks"]]}
    assert distinct_taskmanagers(placement(JOB, {VERTEX["id"]: both_on_one})) == 1
    assert distinct_taskmanagers(placement(JOB, {})) == 0  # no detail fetched: nothing claimed


class FakeCluster:
    """The FlinkService calls a ClusterJob makes."""

    def __init__(self, states: list[str]) -> None:
        self.states = states
        self.cancelled: list[str] = []
        self.jvms: list[int] = [1]

    def job_state(self, job_id: str) -> str:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if state == "unreachable":
            raise ConnectionRefusedError("REST down")
        return state

    def pids(self) -> list[int]:
        return self.jvms

    def cancel_job(self, job_id: str, timeout_s: float) -> str:
        self.cancelled.append(job_id)
        return "CANCELED"

    def rest(self, path: str) -> Any:
        return {"/jobs/j": JOB, f"/jobs/j/vertices/{VERTEX['id']}": VERTEX,
                "/taskmanagers": {"taskmanagers": [{"id": "tm-a"}, {"id": "tm-b"}]}}[path]

    def overview(self) -> dict[str, int]:
        return {"taskmanagers": 2, "slots-total": 2, "slots-available": 0, "jobs-running": 1}


def _job(fake: FakeCluster) -> ClusterJob:
    job = ClusterJob(fake, "j", {"job_id": "j"})  # type: ignore[arg-type]
    job.poll_every_s = 0.0  # no caching between the calls of a test
    return job


def test_cluster_job_is_alive_while_flink_runs_it() -> None:
    fake = FakeCluster(["RUNNING", "RESTARTING", "FAILED"])
    job = _job(fake)
    assert job.poll() is None and job.poll() is None  # RUNNING, RESTARTING
    assert job.poll() == 1  # FAILED: the phase sees "the system exited"
    down = _job(FakeCluster(["unreachable"]))
    assert down.poll() is None  # REST not answering but the JVMs are there: still alive
    down.cluster.jvms = []  # type: ignore[attr-defined]
    assert down.poll() == 1


def test_stopping_a_cluster_job_cancels_it_and_records_where_it_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCluster(["RUNNING"])
    job = _job(fake)
    monkeypatch.setattr(cluster, "python_children", lambda _c: {"tm-0": 3, "tm-1": 3})
    E2E._stop([job])  # noqa: SLF001 - how run_phase stops every system
    assert fake.cancelled == ["j"] and job.poll() == 0
    r = job.report
    assert r["final_state"] == "CANCELED" and r["taskmanager_ids"] == ["tm-a", "tm-b"]
    assert r["user_operator_taskmanagers"] == 2 and r["python_processes_by_taskmanager_jvm"]["tm-1"] == 3
    job.stop(1.0)
    assert fake.cancelled == ["j"]  # once


def test_bench_flink_has_its_own_home_ports_and_taskmanagers(tmp_path: Path) -> None:
    from streamrec.services.settings import services

    svc = cluster.bench_flink(tmp_path / "fc", taskmanagers=2, slots=1)
    default = services().flink
    assert svc.home == tmp_path / "fc" and svc.conf_dir == tmp_path / "fc" / "conf"
    assert svc.f.taskmanagers == 2 and svc.f.taskmanager_slots == 1
    assert svc.f.taskmanager_memory == default.taskmanager_memory
    assert svc.f.rest_port != default.rest_port and svc.f.rpc_port != default.rpc_port
    assert svc.marker != cluster.FlinkService(services()).marker  # its JVMs are told apart from the default's
    with socket.socket() as s:  # the port was free when picked
        s.bind(("127.0.0.1", svc.f.rest_port))


def test_memory_of_the_cluster() -> None:
    m = cluster.memory_mb(2, "2048m", "1g")
    assert m["needed"] == 2 * 2048 + 1024 and (m["available"] is None or m["available"] > 0)
    assert cluster._mb("1024mb") == 1024 and cluster._mb("2G") == 2048  # noqa: SLF001
    with pytest.raises(ValueError):
        cluster._mb("lots")  # noqa: SLF001


def test_python_interpreters_are_told_from_scripts_named_python() -> None:
    assert cluster.is_python("/work/.venv/bin/python -m pyflink.fn_execution.beam.beam_boot --id=1 ")
    assert cluster.is_python("python3.11 -c x")
    assert not cluster.is_python("/bin/bash /x/lib/python3.11/site-packages/pyflink/bin/pyflink-udf-runner.sh ")
    assert not cluster.is_python("")
