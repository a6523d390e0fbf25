"""Content candidates in the user operator (issue 15): items the model never saw, known by their text through the
artefact's content part, join the model's candidates at the slot SASRec alone gives them; lists mark each item's
source; consumed and unavailable content items never appear."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from operators.schema import ItemMeta
from tests.tiny_model import TINY_MODEL_YAML
from tests.unit.operators.conftest import T0, conf_with, ev

MIN = 60_000


@pytest.fixture(scope="module")
def cold_model(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_export.encoder_fetch import fetch, load_encoder_conf
    from streamrec.cli import main

    fetch(load_encoder_conf())
    d = tmp_path_factory.mktemp("cold-model")
    (d / "tiny.yaml").write_text(TINY_MODEL_YAML)
    rc = main(["train", "--data", str(sim_dir), "--out", str(d / "m"), "--conf", str(d / "tiny.yaml"),
               "--cold-items", "0.2", "--no-progress"])  # fmt: skip
    assert rc == 0
    return d / "m"


@pytest.fixture(scope="module")
def make_cold_op(cold_model: Path, pseud: Any) -> Callable[..., Any]:
    from model_export.artifact import load_artifact
    from operators.scorer import Scorer
    from operators.user import UserOperator

    art = load_artifact(cold_model)
    scorer = Scorer(art, threads=1)

    def make(**sections: dict[str, Any]) -> UserOperator:
        return UserOperator(art, conf_with(**sections), pseud, scorer)

    return make


def _history(op: Any, n: int = 6) -> list[Any]:
    return [ev(i, op.item_ids[int(j)], T0 + i * 2 * MIN, "purchase") for i, j in enumerate(op.art.popular[:n])]


def _last_list(op: Any, events: list[Any]) -> dict[str, Any]:
    state = None
    rec: dict[str, Any] = {}
    for e in events:
        r = op.step(state, e)
        state = r.state
        rec = r.recommendations[-1] if r.recommendations else rec
    return rec


def test_withheld_items_are_content_candidates(make_cold_op: Callable[..., Any]) -> None:
    import json

    op = make_cold_op()
    meta = json.loads((op.art.path / "content.json").read_text())
    # every catalogue item with text the model never saw: the withheld ones, and those nobody interacted with
    assert set(op.content_ids) == set(meta["items"]) - set(op.art.vocab.item_ids)
    assert set(meta["cold"]) <= set(op.content_ids)
    assert len(op.content_ids) > 0 and op.unit_emb.shape[0] == op.n_items + len(op.content_ids)
    assert make_cold_op(recs={"content_candidates": 0}).content_ids == []


def test_a_content_item_takes_its_sasrec_slot_and_is_marked(make_cold_op: Callable[..., Any]) -> None:
    base = _last_list(plain := make_cold_op(recs={"mmr_lambda": 1.0, "content_candidates": 0}), _history(plain))
    assert base["source"] == "model" and len(base["sources"]) == len(base["items"]) and "content" not in base["sources"]
    op = make_cold_op(recs={"mmr_lambda": 1.0, "content_candidates": 1})
    # make one content item the best by far for everyone: it must lead the list, marked `content`
    star = op.content_ids[0]
    op.content_bias = op.content_bias.copy()
    op.content_bias[0] = 1e6
    rec = _last_list(op, _history(op))
    assert rec["items"][0] == star and rec["sources"][0] == "content"
    assert set(rec["sources"][1:]) <= {"model", "cf", "popular"} and star not in rec["items"][1:]
    assert rec["items"][1:] == [i for i in base["items"] if i != star][: len(rec["items"]) - 1]

    # consumed: after the user interacted with it, it is never recommended again
    consumed = _last_list(op, [*_history(op), ev(99, star, T0 + 60 * MIN, "view")])
    assert star not in consumed["items"]
    # unavailable (an `items` record): gone from every list; available again: back
    op.apply_item(ItemMeta(star, "t", (), None, available=False))
    assert star not in _last_list(op, _history(op))["items"]
    op.apply_item(ItemMeta(star, "t", (), None, available=True))
    assert _last_list(op, _history(op))["items"][0] == star


def test_a_content_item_below_every_model_candidate_is_left_out(make_cold_op: Callable[..., Any]) -> None:
    op = make_cold_op(recs={"mmr_lambda": 1.0})
    op.content_bias = np.full_like(op.content_bias, -1e6)
    rec = _last_list(op, _history(op))
    assert "content" not in rec["sources"] and not set(rec["items"]) & set(op.content_ids)


def test_a_reserved_slot_gives_the_best_qualifying_content_item_a_place(make_cold_op: Callable[..., Any]) -> None:
    free = make_cold_op(recs={"content_slots": 0})
    held = make_cold_op(recs={"content_slots": 1})
    # lower every content item's bias until, on their SASRec slot alone, none makes this user's list any more
    bias = free.content_bias.copy()
    for drop in (0.5 * 2**i for i in range(12)):
        free.content_bias = held.content_bias = bias - drop
        a = _last_list(free, _history(free))
        if "content" not in a["sources"]:
            break
    assert "content" not in a["sources"]
    b = _last_list(held, _history(held))
    # reserved: exactly one, in the last place; the rest of the list as before
    assert b["sources"].count("content") == 1 and b["sources"][-1] == "content"
    assert b["items"][:-1] == a["items"][:-1] and b["items"][-1] in held.content_ids


def _stream_embedding(op: Any, item_id: str, like: str, encoder: str | None = None) -> Any:
    """An `ItemEmbedding` for `item_id` with the text embedding of the artefact's content item `like`."""
    from operators.embed import ItemEmbedding

    part = op.content_part
    vec = part.embeddings[part.item_ids.index(like)]
    return ItemEmbedding(item_id, vec.astype(np.float32), encoder or part.encoder["weights_sha256"], "d")


def test_an_item_embedded_in_the_stream_becomes_a_content_candidate(make_cold_op: Callable[..., Any]) -> None:
    op = make_cold_op(recs={"mmr_lambda": 1.0})
    like = op.content_ids[0]
    n_before, rows_before = len(op.content_ids), op.unit_emb.shape[0]
    assert op.apply_embedding(_stream_embedding(op, "stream-new-1", like))
    k = op.content_ids.index("stream-new-1")
    assert len(op.content_ids) == n_before + 1 and op.unit_emb.shape[0] == rows_before + 1
    # the same projection as the artefact's own content item with that text
    np.testing.assert_allclose(op.content_vec[k], op.content_vec[0], rtol=1e-5, atol=1e-6)
    op.content_bias = op.content_bias.copy()
    op.content_bias[k] = 1e6
    rec = _last_list(op, _history(op))
    assert rec["items"][0] == "stream-new-1" and rec["sources"][0] == "content"
    # a hot-swapped model takes it over (re-projected by its own content part)
    new = make_cold_op(recs={"mmr_lambda": 1.0})
    new.adopt_catalog(op)
    assert "stream-new-1" in new.content_ids and "stream-new-1" in new.embeddings
    # unavailable before its embedding arrived: a candidate never recommended
    op2 = make_cold_op()
    op2.apply_item(ItemMeta("stream-new-2", "t", (), None, available=False))
    assert op2.apply_embedding(_stream_embedding(op2, "stream-new-2", like))
    assert op2.content_banned[op2.content_ids.index("stream-new-2")]


def test_stream_embeddings_the_model_cannot_use_are_kept_but_not_candidates(make_cold_op: Callable[..., Any]) -> None:
    op = make_cold_op()
    like = op.content_ids[0]
    n = len(op.content_ids)
    assert not op.apply_embedding(_stream_embedding(op, "x-other-encoder", like, encoder="f" * 64))
    assert not op.apply_embedding(_stream_embedding(op, op.item_ids[0], like))  # in the model's vocabulary
    assert len(op.content_ids) == n and {"x-other-encoder", op.item_ids[0]} <= set(op.embeddings)
    plain = make_cold_op(recs={"content_candidates": 0})  # no content path in use
    assert not plain.apply_embedding(_stream_embedding(op, "stream-new-3", like)) and plain.content_ids == []


def test_a_cf_only_stream_item_does_not_change_the_content_candidates(make_cold_op: Callable[..., Any]) -> None:
    """Its row (bias -inf) is left out of the rows content scoring reads; the embedded ones are all still there."""
    from operators.cf import CfUpdate
    from operators.state import item_hash

    op = make_cold_op(recs={"mmr_lambda": 1.0})
    rows = op._content_live()[0].tolist()
    assert rows == [r for r in range(len(op.content_ids)) if np.isfinite(op.content_bias[r])] and rows
    before = _last_list(op, _history(op))
    op.apply_cf(CfUpdate("cf-only-1", ((item_hash(op.item_ids[0]), 1.0),), T0))
    assert op.content_ids[-1] == "cf-only-1" and op._content_live()[0].tolist() == rows
    after = _last_list(op, _history(op))
    assert [i for i, s in zip(after["items"], after["sources"], strict=True) if s == "content"] == \
        [i for i, s in zip(before["items"], before["sources"], strict=True) if s == "content"]


def test_new_items_grow_the_arrays_in_place_of_copies_and_what_a_list_holds_stays(
        make_cold_op: Callable[..., Any]) -> None:  # fmt: skip
    """New items (stream embeddings, CF-only items) grow the item arrays by `_appended` (a buffer with room to spare,
    not a copy of every row per item): arrays taken before (what a list being built holds) keep their rows; the
    current ones start with them; the content rows a list scores (`_content_live`, updated for the added rows
    alone) are what a full recompute gives; a replaced embedding copies; a shorter, earlier array that grows gets
    a buffer of its own instead of writing into the current one's row."""
    from operators.cf import CfUpdate
    from operators.recs import normalise_rows
    from operators.state import item_hash
    from operators.user import _appended

    op = make_cold_op()
    likes = list(op.content_ids)
    names = ("unit_emb", "content_vec", "content_bias", "content_banned")
    held = [getattr(op, a) for a in names]
    kept = [a.copy() for a in held]
    buffers = set()
    new = 40
    for k in range(new):
        if k % 2:
            op.apply_cf(CfUpdate(f"cf-only-{k}", ((item_hash(op.item_ids[k]), 1.0),), T0))
        else:
            assert op.apply_embedding(_stream_embedding(op, f"stream-{k}", likes[k % len(likes)]))
        assert op.unit_emb.base is not None and op.content_vec.base is not None
        buffers.add(id(op.unit_emb.base))
        rows, vec, bias = op._content_live()
        full = np.flatnonzero(np.isfinite(op.content_bias))
        assert rows.tolist() == full.tolist()
        np.testing.assert_array_equal(vec, op.content_vec[full])
        np.testing.assert_array_equal(bias, op.content_bias[full])
    for h, k, a in zip(held, kept, names, strict=True):
        np.testing.assert_array_equal(h, k, err_msg=a)  # untouched
        now = getattr(op, a)
        assert now.shape[0] == k.shape[0] + new and now.dtype == k.dtype, a
        np.testing.assert_array_equal(now[: k.shape[0]], k, err_msg=a)
    assert len(buffers) <= 3  # amortised: a buffer per growth by an eighth, not an array per item
    m = len(likes)
    for k in range(new):
        row = m + k
        if k % 2:
            assert op.content_bias[row] == -np.inf and not op.content_vec[row].any()
        else:
            np.testing.assert_allclose(op.unit_emb[op.n_items + row], normalise_rows(op.content_vec[row][None])[0])
    assert op.item_ids[op.n_items + m :] == op.content_ids[m:] and len(op.index_hash) == len(op.item_ids)
    # a replaced embedding: new arrays, the ones before it untouched
    before = op.content_vec
    snapshot = before.copy()
    assert op.apply_embedding(_stream_embedding(op, "stream-0", likes[1]))
    assert op.content_vec is not before and np.array_equal(before, snapshot)
    rows, vec, _ = op._content_live()
    np.testing.assert_array_equal(vec, op.content_vec[np.flatnonzero(np.isfinite(op.content_bias))])
    # an earlier, shorter array grown: its own buffer, the current array's rows unchanged
    cur = op.unit_emb
    cur_rows = cur.copy()
    grown = _appended(cur[:-1], np.full(cur.shape[1], 7.0))
    assert grown.base is not cur.base and np.array_equal(cur, cur_rows) and (grown[-1] == 7.0).all()



def _lowest_bias_content_item(op: Any) -> str:
    rows, _, bias = op._content_live()
    return str(op.content_ids[int(rows[int(np.argmin(bias))])])


def _content_items(rec: dict[str, Any]) -> list[str]:
    return [i for i, s in zip(rec["items"], rec["sources"], strict=True) if s == "content"]


def test_the_streams_evidence_lifts_a_content_item(make_cold_op: Callable[..., Any]) -> None:
    """A content item the stream has seen consumed (its CF publication's summed weights) gains
    `recs.content_evidence` × log(1 + mass) on its text score: the one the text ranks lowest reaches the list,
    marked content; without the weight, or with its publication many half-lives before the list, it does not. Its
    predecessor is an item the user never consumed, so it is no CF candidate of the user's."""
    from operators.cf import CfUpdate
    from operators.state import item_hash

    hist = _history(op0 := make_cold_op(recs={"mmr_lambda": 1.0}))
    weak = _lowest_bias_content_item(op0)
    assert weak not in _last_list(op0, hist)["items"]  # the text alone does not bring it
    now = hist[-1].ts
    hl = op0.conf.cf.half_life_ms
    for evidence, ts, shown in ((1.0, now, True), (0.0, now, False), (1.0, now - 40 * hl, False)):
        op = make_cold_op(recs={"mmr_lambda": 1.0, "content_evidence": evidence})
        op.apply_cf(CfUpdate(weak, ((item_hash("nobody-consumed-this"), 1e6),), ts))
        rec = _last_list(op, hist)
        assert (weak in _content_items(rec)) is shown, (evidence, ts, rec["items"], rec["sources"])


def test_evidence_is_the_decayed_mass_of_the_last_publication(make_cold_op: Callable[..., Any]) -> None:
    """`_evidence`: log(1 + mass × 2^(-age / half-life)) at the item's content row, the last publication replacing
    the one before; 0 for rows without one; a publication after the list's time counts undecayed; an item of the
    model's vocabulary has no mass (the model scores it)."""
    from operators.cf import CfUpdate

    op = make_cold_op()
    rows = op._content_live()[0]
    a, b = op.content_ids[int(rows[0])], op.content_ids[int(rows[-1])]
    hl = op.conf.cf.half_life_ms
    op.apply_cf(CfUpdate(a, ((1, 5.0), (2, 3.0)), T0))
    op.apply_cf(CfUpdate(a, ((1, 2.0), (2, 1.0)), T0 + hl))  # replaces: mass 3 at T0 + hl
    op.apply_cf(CfUpdate(b, ((3, 7.0),), T0 + 3 * hl))
    op.apply_cf(CfUpdate(op.item_ids[0], ((4, 9.0),), T0))  # in the vocabulary
    got = op._evidence(rows, T0 + 2 * hl)
    want = np.zeros(len(rows), dtype=np.float32)
    want[0], want[-1] = np.log1p(3.0 * 0.5), np.log1p(7.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert len(op.cf_mass) == 2
