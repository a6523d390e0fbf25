"""jobs/heap.py: what the Python workers' collector sees once an operator has opened, and after a model swap."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from jobs import heap


class _Operator:
    """Stands for an operator whose objects refer to each other (a cycle: only the collector frees it)."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_freeze_hides_the_heap_at_open_from_the_collector() -> None:
    op = _Operator()
    heap.freeze(True)
    assert gc.get_freeze_count() > 0
    assert not any(o is op for o in gc.get_objects())  # no collection walks it any more
    after = _Operator()  # what the operator creates later stays in the collector's sight
    assert any(o is after for o in gc.get_objects())


def test_refreeze_collects_the_swapped_out_operator_once() -> None:
    old = _Operator()
    gone = weakref.ref(old)
    heap.freeze(True)
    del old  # the swap drops the old operator: a frozen cycle
    gc.collect()
    assert gone() is not None  # frozen garbage is never collected ...
    new = _Operator()
    heap.refreeze(True)
    assert gone() is None  # ... until the swap's refreeze
    assert not any(o is new for o in gc.get_objects())  # and the new heap is frozen again


def test_disabled_leaves_the_collector_as_cpython_has_it() -> None:
    heap.freeze(False)
    heap.refreeze(False)
    assert gc.get_freeze_count() == 0


def test_young_threshold_sets_only_the_youngest_generation() -> None:
    before = gc.get_threshold()
    try:
        heap.freeze(False, 100_000)
        assert gc.get_threshold() == (100_000, *before[1:])
        gc.set_threshold(*before)
        heap.freeze(True, 0)  # 0: CPython's own
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)

