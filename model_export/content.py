"""The content path for items the recommender never saw: item text → pretrained sentence embedding
(model_export/text_encoder.py) → a linear projection into the recommender's item space, learned on the warm items.

A cold item j gets an item vector ê_j = [c_j, 1] W_e and an output bias b̂_j = [c_j, 1] w_b, with c_j its text
embedding; the user's SASRec vector h_u (the serving graph's `user_vector`) then scores it as h_u · ê_j + b̂_j, the
same form as a warm item's score without the item-KNN blend. W is a ridge regression of the warm items' learned
embeddings and biases on their text embeddings (closed form; the ridge strength chosen on held-out warm items). This
is the "mapping" family of cold-start methods (e.g. Gantner et al., ICDM 2010, "Learning Attribute-to-Feature
Mappings for Cold-Start Recommendations"), with a sentence encoder as the attribute extractor.

Also here: the cold-item split of `streamrec train --cold-items` and the offline evaluation of `streamrec evaluate
--cold` (content vs category-only vs popularity, full ranking over the cold items, bootstrap intervals).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_export.dataset import EventLike

CONTENT_FILES = ("content_embeddings.npy", "content_items.json", "content_projection.npy")
RIDGE_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def item_text(title: str, categories: Sequence[str] = (), text: str | None = None) -> str:
    """The text an item is known by: its title, its categories, and a description where there is one."""
    parts = [title.strip(), ", ".join(c.strip() for c in categories if c.strip())]
    if text:
        parts.append(text.strip())
    return ". ".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------------ cold split


@dataclass(frozen=True)
class ColdSplit:
    cold: frozenset[str]  # items withheld from training: the newest by first interaction
    first_seen: dict[str, int]  # item id → first interaction time (ms)

    def warm_events(self, events: Sequence[EventLike]) -> list[EventLike]:
        return [e for e in events if str(e.item_id) not in self.cold]


def cold_split(events: Sequence[EventLike], fraction: float) -> ColdSplit:
    """The `fraction` of items (by count) whose first interaction is the latest; ties broken by item id."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--cold-items must be in (0, 1), got {fraction}")
    first: dict[str, int] = {}
    for e in events:
        i, t = str(e.item_id), int(e.ts)
        if t < first.get(i, 1 << 62):
            first[i] = t
    order = sorted(first, key=lambda i: (first[i], i))
    n_cold = max(1, round(fraction * len(order)))
    return ColdSplit(frozenset(order[-n_cold:]), first)


# ------------------------------------------------------------------------------------------------ projection


@dataclass(frozen=True)
class Projection:
    """[c, 1] @ weights → [item vector (d), bias (1)]: weights [C + 1, d + 1]."""

    weights: np.ndarray
    ridge: float
    heldout_cosine: float  # mean cosine(ê, e) of held-out warm items at the chosen ridge

    def apply(self, content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """content [m, C] → item vectors [m, d], biases [m]."""
        x = np.hstack([content, np.ones((len(content), 1), content.dtype)])
        y = x @ self.weights
        return y[:, :-1].astype(np.float32), y[:, -1].astype(np.float32)


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    xb = np.hstack([x, np.ones((len(x), 1))])
    reg = lam * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0  # no penalty on the intercept
    return np.linalg.solve(xb.T @ xb + reg, xb.T @ y)


def fit_projection(content: np.ndarray, item_emb: np.ndarray, item_bias: np.ndarray, seed: int = 0) -> Projection:
    """Ridge regression of [item_emb, item_bias] on content (rows aligned: warm items with text). The ridge strength
    is the one with the best mean cosine between predicted and learned vectors on a held-out fifth of the items."""
    x = content.astype(np.float64)
    y = np.hstack([item_emb, item_bias[:, None]]).astype(np.float64)
    rng = np.random.default_rng(seed)
    held = rng.random(len(x)) < 0.2
    best = (-2.0, RIDGE_GRID[0])
    for lam in RIDGE_GRID:
        w = _ridge(x[~held], y[~held], lam)
        pred = np.hstack([x[held], np.ones((held.sum(), 1))]) @ w
        p, t = pred[:, :-1], y[held, :-1]
        cos = float(np.mean((p * t).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1) + 1e-12)))
        if cos > best[0]:
            best = (cos, lam)
    return Projection(_ridge(x, y, best[1]), best[1], best[0])


# --------------------------------------------------------------------------------------------- text embedding


@dataclass(frozen=True)
class ExportedEncoder:
    """An encoder directory's ONNX export in the cache (made on first use, keyed by the weights' hash) and its
    tokenizer."""

    source: Path  # the sentence-transformers directory
    onnx_dir: Path  # encoder.onnx and encoder.int8.onnx
    weights_sha256: str
    spec: Any  # text_encoder.EncoderSpec
    tok: Any  # text_encoder.WordPiece, at most `max_tokens` tokens per text

    def encoder(self, int8: bool = False) -> Any:
        from model_export.text_encoder import OnnxTextEncoder

        return OnnxTextEncoder(self.onnx_path(int8), self.tok)

    def onnx_path(self, int8: bool = False) -> Path:
        return self.onnx_dir / ("encoder.int8.onnx" if int8 else "encoder.onnx")


def exported_encoder(encoder_dir: Path, cache: Path, max_tokens: int = 64) -> ExportedEncoder:
    from model_export.text_encoder import EncoderSpec, WordPiece, export_encoder, load_encoder

    weights = next(p for p in (encoder_dir / "model.safetensors", encoder_dir / "pytorch_model.bin") if p.exists())
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    d = cache / digest[:16]
    if not (d / "encoder.int8.onnx").exists():
        model, tok = load_encoder(encoder_dir)
        export_encoder(model, tok, d)
    spec = EncoderSpec.read(encoder_dir)
    tok = WordPiece(encoder_dir / "vocab.txt", lower_case=spec.lower_case, max_tokens=min(max_tokens, spec.max_tokens))
    return ExportedEncoder(encoder_dir, d, digest, spec, tok)


def embed_texts(texts: list[str], encoder_dir: Path, cache: Path, int8: bool = False, max_tokens: int = 64,
                batch: int = 32) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """Embeddings [N, C] of `texts` through the encoder's ONNX graph (`exported_encoder`), and a description of the
    encoder (for the artefact)."""
    ex = exported_encoder(encoder_dir, cache, max_tokens)
    spec = ex.spec
    info = {"dir": str(encoder_dir), "weights_sha256": ex.weights_sha256, "onnx": ex.onnx_path(int8).name,
            "int8": int8, "max_tokens": ex.tok.max_tokens, "dim": spec.hidden, "pooling": spec.pooling,
            "normalize": spec.normalize}
    return ex.encoder(int8).embed(texts, batch), info


# ------------------------------------------------------------------------------------------------ evaluation


@dataclass
class ColdCase:
    user: str
    target: str
    ts: int
    history: list[tuple[str, str, int]]  # the user's warm events before ts (item id, event type, ts), oldest first
    seen: set[str]  # every item the user interacted with before ts
    cat_weights: dict[str, float]  # the user's decayed category interests at ts


def cold_cases(events: Sequence[EventLike], cold: frozenset[str], categories: dict[str, tuple[str, ...]],
               half_life_ms: float, max_len: int) -> tuple[list[ColdCase], np.ndarray, int]:  # fmt: skip
    """One case per (user, cold item) first interaction of a user with warm history; the causal popularity of each
    cold item at each case (interactions with it by anyone before the case, [cases, cold items] in sorted id
    order); and how many first interactions were skipped for lack of warm history."""
    order = sorted(range(len(events)), key=lambda k: (int(events[k].ts), k))
    cold_ids = sorted(cold)
    col = {c: k for k, c in enumerate(cold_ids)}
    counts = np.zeros(len(cold_ids), np.float64)
    hist: dict[str, list[tuple[str, str, int]]] = {}
    seen: dict[str, set[str]] = {}
    cats: dict[str, tuple[dict[str, float], int]] = {}  # user → (weights at last update, its time)
    cases: list[ColdCase] = []
    pops: list[np.ndarray] = []
    skipped = 0
    decay = math.log(2.0) / half_life_ms
    for k in order:
        e = events[k]
        u, i, t = str(e.user_id), str(e.item_id), int(e.ts)
        s = seen.setdefault(u, set())
        w, t0 = cats.get(u, ({}, t))
        f = math.exp(-decay * max(0, t - t0))
        now = {c: v * f for c, v in w.items()}
        if i in cold and i not in s:
            h = hist.get(u, [])
            if h:
                cases.append(ColdCase(u, i, t, h[-max_len:], set(s), dict(now)))
                pops.append(counts.copy())
            else:
                skipped += 1
        if i in cold:
            counts[col[i]] += 1
        else:
            hist.setdefault(u, []).append((i, e.event_type, t))
        s.add(i)
        for c in categories.get(i, ()):
            now[c] = now.get(c, 0.0) + 1.0
        cats[u] = (now, t)
    pop = np.stack(pops) if pops else np.zeros((0, len(cold_ids)))
    return cases, pop, skipped


def category_scores(cases: Sequence[ColdCase], cold_ids: Sequence[str],
                    categories: dict[str, tuple[str, ...]]) -> np.ndarray:  # fmt: skip
    """The category-only path: each cold item's categories' share of the user's decayed interests (the job's
    cold-start fallback ranks new items by the same interests)."""
    out = np.zeros((len(cases), len(cold_ids)))
    for r, c in enumerate(cases):
        total = sum(c.cat_weights.values()) or 1.0
        for j, item in enumerate(cold_ids):
            cs = categories.get(item, ())
            if cs:
                out[r, j] = sum(c.cat_weights.get(x, 0.0) for x in cs) / (total * math.sqrt(len(cs)))
    return out


def _ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def paired_difference(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int, n: int = 1000,
                      seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """NDCG@k of A minus B on the same cases, with a 95 % interval from resampling the cases (paired)."""
    d = _ndcg(ranks_a, k) - _ndcg(ranks_b, k)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n, len(d)))
    boot = d[idx].mean(1)
    return {f"ndcg@{k}_diff": float(d.mean()),
            f"ndcg@{k}_diff_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}


def standardise(s: np.ndarray) -> np.ndarray:
    """Each row to mean 0, standard deviation 1 (scores of different paths on one scale)."""
    return (s - s.mean(1, keepdims=True)) / (s.std(1, keepdims=True) + 1e-9)


def bootstrap(ranks: np.ndarray, k: int, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """HR@k and NDCG@k with 95 % percentile intervals over `n` resamples of the cases."""
    hit = (ranks < k).astype(np.float64)
    ndcg = _ndcg(ranks, k)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ranks), size=(n, len(ranks))) if len(ranks) else np.zeros((n, 0), np.int64)
    out: dict[str, Any] = {"cases": len(ranks)}
    for name, v in ((f"hr@{k}", hit), (f"ndcg@{k}", ndcg)):
        boot = v[idx].mean(1) if len(ranks) else np.zeros(n)
        out[name] = float(v.mean()) if len(ranks) else 0.0
        out[f"{name}_ci95"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    return out


# ----------------------------------------------------------------------------------------- artefact content part


@dataclass(frozen=True)
class ContentPart:
    """What an artefact carries for the content path (written by `attach_content`)."""

    item_ids: tuple[str, ...]  # every catalogue item with text, in row order
    embeddings: np.ndarray  # [m, C] text embeddings of those items
    projection: Projection
    cold: frozenset[str]  # items withheld from training (`--cold-items`), empty otherwise
    encoder: dict[str, Any]  # which encoder made the embeddings (weights hash, ONNX file, tokens)


def attach_content(out: Path, items: Sequence[Any], cold: frozenset[str], encoder_dir: Path, cache: Path,
                   max_tokens: int = 64, batch: int = 32, log: Any = print) -> dict[str, Any]:  # fmt: skip
    """Embed the catalogue's text, fit the projection on the artefact's warm items, and add the content part to
    the artefact in `out` (content_embeddings.npy, content_projection.npy, content.json; config.json["content"])."""
    import json
    import time

    from model_export.artifact import load_artifact

    art = load_artifact(out)
    with_text = [m for m in items if (m.title or "").strip() or m.categories or m.text]
    if not with_text:
        raise ValueError("the data has no item metadata (titles, categories): no content path to fit")
    ids = [str(m.item_id) for m in with_text]
    t0 = time.perf_counter()
    emb, info = embed_texts([item_text(m.title, m.categories, m.text) for m in with_text], encoder_dir, cache,
                            max_tokens=max_tokens, batch=batch)  # fmt: skip
    info["seconds_per_item"] = (time.perf_counter() - t0) / len(ids)
    imap = art.vocab.index_map()
    rows = [(r, imap[i]) for r, i in enumerate(ids) if i in imap and i not in cold]
    if len(rows) < 10:
        raise ValueError(f"only {len(rows)} warm items have text: too few to fit the content projection")
    r_idx, v_idx = np.array([r for r, _ in rows]), np.array([v for _, v in rows])
    proj = fit_projection(emb[r_idx], art.item_embeddings[v_idx], art.item_bias[v_idx])
    np.save(out / "content_embeddings.npy", emb.astype(np.float32))
    np.save(out / "content_projection.npy", proj.weights.astype(np.float32))
    meta = {"items": ids, "cold": sorted(cold), "encoder": info, "ridge": proj.ridge,
            "heldout_cosine": proj.heldout_cosine, "warm_items_fitted": len(rows)}
    (out / "content.json").write_text(json.dumps(meta))
    doc = json.loads((out / "config.json").read_text())
    doc["content"] = {"files": list(CONTENT_FILES[:1]) + ["content_projection.npy", "content.json"],
                      "encoder_weights_sha256": info["weights_sha256"], "dim": int(emb.shape[1]),
                      "items": len(ids), "cold_items": len(cold), "ridge": proj.ridge}
    (out / "config.json").write_text(json.dumps(doc, indent=2))
    log(f"content path: {len(ids)} items embedded ({info['seconds_per_item'] * 1e3:.1f} ms each), projection fitted "
        f"on {len(rows)} warm items (ridge {proj.ridge}, held-out cosine {proj.heldout_cosine:.3f})")
    return meta


def load_content(d: Path) -> ContentPart:
    import json

    meta_path = d / "content.json"
    if not meta_path.exists():
        raise ValueError(f"{d} has no content path: train it with `streamrec train --content` (or --cold-items)")
    meta = json.loads(meta_path.read_text())
    emb = np.load(d / "content_embeddings.npy")
    w = np.load(d / "content_projection.npy").astype(np.float64)
    if emb.shape[0] != len(meta["items"]) or w.shape[0] != emb.shape[1] + 1:
        raise ValueError(f"{d}: content files disagree ({emb.shape}, {w.shape}, {len(meta['items'])} ids)")
    return ContentPart(tuple(meta["items"]), emb, Projection(w, float(meta["ridge"]), float(meta["heldout_cosine"])),
                       frozenset(meta["cold"]), dict(meta["encoder"]))


def reference_scores(reference: Path, histories: Sequence[Sequence[tuple[str, str, int]]],
                     cold_ids: Sequence[str], batch: int = 256) -> np.ndarray:
    """[cases, cold items] SASRec logits u · e_j + b_j of an artefact trained *with* the withheld items (its user
    vector for the same warm history, its learned vector and bias of each withheld item): what the content path
    would score if its text → item-vector mapping were perfect. Raises ValueError when the reference does not know
    every withheld item."""
    from model_export.artifact import load_artifact

    ref = load_artifact(reference)
    imap = ref.vocab.index_map()
    missing = [i for i in cold_ids if i not in imap]
    if missing:
        raise ValueError(f"{reference} does not know {len(missing)} of the {len(cold_ids)} withheld items (e.g. "
                         f"{missing[0]!r}): the reference must be trained on data that includes them")
    idx = np.array([imap[i] for i in cold_ids], dtype=np.int64)
    scorer = ref.scorer(topk=True)
    uv = np.concatenate([
        scorer.run(*ref.make_inputs(histories[s: s + batch]), outputs=("user_vector",))["user_vector"]
        for s in range(0, len(histories), batch)])  # fmt: skip
    out: np.ndarray = uv.astype(np.float64) @ ref.item_embeddings[idx].T.astype(np.float64) + ref.item_bias[idx]
    return out


def evaluate_cold(model_dir: Path, events: Sequence[EventLike], items: Sequence[Any], k: int = 10,
                  half_life_ms: float = 7 * 86_400_000, encoder_dir: Path | None = None, cache: Path | None = None,
                  batch: int = 256, reference: Path | None = None,
                  evidence: Callable[[Sequence[ColdCase], Sequence[str]], np.ndarray] | None = None,
                  evidence_weight: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """HR@k / NDCG@k on the first interaction of each user with each withheld item, ranked among all withheld items
    the user had not touched yet (full ranking), for the content path (fp32, and int8 when an encoder is given),
    the category-only path and causal popularity; with `reference` also `reference_scores`' path; with `evidence`
    (cases, withheld ids → [cases, items] stream CF mass before each case) and a weight, the content path as the
    job scores content items: + weight × log(1 + mass). 95 % bootstrap intervals over the cases."""
    from model_export.artifact import load_artifact
    from model_export.metrics import ranks_full

    art = load_artifact(model_dir)
    part = load_content(model_dir)
    if not part.cold:
        raise ValueError(f"{model_dir} was trained on every item: train with --cold-items to evaluate cold items")
    by_id = {str(m.item_id): m for m in items}
    cold_ids = sorted(i for i in part.cold if i in by_id)
    categories = {str(m.item_id): tuple(m.categories) for m in items}
    cases, pop, skipped = cold_cases(events, frozenset(cold_ids), categories, half_life_ms, art.max_len)
    if not cases:
        raise ValueError("no test interaction with a withheld item by a user with history")
    col = {c: j for j, c in enumerate(cold_ids)}
    targets = np.array([col[c.target] for c in cases])
    exclude = np.array([[i in c.seen for i in cold_ids] for c in cases])
    scorer = art.scorer(topk=True)
    uv = np.concatenate([
        scorer.run(*art.make_inputs([c.history for c in cases[s: s + batch]]), outputs=("user_vector",))["user_vector"]
        for s in range(0, len(cases), batch)])  # fmt: skip
    rows = {i: r for r, i in enumerate(part.item_ids)}
    e_hat, b_hat = part.projection.apply(part.embeddings[[rows[i] for i in cold_ids]])
    scores = {"content": uv @ e_hat.T + b_hat, "category": category_scores(cases, cold_ids, categories),
              "popularity": pop}
    # content and popularity, each standardised per case, equal weights (fixed beforehand, not tuned on the test)
    scores["content+popularity"] = standardise(scores["content"]) + standardise(np.log1p(pop))
    if encoder_dir is not None and cache is not None:
        texts = [item_text(by_id[i].title, by_id[i].categories, by_id[i].text) for i in cold_ids]
        emb8, _ = embed_texts(texts, encoder_dir, cache, int8=True, max_tokens=int(part.encoder["max_tokens"]))
        e8, b8 = part.projection.apply(emb8)
        scores["content_int8"] = uv @ e8.T + b8
    if reference is not None:
        scores["reference"] = reference_scores(reference, [c.history for c in cases], cold_ids, batch)
    if evidence is not None and evidence_weight:
        scores["content+evidence"] = scores["content"] + evidence_weight * np.log1p(evidence(cases, cold_ids))
    out: dict[str, Any] = {"items": len(cold_ids), "cases": len(cases), "skipped_no_history": skipped, "k": k,
                           "protocol": "first interaction of a user with a withheld item; full ranking over the "
                                       "withheld items the user has not touched; ties count against the target"}
    ranks = {name: ranks_full(s, targets, exclude) for name, s in scores.items()}
    for name, r in ranks.items():
        out[name] = bootstrap(r, k)
    out["paired"] = {f"{a} - {b}": paired_difference(ranks[a], ranks[b], k)
                     for a, b in (("content", "category"), ("content", "popularity"),
                                  ("content+popularity", "popularity"))}  # fmt: skip
    out["popularity_note"] = ("popularity = interactions with each withheld item by anyone before the case (what "
                              "the stream has seen); popularity from training alone ranks withheld items at random")
    if reference is not None:
        out["reference_note"] = (f"reference = the learned item vectors and biases of {reference} (trained with the "
                                 "withheld items) for the same histories: the content path with a perfect text → "
                                 "item-vector mapping; an optimistic bound when that model saw the test interactions")
        out["paired"]["reference - popularity"] = paired_difference(ranks["reference"], ranks["popularity"], k)
    if "content+evidence" in ranks:
        out["evidence_note"] = (f"content+evidence = the content path as the job scores content items: + "
                                f"{evidence_weight} (recs.content_evidence) × log(1 + each item's stream CF mass "
                                "before the case: its last publication's summed weights, decayed; operators.cf)")
        for b in ("popularity", "category"):
            out["paired"][f"content+evidence - {b}"] = paired_difference(ranks["content+evidence"], ranks[b], k)
    out["by_target_age"] = by_target_age(ranks, pop[np.arange(len(cases)), targets], k)
    return out


AGE_BINS: tuple[tuple[int, int | None], ...] = ((0, 0), (1, 4), (5, 19), (20, None))


def by_target_age(ranks: dict[str, np.ndarray], prior: np.ndarray, k: int,
                  bins: Sequence[tuple[int, int | None]] = AGE_BINS) -> dict[str, Any]:  # fmt: skip
    """The cases split by how many interactions the target had had from anyone before the case (0: the item's
    first, when nothing but its text is known), each path's HR@k / NDCG@k and content − popularity per bin."""
    out: dict[str, Any] = {}
    for lo, hi in bins:
        sel = (prior >= lo) & (prior <= (np.inf if hi is None else hi))
        name = f"{lo}" if hi == lo else (f"{lo}+" if hi is None else f"{lo}-{hi}")
        row: dict[str, Any] = {"cases": int(sel.sum())}
        if sel.any():
            for path, r in ranks.items():
                row[path] = bootstrap(r[sel], k)
            for a in ("content", "content+popularity", "content+evidence"):
                if a in ranks:
                    row[f"{a} - popularity"] = paired_difference(ranks[a][sel], ranks["popularity"][sel], k)
        out[name] = row
    return out


def bench_encoder(encoder_dir: Path, cache: Path, texts: list[str], max_tokens: int = 64,
                  seconds: float = 3.0) -> dict[str, Any]:  # fmt: skip
    """µs per item text (tokenisation included) at batch 1 and 32, and the resident memory each ONNX session adds to
    the process, for the fp32 and int8 encoder."""
    import time

    ex = exported_encoder(encoder_dir, cache, max_tokens)
    out: dict[str, Any] = {"texts": len(texts), "mean_tokens": float(np.mean([len(ex.tok.encode(t)) for t in texts]))}

    for name, int8 in (("fp32", False), ("int8", True)):
        path = ex.onnx_path(int8)
        enc = ex.encoder(int8)
        row: dict[str, Any] = {"session_rss_mb": _session_rss_mb(path),
                               "file_mb": round(path.stat().st_size / 1e6, 1)}
        for batch in (1, 32):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                enc.embed(texts[n % len(texts): n % len(texts) + batch] or texts[:batch], batch)
                n += batch
            row[f"us_per_item_b{batch}"] = round((time.perf_counter() - t0) / n * 1e6, 1)
        out[name] = row
    return out


def _session_rss_mb(onnx_path: Path) -> float:
    """Resident memory an onnxruntime session over `onnx_path` adds to a fresh Python process (after one run)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, onnxruntime as ort\n"
        "def rss():\n"
        "    import resource; return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
        "a = rss(); o = ort.SessionOptions(); o.intra_op_num_threads = 1\n"
        f"s = ort.InferenceSession({str(onnx_path)!r}, o, providers=['CPUExecutionProvider'])\n"
        "ids = np.full((32, 16), 1000, np.int64); m = np.ones((32, 16), np.int64)\n"
        "s.run(None, {'input_ids': ids, 'attention_mask': m}); print((rss() - a) / 1e6)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return round(float(out.strip().splitlines()[-1]), 1)
