"""The item-embedding operator (issue 15): item records pass at once; changed texts are queued (latest wins) and
embedded in batched encoder calls; an unchanged text is never embedded twice; embeddings survive a round trip
through the broadcast state's JSON."""

from __future__ import annotations

import numpy as np
import pytest

from operators.embed import EmbedState, ItemEmbedder, ItemEmbedding, item_text_of, text_digest
from operators.schema import ItemMeta


class FakeEncoder:
    """Texts → deterministic vectors; records each call's texts."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=np.float32)


def test_records_pass_at_once_and_changed_texts_are_queued() -> None:
    enc = FakeEncoder()
    op = ItemEmbedder(enc, "enc-sha", max_batch=2)
    st = EmbedState()
    a = ItemMeta("a", "Red Fox", ("Drama",), "A drama title.")
    st, out = op.step(st, a)
    assert out == [a] and st.pending == {"a": item_text_of(a)} and enc.calls == []
    b1, b2 = ItemMeta("b", "Blue Sky", ("Comedy",)), ItemMeta("b", "Blue Sky II", ("Comedy",))
    st, _ = op.step(st, b1)
    st, _ = op.step(st, b2)  # latest text wins
    st, _ = op.step(st, ItemMeta("c", "Green Tea", ("Documentary",)))
    assert st.pending["b"] == item_text_of(b2) and len(st.pending) == 3
    st, embs = op.flush(st)
    assert [e.item_id for e in embs] == ["a", "b", "c"] and st.pending == {}
    assert [len(c) for c in enc.calls] == [2, 1]  # batches of at most max_batch texts
    assert all(e.encoder == "enc-sha" and e.vector.shape == (3,) for e in embs)
    assert st.digests.get("b") == text_digest(item_text_of(b2) or "")


def test_an_unchanged_text_is_not_embedded_again() -> None:
    enc = FakeEncoder()
    op = ItemEmbedder(enc, "enc-sha")
    st = EmbedState()
    a = ItemMeta("a", "Red Fox", ("Drama",))
    st, _ = op.step(st, a)
    st, _ = op.step(st, a)
    st, embs = op.flush(st)
    assert len(embs) == 1 and enc.calls == [[item_text_of(a)]]
    st, out = op.step(st, ItemMeta("a", "Red Fox", ("Drama",), available=False))  # availability only: same text
    assert out[0].available is False and st.pending == {}
    st, _ = op.step(st, ItemMeta("a", "Red Fox", ("Drama", "Crime")))  # categories are part of the text
    assert "a" in st.pending
    # queued, then set back to the embedded text before the flush: nothing to embed
    st, _ = op.step(st, a)
    assert st.pending == {}


def test_embedding_round_trip_and_bad_vectors() -> None:
    e = ItemEmbedding("i1", np.array([0.25, -1.5, 3.0], np.float32), "sha", "dig")
    back = ItemEmbedding.from_dict(e.to_dict())
    assert back.item_id == "i1" and back.encoder == "sha" and back.digest == "dig"
    np.testing.assert_array_equal(back.vector, e.vector)
    bad = e.to_dict() | {"vector": ItemEmbedding("i1", np.array([np.nan], np.float32), "s", "d").to_dict()["vector"]}
    with pytest.raises(ValueError, match="finite"):
        ItemEmbedding.from_dict(bad)


def test_an_encoder_returning_the_wrong_count_fails_loudly() -> None:
    op = ItemEmbedder(lambda texts: np.zeros((len(texts) + 1, 3), np.float32), "sha")
    st, _ = op.step(EmbedState(), ItemMeta("a", "Red Fox"))
    with pytest.raises(ValueError, match="vectors for 1 texts"):
        op.flush(st)
