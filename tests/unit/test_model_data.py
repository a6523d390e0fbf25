"""Split, vocabulary, windows, metrics (ties!) and item-KNN of model_export, on hand-made events."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_export.baselines import item_neighbours, knn_scores
from model_export.dataset import (
    DataError,
    build_vocab,
    exclusion_mask,
    fingerprint,
    left_pad,
    make_split,
    training_windows,
    user_sequences,
)
from model_export.metrics import ranks_full, ranks_sampled, sample_negatives, summarise
from model_export.sasrec import KNNScorer
from tests.unit.model_fixtures import Ev, synthetic_events


def _ev(u: str, i: str, ts: int, et: str = "rating") -> Ev:
    return Ev(f"{u}{i}{ts}", u, i, et, ts)


def test_split_keeps_input_order_on_equal_timestamps() -> None:
    evs = [_ev("a", "x", 5), _ev("a", "y", 5), _ev("a", "z", 5), _ev("a", "w", 1), _ev("b", "x", 2)]
    vocab = build_vocab(evs)
    split = make_split(user_sequences(evs, vocab))
    ids = vocab.item_ids
    a = next(i for i, s in enumerate(split.users) if s.user_id == "a")
    assert [ids[i] for i in split.users[a].items] == ["w", "x", "y", "z"]
    (vh,), vt = split.inputs("valid")[0][:1], split.inputs("valid")[1]
    assert [ids[i] for i in vh.items] == ["w", "x"] and ids[vt[0]] == "y"
    th, tt = split.inputs("test")
    assert [ids[i] for i in th[0].items] == ["w", "x", "y"] and ids[tt[0]] == "z"
    assert split.eval_users == [a]  # b has one interaction: training only


def test_unknown_event_type_is_a_clear_error() -> None:
    evs = [_ev("a", "x", 1, "like")]
    with pytest.raises(DataError, match="unknown event_type 'like'"):
        user_sequences(evs, build_vocab(evs))


def test_fingerprint_changes_with_the_stream() -> None:
    evs = synthetic_events(users=3, items=5, length=4)
    assert fingerprint(evs) != fingerprint(evs[:-1])
    assert fingerprint(evs) == fingerprint(list(evs))


def test_training_windows_cover_every_next_item_once() -> None:
    evs = synthetic_events(users=4, items=30, length=23)
    vocab = build_vocab(evs)
    seqs = user_sequences(evs, vocab)
    w = training_windows(seqs, max_len=5, pad=vocab.pad, unk=vocab.unk)
    assert (w.targets != -100).sum() == sum(len(s.items) - 1 for s in seqs)
    # the target of each position is the next input where both are inside one window
    inside = (w.targets[:, :-1] != -100) & (w.items[:, 1:] != vocab.pad)
    assert np.array_equal(w.targets[:, :-1][inside], w.items[:, 1:][inside])


def test_ties_count_against_the_target() -> None:
    scores = np.array([[1.0, 1.0, 1.0, 0.0], [3.0, 1.0, 2.0, 5.0]], dtype=np.float32)
    exclude = np.array([[False, False, False, False], [False, False, False, True]])
    r = ranks_full(scores, np.array([0, 2]), exclude)
    assert r.tolist() == [2, 1]  # two equal scores ahead; excluded 5.0 does not count
    assert summarise(np.array([0, 1, 20]), 10).hr == pytest.approx(2 / 3)
    assert ranks_sampled(scores, np.array([0]), np.array([[1, 3]]))[0] == 1


def test_constant_scores_rank_last() -> None:
    scores = np.zeros((3, 50), dtype=np.float32)
    r = ranks_full(scores, np.array([0, 10, 49]), np.zeros((3, 50), dtype=bool))
    assert summarise(r, 10).hr == 0.0


def test_negatives_avoid_history_and_target() -> None:
    evs = synthetic_events(users=10, items=200, length=30)
    vocab = build_vocab(evs)
    split = make_split(user_sequences(evs, vocab))
    hist, tgt = split.inputs("test")
    negs = sample_negatives(hist, tgt, vocab.n_items, 100, seed=1)
    for h, t, ng in zip(hist, tgt, negs, strict=True):
        assert len(set(ng.tolist())) == 100
        assert not set(ng.tolist()) & (set(h.items.tolist()) | {int(t)})


def test_knn_neighbours_are_cosine_and_graph_scorer_matches_numpy() -> None:
    evs = synthetic_events(users=30, items=25, length=12)
    vocab = build_vocab(evs)
    seqs = user_sequences(evs, vocab)
    n = vocab.n_items
    idx, sim = item_neighbours(seqs, n, top_m=6)
    x = np.zeros((len(seqs), n))
    for r, s in enumerate(seqs):
        x[r, s.items] = 1
    cos = (x.T @ x) / np.sqrt(np.outer(x.sum(0), x.sum(0)))
    np.fill_diagonal(cos, 0)
    assert np.allclose(sim[:, 0], cos.max(1), atol=1e-6)
    assert np.allclose(np.take_along_axis(cos, idx, 1), sim, atol=1e-6)
    items, _, _ = left_pad(seqs, 9, vocab.pad)
    items[0, :4] = vocab.pad
    items[1, 5] = vocab.unk
    ref = knn_scores(items, idx, sim, n, window=5, decay=0.7)
    got = KNNScorer(idx, sim, n, window=5, decay=0.7)(torch.from_numpy(items), torch.zeros(len(items), n))
    assert np.allclose(got.numpy(), ref, atol=1e-5)
    # window 1: only the newest item's neighbours score
    one = knn_scores(items[:1], idx, sim, n, window=1, decay=0.5)
    assert set(np.flatnonzero(one[0])) <= set(idx[items[0, -1]].tolist())


def test_exclusion_mask_never_hides_the_target() -> None:
    evs = [_ev("a", "x", 1), _ev("a", "y", 2), _ev("a", "x", 3)]
    vocab = build_vocab(evs)
    split = make_split(user_sequences(evs, vocab))
    hist, tgt = split.inputs("test")
    m = exclusion_mask(hist, vocab.n_items, tgt)
    assert m[0].tolist() == [False, True]
