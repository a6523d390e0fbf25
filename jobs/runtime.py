"""Python-side settings every job needs, whichever cluster it runs on."""

from __future__ import annotations

import os
import site
import sys

from pyflink.common import Configuration

from streamrec.config import REPO_ROOT


def python_paths() -> list[str]:
    """This interpreter's site-packages and the repo root.

    NOTE: in thread mode Flink embeds CPython through PEMJA, which loads the *base* interpreter's libpython; it does
    not see a virtualenv's site-packages unless they are on PYTHONPATH (measured: `No module named 'pemja'`).
    """
    return [*site.getsitepackages(), str(REPO_ROOT)]


def export_pythonpath(env: dict[str, str] | None = None) -> dict[str, str]:
    """Put `python_paths()` on PYTHONPATH of `env` (default: this process, inherited by the minicluster JVM)."""
    target = os.environ if env is None else env
    parts = [p for p in target.get("PYTHONPATH", "").split(os.pathsep) if p]
    for p in python_paths():
        if p not in parts:
            parts.append(p)
    target["PYTHONPATH"] = os.pathsep.join(parts)
    return dict(target)


def python_config(execution_mode: str) -> Configuration:
    """A job Configuration with the Python settings. Call it before any other pyflink object: the first one
    launches the gateway JVM, which must inherit PYTHONPATH."""
    export_pythonpath()
    conf = Configuration()
    conf.set_string("python.execution-mode", execution_mode)
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.client.executable", sys.executable)
    return conf
