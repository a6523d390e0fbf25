"""The sentence encoder (our BERT + WordPiece over the pinned all-MiniLM-L6-v2 weights), its ONNX export, and the
content path's pieces: cold split, projection, causal cases, bootstrap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.content import (
    bootstrap,
    by_target_age,
    category_scores,
    cold_cases,
    cold_split,
    fit_projection,
    item_text,
)
from model_export.encoder_fetch import fetch, load_encoder_conf, verify
from model_export.text_encoder import OnnxTextEncoder, WordPiece, export_encoder, load_encoder


@dataclass
class E:
    """An event as the model code reads it."""

    user_id: str
    item_id: str
    event_type: str
    ts: int


@pytest.fixture(scope="module")
def encoder_dir() -> Path:
    conf = load_encoder_conf()
    return fetch(conf)  # a no-op when `make setup` has fetched it (the files are checked by sha256 either way)


def test_fetched_files_match_the_pins(encoder_dir: Path, tmp_path: Path) -> None:
    conf = load_encoder_conf()
    assert verify(conf, encoder_dir) == []
    copy = tmp_path / "enc"
    copy.mkdir()
    for name in conf.files:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((encoder_dir / name).read_bytes())
    (copy / "vocab.txt").write_text((encoder_dir / "vocab.txt").read_text().replace("[UNK]", "[UNK2]"))
    assert [b.split(":")[0] for b in verify(conf, copy)] == ["vocab.txt"]


def test_wordpiece_basic_and_subwords(tmp_path: Path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "toy", "story", "(", ")", "1995", "un", "##aff", "##able", "cafe",
             "!", "中", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = WordPiece(tmp_path / "vocab.txt", lower_case=True, max_tokens=8)
    assert tok.words("Toy Story (1995) Café!中x") == ["toy", "story", "(", "1995", ")", "cafe", "!", "中", "x"]
    ids = {w: i for i, w in enumerate(vocab)}
    assert tok.pieces("unaffable") == [ids["un"], ids["##aff"], ids["##able"]]
    assert tok.pieces("xyz") == [ids["[UNK]"]]
    enc = tok.encode("toy story toy story toy story toy story")
    assert len(enc) == 8 and enc[0] == ids["[CLS]"] and enc[-1] == ids["[SEP]"]
    b, m = tok.batch(["toy", "toy story ."])
    assert b.shape == m.shape == (2, 5) and m.sum(1).tolist() == [3, 5] and b[0, 3:].tolist() == [0, 0]


def test_encoder_reproduces_the_published_similarities(encoder_dir: Path) -> None:
    # sentence-transformers' README quick-start for all-MiniLM-L6-v2 prints these similarities (4 decimals)
    model, tok = load_encoder(encoder_dir)
    assert (model.spec.layers, model.spec.hidden, model.spec.pooling, model.spec.normalize) == (6, 384, "mean", True)
    ids, mask = tok.batch(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    with torch.no_grad():
        e = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    sim = e @ e.T
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert sim[0, 1] == pytest.approx(0.6660, abs=6e-4)
    assert sim[0, 2] == pytest.approx(0.1046, abs=6e-4)
    assert sim[1, 2] == pytest.approx(0.1411, abs=6e-4)


def test_onnx_export_matches_torch_and_int8_stays_close(encoder_dir: Path, tmp_path: Path) -> None:
    model, tok = load_encoder(encoder_dir)
    paths = export_encoder(model, tok, tmp_path)
    texts = ["Toy Story (1995). Animation, Children's, Comedy", "Heat (1995). Action, Crime, Thriller",
             "a", "Schindler's List (1993). Drama, War. A long description " * 5]
    ids, mask = tok.batch(texts)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    fp32 = OnnxTextEncoder(paths["fp32"], tok).embed(texts, batch=3)  # batches of unequal padding
    assert np.abs(fp32 - ref).max() < 1e-4
    int8 = OnnxTextEncoder(paths["int8"], tok).embed(texts)
    assert (int8 * ref).sum(1).min() > 0.98  # cosine per text (unit vectors); per-tensor scales gave 0.93


def test_cold_split_withholds_the_newest_items() -> None:
    events = [E("u", f"i{k}", "view", 1000 * k) for k in range(10)] + [E("v", "i0", "view", 99_999)]
    split = cold_split(events, 0.2)
    assert split.cold == {"i8", "i9"}
    assert all(e.item_id not in split.cold for e in split.warm_events(events))
    with pytest.raises(ValueError):
        cold_split(events, 1.0)


def test_cold_cases_are_causal() -> None:
    events = [E("a", "w1", "view", 1), E("a", "c1", "view", 2), E("b", "c1", "view", 3), E("b", "w1", "view", 4),
              E("b", "c2", "view", 5), E("a", "c1", "click", 6), E("a", "c2", "view", 7)]
    cats = {"w1": ("x",), "c1": ("x",), "c2": ("y",)}
    cases, pop, skipped = cold_cases(events, frozenset({"c1", "c2"}), cats, 1e12, 50)
    # b's c1 comes before any warm history of b; a's second c1 is not a first interaction
    assert [(c.user, c.target) for c in cases] == [("a", "c1"), ("b", "c2"), ("a", "c2")]
    assert skipped == 1
    assert pop.tolist() == [[0, 0], [2, 0], [3, 1]]  # interactions with c1, c2 by anyone before each case
    assert cases[2].seen == {"w1", "c1"} and [h[0] for h in cases[2].history] == ["w1"]
    s = category_scores(cases, ["c1", "c2"], cats)
    assert s[0, 0] > s[0, 1] == 0.0  # a likes x (w1)


def test_cases_split_by_the_targets_interactions_before_them() -> None:
    prior = np.array([0, 0, 1, 4, 5, 19, 20, 300])
    ranks = {"content": np.array([0, 2, 30, 30, 30, 30, 30, 30]), "popularity": np.array([40, 40, 0, 0, 0, 0, 1, 0]),
             "content+popularity": np.array([1, 40, 0, 0, 0, 0, 0, 0])}
    out = by_target_age(ranks, prior, 10)
    assert {a: r["cases"] for a, r in out.items()} == {"0": 2, "1-4": 2, "5-19": 2, "20+": 2}
    first = out["0"]  # the items' first interactions: only their text is known
    assert first["content"]["hr@10"] == 1.0 and first["popularity"]["hr@10"] == 0.0
    assert first["content"]["ndcg@10"] == pytest.approx((1.0 + 1.0 / np.log2(4.0)) / 2)
    assert first["content - popularity"]["ndcg@10_diff"] == pytest.approx(first["content"]["ndcg@10"])
    assert out["20+"]["popularity"]["ndcg@10"] == pytest.approx((1.0 / np.log2(3.0) + 1.0) / 2)
    assert out["20+"]["content - popularity"]["ndcg@10_diff"] < 0


def test_projection_recovers_a_linear_map() -> None:
    rng = np.random.default_rng(0)
    content = rng.normal(size=(400, 32))
    w = rng.normal(size=(32, 9))
    target = content @ w + 0.01 * rng.normal(size=(400, 9))
    proj = fit_projection(content, target[:, :8], target[:, 8])
    emb, bias = proj.apply(content[:5])
    assert proj.heldout_cosine > 0.99
    assert np.allclose(emb, target[:5, :8], atol=0.1) and np.allclose(bias, target[:5, 8], atol=0.1)


def test_bootstrap_interval_brackets_the_mean() -> None:
    ranks = np.array([0, 3, 20, 1, 50, 9, 10, 2] * 20)
    r = bootstrap(ranks, 10)
    assert r["hr@10"] == pytest.approx(5 / 8)
    lo, hi = r["hr@10_ci95"]
    assert lo < r["hr@10"] < hi and hi - lo < 0.2
    assert item_text("Heat (1995)", ("Action", "Crime"), None) == "Heat (1995). Action, Crime"


def test_the_job_refuses_an_encoder_its_model_was_not_fitted_with(tmp_path: Path) -> None:
    """`content_encoder` (jobs/recommend.py) runs before the job is submitted: no encoder, or the model's content part
    fitted with other weights, stops the job with a message; embed_items off needs no encoder at all."""
    import dataclasses
    import json

    from jobs.config import load_job_conf
    from jobs.recommend import ContentError, content_encoder
    from model_export.encoder_fetch import fetch, load_encoder_conf

    fetch(load_encoder_conf())
    model = tmp_path / "model"
    model.mkdir()
    job = load_job_conf()
    job = dataclasses.replace(job, model_dir=str(model))
    (model / "config.json").write_text(json.dumps({"content": {"encoder_weights_sha256": "f" * 64}}))
    with pytest.raises(ContentError, match="fitted with encoder weights ffffffffffff"):
        content_encoder(job)
    pinned = load_encoder_conf().files["model.safetensors"]
    (model / "config.json").write_text(json.dumps({"content": {"encoder_weights_sha256": pinned}}))
    got = content_encoder(job)
    assert got is not None and got[3] == pinned
    (model / "config.json").write_text(json.dumps({}))  # a model without a content part: only if asked for
    assert content_encoder(job) is None
    always = dataclasses.replace(job, content=dataclasses.replace(job.content, embed_items="true"))
    assert content_encoder(always) is not None
    with pytest.raises(ContentError, match="auto, true or false"):
        content_encoder(dataclasses.replace(job, content=dataclasses.replace(job.content, embed_items="maybe")))
    elsewhere = dataclasses.replace(always.content, encoder_dir=str(tmp_path / "none"))
    missing = dataclasses.replace(always, content=elsewhere)
    with pytest.raises(ContentError, match="no encoder in"):
        content_encoder(missing)
    off = dataclasses.replace(missing, content=dataclasses.replace(missing.content, embed_items="false"))
    assert content_encoder(off) is None
