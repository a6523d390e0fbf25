"""The Python workers' cyclic garbage collector (`gc_freeze`, `gc_young_threshold` in conf/local.yaml).

A worker holds a large heap that lives as long as it does: the imported modules, the model artefact, the operators.
CPython's oldest-generation collection walks every tracked object, so with that heap in it each one took ~80 ms in
a process-mode worker at the bench's backlog (17-18 of them per worker in a quick bench phase: ~1.4 s of ~25 s).
`gc.freeze()` once an operator has opened moves what exists then out of the collector's sight; what the operators
create afterwards is collected as before (reference counting frees nearly all of it; the collector still finds the
cycles). A model swap drops the old operator: `refreeze` lets the collector see (and free) the old one's cycles once,
then freezes the new heap.
"""

from __future__ import annotations

import gc


def freeze(enabled: bool, young_threshold: int = 0) -> None:
    """After an operator's open(): the heap so far is permanent (in thread mode the interpreter is the JVM's, shared
    by every Python operator in it: each freezes what exists when it opens); with `young_threshold` > 0, the
    collector's youngest generation is collected after that many new container objects instead of CPython's 700
    (`gc_young_threshold` in conf/local.yaml: the young collections had taken ~7 % of a worker's CPU)."""
    if enabled:
        gc.freeze()
    if young_threshold > 0:
        gc.set_threshold(young_threshold, *gc.get_threshold()[1:])


def refreeze(enabled: bool) -> None:
    """After a model swap: the frozen heap back in the collector's sight, one full collection (the replaced
    operator's cycles), the heap frozen again."""
    if enabled:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
