"""Changes to PyFlink's process-mode Python worker (apache-flink 2.3.0 on apache-beam 2.61.0), each removing waits
for the JVM: two at every bundle end, one per map-state key read for the first time. Installed by the job's functions
in `open()` when `worker_patches: true` (conf/local.yaml); process-wide and idempotent. Measured side by side in
`make bench` (see conf/local.yaml and the README).

Why (py-spy of the job's Python worker, p=1, backlog; `--idle --threads`, 2026-12):
1. **State commits one after another.** At a bundle's end PyFlink commits every keyed state the bundle touched —
   per shard key: the users' MapState, the debounce index and the base rates (ValueStates are Beam bag states) —
   and Beam's `SynchronousBagRuntimeState.commit` / PyFlink's `InternalSynchronousMapRuntimeState.commit` each wait
   for their own gRPC round trip before the next is sent. A round trip took ~5 ms in the job (three GIL hand-offs
   between the worker's threads at CPython's 5 ms switch interval), about 8 % of the worker's bundle time. The
   requests travel in order on one state stream and the JVM answers them in order; here they are all sent first and
   all awaited before the bundle ends, so the bundle still ends only when every write has landed (same guarantee).
2. **A sampling thread per bundle.** Beam's `StateSampler` starts a thread at every bundle start and joins it at the
   end; the thread sleeps in steps growing to 200 ms, so every bundle end waits up to 200 ms for it (~10 % of the
   bundle thread's time on a backlog; a floor on latency with short bundles). It measures Beam's per-transform
   timings, which Flink does not report, and Beam's "processing lull" log. Here no thread is started.
3. **Map-state reads one after another** (`prefetch`, called by the job's functions, not a patch of PyFlink's code).
   A MapState key that is not in PyFlink's read cache yet (a user or item the worker has not seen since it started)
   is read with a blocking round trip, and a batch reads its keys one by one: at a job's start, when every user and
   item is new, the user and item operators waited for ~6,000 such reads one after another (py-spy: 12-14 % of the
   bundle thread at a backlog and at 1,000 events/s). `prefetch` sends a batch's missing keys' requests together,
   waits once, and puts the answers in the read cache the following `get`s read (same values, same cache).

Anything else than the verified versions: nothing is patched and `install()` says why (the job runs unpatched).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

VERIFIED = {"apache-flink": "2.3.0", "apache-beam": "2.61.0"}

_installed: list[str] = []
_lock = threading.Lock()
_pending = threading.local()  # .futures: list while a keyed backend commits, else absent


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in VERIFIED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    return out


def install() -> list[str]:
    """Install the patches once per process; returns what is installed (empty when the versions differ)."""
    with _lock:
        if _installed:
            return list(_installed)
        found = versions()
        if found != VERIFIED:
            log.warning("worker patches not installed: verified with %s, found %s", VERIFIED, found)
            return []
        _patch_commits()
        _patch_sampler()
        _installed.extend(["concurrent-state-commits", "no-sampler-thread", "concurrent-state-reads"])
        return list(_installed)


@contextmanager
def deferred_waits() -> Iterator[list[Any]]:
    """While open, the patched state commits of this thread hand their last request's future to the list instead
    of waiting for it; the caller waits for them all."""
    futures: list[Any] = []
    _pending.futures = futures
    try:
        yield futures
    finally:
        del _pending.futures


def _await(to_await: Any) -> None:
    futures = getattr(_pending, "futures", None)
    if futures is None:
        to_await.get()
    else:
        futures.append(to_await)


def prefetch(state: Any, keys: Iterable[str]) -> int:
    """Read the entries `keys` of a MapState (the current key's) that are neither written in this bundle nor in
    PyFlink's read cache, with every request in flight at once, into that read cache: the `get`s that follow find
    them there instead of waiting for one round trip each. A shard's first read in the worker reads its whole map
    instead, when it fits the read cache (`_cache_whole_map`): then nothing is ever read key by key. Returns how many
    keys were read; 0 (nothing done, the `get`s read as usual) unless `install()` verified the versions and the worker
    caches map state across bundles."""
    if "concurrent-state-reads" not in _installed:
        return 0
    from apache_beam.coders import coder_impl
    from apache_beam.portability.api import beam_fn_api_pb2
    from pyflink.fn_execution import state_impl

    internal = state.get_internal_state()
    if internal._is_empty or internal._cleared:
        return 0
    handler = internal._map_state_handler
    token = handler._get_cache_token()
    grpc = handler._underlying
    if not token or not hasattr(grpc, "_request"):
        return 0
    cache_key = (handler._convert_to_cache_key(internal._state_key), token)
    cached = handler._state_cache.peek(cache_key)
    if cached is None:  # this shard's first read in this worker
        cached = _cache_whole_map(handler, internal, cache_key)
    if cached is not None and cached.is_all_data_cached():
        return 0
    written = internal._write_cache
    missing = [k for k in dict.fromkeys(keys) if k not in written and (cached is None or cached.get(k) is None)]
    missing = missing[: handler._max_cached_map_key_entries]  # more would evict each other from the read cache
    if not missing:
        return 0
    pending = []
    for k in missing:  # the request `CachingMapStateHandler._get_raw` sends, without waiting for its answer
        out = coder_impl.create_OutputStream()
        out.write_byte(handler.GET_FLAG)
        internal._map_key_encoder(k, out)
        request = beam_fn_api_pb2.StateRequest(state_key=internal._state_key,
                                               get=beam_fn_api_pb2.StateGetRequest(continuation_token=out.get()))
        pending.append((k, grpc._request(request)))
    if cached is None:
        cached = state_impl.CachedMapState(handler._max_cached_map_key_entries)
        handler._state_cache.put(cache_key, cached)
    for k, future in pending:
        response = future.get()
        if response.error:
            raise RuntimeError(response.error)
        data = coder_impl.create_InputStream(response.get.data)
        flag = data.read_byte()
        if flag == handler.EXIST_FLAG:
            cached.put(k, (True, internal._map_value_decoder(data)))
        elif flag == handler.IS_NONE_FLAG:
            cached.put(k, (True, None))
        elif flag == handler.NOT_EXIST_FLAG:
            cached.put(k, (False, None))
        else:
            raise RuntimeError(f"unknown map-state response flag {flag}")
    return len(missing)


def _cache_whole_map(handler: Any, internal: Any, cache_key: Any) -> Any:
    """Read a shard's whole MapState (one round trip per `python.map-state.iterate-response-batch-size` entries) into
    PyFlink's read cache, marked complete when it fits (`map_state_cache_size`): a key it does not hold, a user or
    item this shard has not seen, is then known absent without asking the JVM (PyFlink's own `get` answers so from a
    complete cache), where each new key cost a round trip. Writes keep the cache current (PyFlink's `extend` puts
    them in); an eviction marks it incomplete again and reads go back to the JVM. Returns the cache, or None when
    the map does not fit (it was still read to the end, which releases the JVM's iterator; once per shard and
    worker start, as the `get`s that follow create a cache for it)."""
    from pyflink.fn_execution import state_impl

    entries: dict[Any, Any] = {}
    fits = True
    it: Any = state_impl.IteratorToken.NOT_START
    while True:
        batch, it = handler._iterate_raw(internal._state_key, state_impl.IterateType.ITEMS, it,
                                         internal._map_key_decoder, internal._map_value_decoder)  # fmt: skip
        if fits:
            entries.update(batch)
            fits = len(entries) <= handler._max_cached_map_key_entries
            if not fits:
                entries.clear()
        if it == state_impl.IteratorToken.FINISHED:
            break
    if not fits:
        return None
    cached = state_impl.CachedMapState(handler._max_cached_map_key_entries)
    for k, v in entries.items():
        cached.put(k, (True, v))
    cached.set_all_data_cached()
    handler._state_cache.put(cache_key, cached)
    return cached


def _patch_commits() -> None:
    from apache_beam.runners.worker import bundle_processor
    from pyflink.fn_execution import state_impl

    cmsh = state_impl.CachingMapStateHandler

    # Same bodies as Beam's / PyFlink's commit, with the final wait through `_await`.
    def bag_commit(self: Any) -> None:
        to_await = None
        if self._cleared:
            to_await = self._state_handler.clear(self._state_key)
        if self._added_elements:
            to_await = self._state_handler.extend(self._state_key, self._value_coder.get_impl(),
                                                  self._added_elements)  # fmt: skip
        if to_await:
            _await(to_await)

    def map_commit(self: Any) -> None:
        to_await = None
        if self._cleared:
            to_await = self._map_state_handler.clear(self._state_key)
        if self._write_cache:
            items = []
            for map_key, (exists, value) in self._write_cache.items():
                if not exists:
                    items.append((cmsh.DELETE, map_key, None))
                elif value is None:
                    items.append((cmsh.SET_NONE, map_key, None))
                else:
                    items.append((cmsh.SET_VALUE, map_key, value))
            self._write_cache.clear()
            to_await = self._map_state_handler.extend(self._state_key, items, self._map_key_encoder,
                                                      self._map_value_encoder)  # fmt: skip
        if to_await:
            _await(to_await)
        self._write_cache.clear()
        self._cleared = False
        self._mod_count += 1

    backend_commit = state_impl.RemoteKeyedStateBackend.commit

    def commit_all(self: Any) -> None:
        with deferred_waits() as futures:
            backend_commit(self)
        for f in futures:
            f.get()  # raises what the JVM answered, as the unpatched commit would

    setattr(bundle_processor.SynchronousBagRuntimeState, "commit", bag_commit)  # noqa: B010 - typed as methods
    setattr(state_impl.InternalSynchronousMapRuntimeState, "commit", map_commit)  # noqa: B010
    setattr(state_impl.RemoteKeyedStateBackend, "commit", commit_all)  # noqa: B010


def _patch_sampler() -> None:
    from apache_beam.runners.worker import statesampler

    cls = statesampler.StateSampler
    original_stop = cls.stop

    def start(self: Any) -> None:
        self.tracked_thread = threading.current_thread()
        statesampler.set_current_tracker(self)
        self._no_thread = True
        self.started = True

    def stop(self: Any) -> None:
        if getattr(self, "_no_thread", False):
            statesampler.set_current_tracker(None)
            self.finished = True
        else:  # started before the patch: its thread must be joined
            original_stop(self)

    setattr(cls, "start", start)  # noqa: B010
    setattr(cls, "stop", stop)  # noqa: B010
