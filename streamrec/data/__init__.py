"""Data tools: the offline loaders other components code against, the simulator and MovieLens readers.

Stable API (the trainer depends on it):

- `load_events(path) -> list[Event]`: a MovieLens directory/file (ml-100k, ml-1m, ml-latest) or an event JSONL
  file (or a directory with `events.jsonl`), stably sorted by `ts`, ties in input order. Invalid lines raise
  ValueError naming line and reason.
- `load_items(path) -> list[ItemMeta]`: MovieLens item files or `items.jsonl`; [] if there are none.
- `Event`, `ItemMeta`: re-exported from `operators.schema`.
"""

from operators.schema import Event, ItemMeta
from streamrec.data.loaders import load_events, load_items

__all__ = ["Event", "ItemMeta", "load_events", "load_items"]
