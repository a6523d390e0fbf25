"""JVM artefacts from Maven Central: each `conf/maven/<name>/pom.xml` resolves into `<state>/jars/<name>/`.

Idempotent and cached: the copy is redone only when the pom changes (its hash is kept next to the jars), and Maven's
own local repository (~/.m2) caches downloads across clones.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zipfile
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


JAVA_SOURCES = config.REPO_ROOT / "jobs" / "java"


def _java_home() -> str:
    return os.environ.get("STREAMREC_JAVA_HOME") or os.environ.get("JAVA_HOME", "")


def java() -> str:
    """The `java` of the JDK that builds jobs/java (`_javac`): what runs the jar's checks in the tests."""
    home = _java_home()
    return str(Path(home) / "bin" / "java") if home else (shutil.which("java") or "java")


def _javac() -> str:
    home = _java_home()
    found = str(Path(home) / "bin" / "javac") if home else shutil.which("javac")
    if not found or not Path(found).exists():
        raise ServiceError("no `javac` found (needed once to build jobs/java): install a Java 17 JDK "
                           "(Debian: apt-get install -y openjdk-17-jdk-headless) or set STREAMREC_JAVA_HOME")
    return found


def pyflink_jars() -> list[Path]:
    """The jars of the PyFlink install that jobs/java compiles and runs against: flink-dist, and flink-python
    (PyFlink's own Java side, in its opt/: ShardKeys calls its KeyByKeySelector)."""
    import pyflink

    home = Path(pyflink.__file__).parent
    return sorted([*(home / "lib").glob("flink-dist*.jar"), *(home / "opt").glob("flink-python*.jar")])


def job_jar(state: Path, flink_jars: list[Path]) -> Path:
    """`jobs/java/*.java` compiled against Flink and the Kafka connector into `<state>/jars/streamrec/` (rebuilt
    only when a source changes)."""
    sources = sorted(JAVA_SOURCES.glob("*.java"))
    digest = hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in sources)).hexdigest()
    out = jar_dir(state, "streamrec")
    jar = out / "streamrec-flink.jar"
    stamp = out / ".sources.sha256"
    if jar.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return jar
    dist = pyflink_jars()
    shutil.rmtree(out, ignore_errors=True)
    classes = out / "classes"
    classes.mkdir(parents=True)
    cp = os.pathsep.join(str(p) for p in [*dist, *flink_jars])
    proc = subprocess.run([_javac(), "--release", "17", "-d", str(classes), "-cp", cp, *map(str, sources)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServiceError(f"javac failed on {JAVA_SOURCES}:\n{proc.stdout}{proc.stderr}")
    with zipfile.ZipFile(jar, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(classes.rglob("*.class")):
            z.write(f, f.relative_to(classes).as_posix())
    shutil.rmtree(classes)
    stamp.write_text(digest)
    return jar


def tool_classes(state: Path, source: Path, jars: list[Path]) -> Path:
    """A one-file Java tool (`source`, default package) compiled against `jars` into `<state>/jars/tools/<name>/`
    (rebuilt only when the source changes); run it with that directory and the jars on the classpath."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    out = jar_dir(state, "tools") / source.stem
    stamp = out / ".source.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest and (out / f"{source.stem}.class").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cp = os.pathsep.join(str(j) for j in jars)
    proc = subprocess.run([_javac(), "--release", "17", "-d", str(out), "-cp", cp, str(source)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServiceError(f"javac failed on {source}:\n{proc.stdout}{proc.stderr}")
    stamp.write_text(digest)
    return out


KAFKA_CONNECTOR = "flink-sql-connector-kafka-"


def connector_jars(state: Path) -> list[Path]:
    """The jars to ship with a job (fetched on demand): Flink's Kafka connector first (`flink run` takes one
    --jarfile: this one), then the Cassandra driver's jars, then our own (jobs/java) last."""
    flink = sorted(fetch(state, "flink").glob("*.jar"), key=lambda p: (not p.name.startswith(KAFKA_CONNECTOR), p.name))
    if not flink or not flink[0].name.startswith(KAFKA_CONNECTOR):
        raise ServiceError(f"no {KAFKA_CONNECTOR}*.jar among {jar_dir(state, 'flink')}: run `streamrec services fetch`")
    return [*flink, job_jar(state, flink)]
