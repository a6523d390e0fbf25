"""Running native Python extensions safely in thread mode (`python.execution-mode: thread`).

In thread mode Flink runs the Python functions inside the TaskManager JVM through PEMJA: a Java task thread calls
into CPython with a thread state PEMJA made for it (`PyThreadState_New` + `PyEval_AcquireThread`, pemja
`src/main/c/pemja/core/pylib.c`). CPython's GILState API (`PyGILState_Ensure` / `PyGILState_Check`) does not know
that thread state when the OS thread already had another one bound (several Python operators on one task thread,
each with its own PEMJA thread), so an extension that uses the GILState API on such a thread deadlocks or aborts.
Measured on this job (2026-12, apache-flink 2.3.0, pemja 0.5.x):

- `import onnxruntime` (a pybind11 module: its init takes the GIL through `PyGILState_Ensure`) never returns on a
  task thread (py-spy dump of the TaskManager JVM: inside `onnxruntime/capi/_pybind_state.py`); `import torch`, also
  pybind11, is the same kind of import;
- a call into the `onnx` package's nanobind extension aborts the JVM: `nanobind::detail::obj_vectorcall():
  PyGILState_Check() failure`.

A thread started by Python's `threading` has a thread state CPython bound itself, so there both work. What runs here
on such a thread: loading the native modules and the model (importing, verifying hashes with `onnx`, creating the
onnxruntime sessions, loading the text encoder). Calls on the hot path stay on the task thread: an onnxruntime
`run` only releases and re-takes the GIL around its work (`PyEval_SaveThread` / `PyEval_RestoreThread`, no
GILState), measured to run correctly there (the job end to end in thread mode).

In process mode (Beam workers: ordinary Python threads) nothing changes but a thread hand-off at load time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def on_python_thread(fn: Callable[[], T], name: str = "streamrec-load") -> T:
    """`fn()` run on a new `threading` thread and waited for (the caller releases the GIL while it waits); its
    result, or its exception re-raised here."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller, which re-raises it
            box["error"] = e

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def preload_native_modules() -> None:
    """Import numpy and onnxruntime on a Python thread (see the module's doc), so that later imports of them on a
    task thread find them loaded."""

    def load() -> None:
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401

    on_python_thread(load, name="streamrec-preload")


def subtask_index(ctx: Any) -> int:
    """The operator instance's index. NOTE: PyFlink 2.3's thread-mode runtime context calls
    `RuntimeContext.getIndexOfThisSubtask()`, which Flink 2 moved to `getTaskInfo()` (AttributeError on a
    `pemja.PyJObject`); there the Java context is asked directly."""
    try:
        return int(ctx.get_index_of_this_subtask())
    except AttributeError:
        return int(ctx._runtime_context.getTaskInfo().getIndexOfThisSubtask())
