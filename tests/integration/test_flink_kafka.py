"""PyFlink with Flink's official Kafka connector: 10,000 records through KafkaSource → Python map → KafkaSink,
on the minicluster and on the local standalone cluster via `flink run -py`. None lost, none duplicated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from streamrec.config import REPO_ROOT
from tests.integration.test_kafka import consume_all, produce

N = 10_000


def _records() -> list[bytes]:
    return [json.dumps({"event_id": f"e{i}", "user_id": f"u{i % 113}", "n": i}).encode() for i in range(N)]


def _check(bootstrap: str, out_topic: str) -> None:
    got = consume_all(bootstrap, out_topic, expected=N, isolation_level="read_committed")
    objs = [json.loads(v) for v in got]
    assert all(o["via"] == "flink-passthrough" for o in objs)
    ids = [o["event_id"] for o in objs]
    assert len(ids) == N, f"expected {N} records, got {len(ids)}"
    assert len(set(ids)) == N, "duplicates in the output"
    assert set(ids) == {f"e{i}" for i in range(N)}


def test_minicluster_kafka_to_kafka_exactly_once(kafka_bootstrap, make_topic, connector_jars) -> None:
    src, dst = make_topic("flink-in"), make_topic("flink-out")
    produce(kafka_bootstrap, src, _records())
    argv = [sys.executable, "-m", "jobs.passthrough", "--bootstrap", kafka_bootstrap, "--in-topic", src,
            "--out-topic", dst, "--bounded", "--delivery", "EXACTLY_ONCE", "--group", f"g-{src}"]
    for jar in connector_jars:
        argv += ["--jar", str(jar)]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check(kafka_bootstrap, dst)


def test_standalone_cluster_flink_run_py(kafka_bootstrap, make_topic, connector_jars, flink_cluster) -> None:
    src, dst = make_topic("cluster-in"), make_topic("cluster-out")
    produce(kafka_bootstrap, src, _records())
    job = Path(REPO_ROOT) / "jobs" / "passthrough.py"
    args = ["run", "-py", str(job), "-pyexec", sys.executable, "-pyclientexec", sys.executable]
    args += ["-j", str(connector_jars[0])]  # `flink run` takes one jar: the Kafka connector, all passthrough needs
    args += ["--bootstrap", kafka_bootstrap, "--in-topic", src, "--out-topic", dst, "--bounded",
             "--delivery", "EXACTLY_ONCE", "--group", f"g-{src}"]
    argv, env = flink_cluster.run_argv(*args)
    proc = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Job has been submitted" in proc.stdout or "JobID" in proc.stdout, proc.stdout[-2000:]
    _check(kafka_bootstrap, dst)
