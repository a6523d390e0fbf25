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
