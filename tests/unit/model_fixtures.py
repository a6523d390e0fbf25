"""Synthetic event streams for the model tests (shaped like `streamrec.data.Event`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ev:
    event_id: str
    user_id: str
    item_id: str
    event_type: str
    ts: int
    rating: float | None = None
    session_id: str | None = None


def synthetic_events(users: int = 60, items: int = 40, length: int = 25, seed: int = 0) -> list[Ev]:
    """Each user walks a ring of items (mostly +1 steps), so the next item follows from the last."""
    rng = np.random.default_rng(seed)
    types = ("view", "click", "cart", "purchase", "rating")
    out: list[Ev] = []
    for u in range(users):
        cur = int(rng.integers(items))
        t = 1_600_000_000_000 + int(rng.integers(10**6))
        for k in range(length):
            out.append(Ev(f"{u}-{k}", f"u{u}", f"i{cur}", types[int(rng.integers(5))], t))
            cur = (cur + (1 if rng.random() < 0.9 else int(rng.integers(items)))) % items
            t += int(rng.choice([0, 1000, 60_000, 3_600_000]))
    out.sort(key=lambda e: e.ts)
    return out
