"""JVM artefacts from Maven Central: each `conf/maven/<name>/pom.xml` resolves into `<state>/jars/<name>/`.

Idempotent and cached: the copy is redone only when the pom changes (its hash is kept next to the jars), and Maven's
own local repository (~/.m2) caches downloads across clones.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from streamrec import config
from streamrec.services.proc import ServiceError

ARTEFACT_SETS = ("kafka", "cassandra", "flink")


def pom_path(name: str) -> Path:
    return config.CONF_DIR / "maven" / name / "pom.xml"


def jar_dir(state: Path, name: str) -> Path:
    return state / "jars" / name


def fetch(state: Path, name: str, quiet: bool = True) -> Path:
    """Resolve the jars of artefact set `name` into `<state>/jars/<name>` (no-op when already current)."""
    pom = pom_path(name)
    if not pom.exists():
        raise ServiceError(f"no pom for artefact set {name!r} at {pom}")
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    out = jar_dir(state, name)
    stamp = out / ".pom.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest and any(out.glob("*.jar")):
        return out
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("Maven (`mvn`) is not on PATH: install it (Debian: apt-get install -y maven)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    argv = [mvn, "-B", "-f", str(pom), "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}"]
    if quiet:
        argv.insert(2, "-q")
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0 or not any(tmp.glob("*.jar")):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise ServiceError(f"Maven could not resolve {pom} (exit {proc.returncode}):\n{tail}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    stamp.write_text(digest)
    return out


def classpath(state: Path, name: str) -> str:
    return str(jar_dir(state, name) / "*")


def connector_jars(state: Path) -> list[Path]:
    """The Flink connector jars (fetched on demand) to ship with a job."""
    return sorted(fetch(state, "flink").glob("*.jar"))
