"""jobs/java is compiled into the job jar on demand, and rebuilt only when a source changes."""

from __future__ import annotations

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
