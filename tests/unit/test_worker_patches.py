"""jobs/worker_patches.py: a bundle's state writes are all sent before any is awaited, every one is awaited before the
commit returns (errors surface), and the Beam sampler starts no thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from jobs import worker_patches

pytestmark = pytest.mark.skipif(worker_patches.versions() != worker_patches.VERIFIED,
                                reason="the patches apply to the verified PyFlink/Beam versions only")  # fmt: skip


class _Future:
    def __init__(self, log: list[str], name: str, error: Exception | None = None) -> None:
        self.log, self.name, self.error = log, name, error

    def get(self) -> None:
        self.log.append(f"wait {self.name}")
        if self.error is not None:
            raise self.error


class _Handler:
    """Stands in for Beam's caching state handler: every request is logged and answered with a future."""

    def __init__(self, log: list[str], fail: str = "") -> None:
        self.log, self.fail = log, fail

    def clear(self, key: str) -> _Future:
        self.log.append(f"clear {key}")
        return _Future(self.log, f"clear {key}")

    def extend(self, key: str, coder: Any, elements: list[Any]) -> _Future:
        self.log.append(f"extend {key}")
        return _Future(self.log, f"extend {key}", RuntimeError("refused") if key == self.fail else None)


class _Coder:
    def get_impl(self) -> None:
        return None


def _bag(handler: _Handler, key: str) -> Any:
    from apache_beam.runners.worker.bundle_processor import SynchronousBagRuntimeState

    bag = SynchronousBagRuntimeState.__new__(SynchronousBagRuntimeState)
    bag._state_handler, bag._state_key, bag._value_coder = handler, key, _Coder()
    bag._cleared, bag._added_elements = True, [b"value"]
    return bag


def _backend(states: list[Any]) -> Any:
    from pyflink.fn_execution.state_impl import RemoteKeyedStateBackend

    backend = RemoteKeyedStateBackend.__new__(RemoteKeyedStateBackend)
    backend._internal_state_cache = states
    backend._all_states = {}
    return backend


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    assert worker_patches.install() == ["concurrent-state-commits", "no-sampler-thread"]


def test_install_is_idempotent() -> None:
    assert worker_patches.install() == worker_patches.install()


def test_commit_sends_every_write_before_waiting_for_any() -> None:
    log: list[str] = []
    handler = _Handler(log)
    _backend([_bag(handler, "shard-1/due"), _bag(handler, "shard-2/due")]).commit()
    assert log == ["clear shard-1/due", "extend shard-1/due", "clear shard-2/due", "extend shard-2/due",
                   "wait extend shard-1/due", "wait extend shard-2/due"]  # fmt: skip


def test_a_state_committed_alone_still_waits_for_its_write() -> None:
    log: list[str] = []
    _bag(_Handler(log), "k").commit()
    assert log == ["clear k", "extend k", "wait extend k"]


def test_a_refused_write_fails_the_commit() -> None:
    log: list[str] = []
    handler = _Handler(log, fail="shard-1/rates")
    with pytest.raises(RuntimeError, match="refused"):
        _backend([_bag(handler, "shard-1/rates"), _bag(handler, "shard-2/rates")]).commit()
    assert "extend shard-2/rates" in log  # sent before the first wait raised


def test_map_state_commit_is_deferred_too() -> None:
    from pyflink.fn_execution.state_impl import CachingMapStateHandler, InternalSynchronousMapRuntimeState

    log: list[str] = []

    class MapHandler:
        def clear(self, key: str) -> _Future:
            log.append(f"clear {key}")
            return _Future(log, f"clear {key}")

        def extend(self, key: str, items: list[Any], kenc: Any, venc: Any) -> _Future:
            log.append(f"extend {key} {sorted((flag, k) for flag, k, _ in items)}")
            return _Future(log, f"extend {key}")

    m = InternalSynchronousMapRuntimeState.__new__(InternalSynchronousMapRuntimeState)
    m._map_state_handler, m._state_key = MapHandler(), "users"
    m._map_key_encoder = m._map_value_encoder = None
    m._cleared, m._mod_count = False, 0
    m._write_cache = {"a": (True, b"1"), "b": (False, None), "c": (True, None)}
    with worker_patches.deferred_waits() as futures:
        m.commit()
        h = CachingMapStateHandler
        assert log == [f"extend users {sorted([(h.SET_VALUE, 'a'), (h.DELETE, 'b'), (h.SET_NONE, 'c')])}"]
    assert len(futures) == 1 and m._write_cache == {} and m._mod_count == 1


def test_sampler_starts_no_thread_and_stops_at_once() -> None:
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    s = statesampler.StateSampler("stage", CounterFactory())
    before = threading.active_count()
    for _ in range(3):  # a bundle processor's sampler is reset and reused for every bundle
        s.start()
        try:
            assert threading.active_count() == before
            assert statesampler.get_current_tracker() is s
        finally:
            s.stop_if_still_running()  # (unpatched: joins the thread, so a failure here ends the test)
        assert s.finished and statesampler.get_current_tracker() is None
        s.reset()
