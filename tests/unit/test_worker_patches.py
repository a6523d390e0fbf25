"""jobs/worker_patches.py: a bundle's state writes are all sent before any is awaited, every one is awaited before the
commit returns (errors surface), the Beam sampler starts no thread, and `prefetch` reads a batch's uncached map
keys with every request sent before the first wait, into the read cache the `get`s then read."""

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
    assert worker_patches.install() == ["concurrent-state-commits", "no-sampler-thread", "concurrent-state-reads"]


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


class _GrpcStates:
    """Stands in for Beam's gRPC state handler: logs each map-state request it is sent and answers it from `stored`
    (flag byte + value, as Flink's Java side does): a GET when its future is waited for, an ITERATE at once, `batch`
    entries per response. Keys and values are 1-byte length + bytes (the test's coders)."""

    def __init__(self, stored: dict[str, bytes | None], batch: int = 2) -> None:
        self.stored, self.batch, self.log = stored, batch, []  # type: ignore[var-annotated]

    def _request(self, request: Any) -> Any:
        from apache_beam.portability.api import beam_fn_api_pb2
        from pyflink.fn_execution.state_impl import CachingMapStateHandler as H

        key = request.get.continuation_token[1:].decode()  # [GET flag][key bytes]
        self.log.append(f"get {key}")
        log, stored = self.log, self.stored

        class Future:
            def get(self) -> Any:
                log.append(f"wait {key}")
                if key not in stored:
                    data = bytes([H.NOT_EXIST_FLAG])
                else:
                    value = stored[key]
                    data = bytes([H.IS_NONE_FLAG]) if value is None else bytes([H.EXIST_FLAG, len(value)]) + value
                return beam_fn_api_pb2.StateResponse(get=beam_fn_api_pb2.StateGetResponse(data=data))

        return Future()

    def get_raw(self, state_key: Any, token: bytes) -> tuple[bytes, bytes]:
        from pyflink.fn_execution.state_impl import CachingMapStateHandler as H

        if token[0] != H.ITERATE_FLAG:
            raise AssertionError(f"a blocking read of {token!r}: prefetch should have cached it")
        n = int.from_bytes(token[2:6], "big")  # [ITERATE flag][type][int32 length][iterator token]
        page = int(token[6:6 + n].decode()) if n else 0
        self.log.append(f"iterate {page}")
        items = sorted(self.stored.items())[page * self.batch:(page + 1) * self.batch]
        data = b"".join(bytes([len(k)]) + k.encode() + (b"\x00" if v is None else b"\x01" + bytes([len(v)]) + v)
                        for k, v in items)  # fmt: skip
        more = (page + 1) * self.batch < len(self.stored)
        return data, str(page + 1).encode() if more else b""


def _map_state(grpc: _GrpcStates, cache_token: bytes | None = b"user-state", max_entries: int = 1000) -> Any:
    from types import SimpleNamespace

    from apache_beam.portability.api import beam_fn_api_pb2
    from apache_beam.runners.worker.statecache import StateCache
    from pyflink.fn_execution.state_impl import CachingMapStateHandler, InternalSynchronousMapRuntimeState

    handler = CachingMapStateHandler.__new__(CachingMapStateHandler)
    handler._state_cache, handler._underlying = StateCache(10**9), grpc
    handler._context = SimpleNamespace(user_state_cache_token=cache_token, bundle_cache_token=None)
    handler._max_cached_map_key_entries, handler._cached_iterator_num = max_entries, 0
    m = InternalSynchronousMapRuntimeState.__new__(InternalSynchronousMapRuntimeState)
    m._map_state_handler = handler
    m._state_key = beam_fn_api_pb2.StateKey(
        bag_user_state=beam_fn_api_pb2.StateKey.BagUserState(user_state_id="users", key=b"shard-3"))
    m._map_key_encoder = lambda key, out: out.write(key.encode())
    m._map_key_decoder = lambda stream: stream.read(stream.read_byte()).decode()
    m._map_value_decoder = lambda stream: stream.read(stream.read_byte())
    m._cleared, m._is_empty, m._mod_count, m._write_cache = False, None, 0, {"written": (True, b"w")}

    class Wrapper:  # what ctx.get_map_state returns
        def get_internal_state(self) -> Any:
            return m

    return Wrapper()


def test_a_shards_first_read_caches_its_whole_map_and_then_no_key_is_read_alone() -> None:
    grpc = _GrpcStates({"u1": b"state-1", "u2": None, "seen": b"s"}, batch=2)
    state = _map_state(grpc)
    assert worker_patches.prefetch(state, ["u1", "new"]) == 0  # nothing read key by key ...
    assert grpc.log == ["iterate 0", "iterate 1"]  # ... the map was read whole, two pages
    internal = state.get_internal_state()
    assert (internal.get("u1"), internal.get("u2"), internal.get("seen"), internal.get("new"),
            internal.get("written")) == (b"state-1", None, b"s", None, b"w")  # fmt: skip
    assert worker_patches.prefetch(state, ["other", "u1"]) == 0
    assert internal.get("other") is None  # a key the shard never had: known absent, not asked for
    assert grpc.log == ["iterate 0", "iterate 1"]


def test_a_shard_larger_than_the_read_cache_is_read_key_by_key_all_requests_sent_before_any_wait() -> None:
    grpc = _GrpcStates({"u1": b"state-1", "u2": None, "seen": b"s"}, batch=2)
    state = _map_state(grpc, max_entries=2)  # 3 entries do not fit
    assert worker_patches.prefetch(state, ["seen"]) == 1
    assert grpc.log == ["iterate 0", "iterate 1", "get seen", "wait seen"]  # read to its end, then the key
    grpc.log.clear()
    n = worker_patches.prefetch(state, ["u1", "written", "new", "seen", "u1"])
    assert n == 2  # not the written one, not the cached one, u1 once
    assert grpc.log == ["get u1", "get new", "wait u1", "wait new"]
    internal = state.get_internal_state()
    assert (internal.get("u1"), internal.get("new"), internal.get("written")) == (b"state-1", None, b"w")
    assert worker_patches.prefetch(state, ["u1", "new"]) == 0  # cached now: nothing sent
    assert grpc.log[-1] == "wait new"


def test_prefetch_does_nothing_without_a_cross_bundle_cache_token() -> None:
    grpc = _GrpcStates({"u1": b"x"})
    assert worker_patches.prefetch(_map_state(grpc, cache_token=None), ["u1"]) == 0
    assert grpc.log == []
