"""The Python environment is the locked one (issue 16): `make setup` installs requirements.lock with
`pip install --require-hashes`, so every package of the lock is installed at exactly its version, every entry carries
hashes, and every dependency pyproject.toml declares is in it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from streamrec.config import REPO_ROOT

LOCK = REPO_ROOT / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _entries() -> list[tuple[str, str, str]]:
    """(normalised name, version, the entry's text) of each requirement of the lock."""
    out: list[tuple[str, str, str]] = []
    for line in LOCK.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            out.append((_norm(m.group(1)), m.group(2), line))
        elif out and line.startswith(" "):
            name, version, text = out[-1]
            out[-1] = (name, version, text + "\n" + line)
    return out


def test_every_locked_package_is_installed_at_its_version() -> None:
    pins = {name: version for name, version, _ in _entries()}
    assert len(pins) > 50 and {"torch", "onnxruntime", "apache-flink", "kafka-python", "cassandra-driver"} <= set(pins)
    wrong = {}
    for name, version in pins.items():
        try:
            got = metadata.version(name)
        except metadata.PackageNotFoundError:
            got = None
        if got != version:
            wrong[name] = (version, got)
    assert not wrong, f"installed differs from requirements.lock (locked, installed): {wrong}"


def test_every_entry_has_hashes_and_every_declared_dependency_is_locked() -> None:
    entries = _entries()
    assert all("--hash=sha256:" in text for _, _, text in entries), [n for n, _, t in entries if "--hash" not in t]
    assert len({n for n, _, _ in entries}) == len(entries), "a package locked twice"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    names = {_norm(m.group(1)) for d in declared if (m := _NAME.match(d))}
    missing = names - {n for n, _, _ in entries}
    assert not missing, f"declared in pyproject.toml but not in requirements.lock (run `make lock`): {missing}"


def test_kafka_python_checksums_in_c() -> None:
    """kafka-python checks (consumer) and writes (producer) every record batch's CRC-32C; without the `crc32c`
    package it does so in pure Python (measured 2026-12-03: 181 vs 31 µs of CPU per 750-byte record read, which on
    two cores took CPU from the job the bench measures)."""
    from kafka.record import util

    assert util._crc32c.__module__.split(".")[0] == "crc32c", util._crc32c
    assert util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283  # the CRC-32C check value
