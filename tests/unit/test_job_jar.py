"""jobs/java is compiled into the job jar on demand, and rebuilt only when a source changes."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

from streamrec.services import maven
from streamrec.services.settings import services


def test_job_jar_builds_once_and_holds_the_serializer(tmp_path: Path) -> None:
    flink = sorted(maven.fetch(services().state_path, "flink").glob("*.jar"))
    jar = maven.job_jar(tmp_path, flink)
    with zipfile.ZipFile(jar) as z:
        assert "streamrec/flink/KeyedStringSerializer.class" in z.namelist()
    mtime = jar.stat().st_mtime_ns
    assert maven.job_jar(tmp_path, flink) == jar and jar.stat().st_mtime_ns == mtime  # cached
    (jar.parent / ".sources.sha256").write_text("stale")
    maven.job_jar(tmp_path, flink)
    assert jar.stat().st_mtime_ns != mtime  # rebuilt when the recorded sources differ


def test_streamed_input_wraps_every_python_operator_type_as_the_same_operator(tmp_path: Path) -> None:
    """jobs/java/StreamedInput.java: each process-mode Python operator the job uses becomes its streamed subclass
    with every field of the original (configuration, function, types, side outputs), `copy` (Python operator
    chaining) keeps the subclass, a negative interval is refused, and `apply` replaces the operators of a stream
    graph once, keeping the chaining strategy."""

    flink = sorted(maven.fetch(services().state_path, "flink").glob("*.jar"))
    jar = maven.job_jar(tmp_path, flink)
    dist = maven.pyflink_jars()
    table_api = sorted((dist[0].parent).glob("flink-table-api-java-uber*.jar"))  # PythonFunction (test only)
    cp = os.pathsep.join(str(p) for p in [jar, *dist, *table_api, *flink])
    proc = subprocess.run([maven.java(), "-cp", cp, str(Path(__file__).parent / "java" / "StreamedInputCheck.java")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    for kind, ours in (("ExternalPythonKeyedProcessOperator", "KeyedProcess"),
                       ("ExternalPythonProcessOperator", "Process"),
                       ("ExternalPythonKeyedCoProcessOperator", "KeyedCoProcess"),
                       ("ExternalPythonCoProcessOperator", "CoProcess")):
        assert f"{kind} wrapped streamrec.flink.StreamedInput${ours}" in out
        assert f"{kind} subclass true" in out
        assert f"{kind} same true true true [OutputTag(String, side)]" in out
        assert f"{kind} copy streamrec.flink.StreamedInput${ours}" in out
    assert "negative refused" in out
    assert out[-3:] == ["applied 1", "graph streamrec.flink.StreamedInput$Process HEAD", "applied again 0"]
