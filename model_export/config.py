"""Hyperparameters of the sequential recommender, its baselines and its export, loaded from `conf/model.yaml`.

Frozen dataclasses so a trained artefact can record exactly what produced it (`config.json`); every scalar is
overridable from the environment as `STREAMREC_<SECTION>_<FIELD>` (e.g. `STREAMREC_TRAIN_EPOCHS=5`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamrec import config as _config

DEFAULT_CONF = "model.yaml"


@dataclass(frozen=True)
class SASRecConfig:
    """Shape of the Transformer (Kang & McAuley, ICDM 2018)."""

    max_len: int = 50  # longest input sequence L; serving passes the user's last <= max_len events
    dim: int = 64  # embedding / hidden size d
    heads: int = 2  # attention heads (dim must divide by it)
    blocks: int = 2  # pre-norm Transformer blocks
    ffn_mult: int = 2  # feed-forward hidden size = ffn_mult * dim
    dropout: float = 0.3  # dropout on embeddings, attention weights and FFN (training only)
    use_event_type: bool = True  # add an event-type embedding (view/click/cart/purchase/rating) per position
    use_time_gap: bool = True  # add an embedding of log2-bucketed seconds since the previous event
    time_buckets: int = 24  # number of time-gap buckets (bucket 0 = no previous event in the input)
    item_bias: bool = True  # a learned per-item output bias next to the tied item embedding


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: full-softmax cross-entropy (Klenitskiy & Vasilev, RecSys 2023) with AdamW."""

    epochs: int = 30  # upper bound; early stopping may end sooner
    batch_size: int = 32  # training windows per step (small: ML-100K has only ~2.4k windows)
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not applied to biases / LayerNorm)
    patience: int = 5  # epochs without validation NDCG@10 improvement before stopping
    seed: int = 0  # seeds python, numpy and torch; the split itself is deterministic
    threads: int = 2  # torch.set_num_threads; the machine is shared
    eval_batch_size: int = 256  # users per batch when scoring validation / test
    all_windows: bool = True  # train on every max_len chunk of a history (false: only the most recent chunk)


@dataclass(frozen=True)
class KNNConfig:
    """Item-KNN baseline and CF candidate source: cosine over user co-occurrence, recency-weighted scoring."""

    neighbours: int = 300  # top-N neighbours kept per item (artefact + in-graph sparse form)
    windows: tuple[int, ...] = (
        1,
        2,
        3,
        5,
        10,
        20,
        50,
    )  # candidate windows (most recent items) tuned on valid
    decays: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3)  # candidate per-step recency decays
    shrink: float = 0.0  # added to the cosine denominator; damps similarities from few co-occurrences


@dataclass(frozen=True)
class BlendConfig:
    """Final score = log_softmax(SASRec) + w * log(knn / max(knn) + eps); w, eps and the KNN window / decay
    of the blend are tuned jointly on validation (the best standalone KNN setting is not the best partner)."""

    weights: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # candidate w (0 = plain SASRec)
    eps: tuple[float, ...] = (0.3, 0.1, 0.03, 0.01, 0.001)  # candidate floors inside the log
    windows: tuple[int, ...] = (3, 5, 10, 20, 50)  # candidate KNN windows inside the blend (<= max_len)
    decays: tuple[float, ...] = (1.0, 0.9, 0.8, 0.6)  # candidate KNN recency decays inside the blend
    # validation NDCG@k a smaller KNN window may give up against the best blend: the served graph's KNN gathers and
    # scatter grow with the window (50 x neighbours per list at window 50), and nearby windows often tie
    window_tolerance: float = 0.001
    enabled: bool = True  # false: ship plain SASRec (w = 0) without tuning


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export."""

    opset: int = 17  # ONNX opset (>= 17)
    top_k: int = 50  # K of the in-graph TopK output (capped at the catalogue size; >= recs.candidates)
    popular: int = 500  # how many most-popular item indices to store in the artefact
    quantize_ops: tuple[str, ...] = ("MatMul", "Gemm")  # op types dynamically quantised for model.int8.onnx


@dataclass(frozen=True)
class EvalConfig:
    """Offline protocol: leave-last-out, full ranking and 100 sampled negatives."""

    k: int = 10  # cut-off for HR@k / NDCG@k
    sampled_negatives: int = 100  # uniform negatives (never in the user's history) for the sampled protocol
    sample_seed: int = 12345  # RNG seed of the negative sampler, fixed so methods see the same negatives


@dataclass(frozen=True)
class ModelConfig:
    """Everything `streamrec train` needs besides the data."""

    sasrec: SASRecConfig = field(default_factory=SASRecConfig)  # network shape
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation
    knn: KNNConfig = field(default_factory=KNNConfig)  # item-KNN baseline / candidates
    blend: BlendConfig = field(default_factory=BlendConfig)  # SASRec + item-KNN blend
    export: ExportConfig = field(default_factory=ExportConfig)  # ONNX export
    eval: EvalConfig = field(default_factory=EvalConfig)  # offline evaluation protocol


def load_model_config(path: str | Path | None = None) -> ModelConfig:
    """Read `conf/model.yaml` (or `path`) with environment overrides."""
    return _config.load(ModelConfig, path or DEFAULT_CONF)


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a config stored in an artefact's `config.json`."""
    return _config.from_mapping(ModelConfig, data, "config.json")


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """JSON-able form (tuples become lists)."""
    return dataclasses.asdict(cfg)


def with_overrides(cfg: ModelConfig, **train: Any) -> ModelConfig:
    """Copy with some `train` fields replaced (CLI --seed/--epochs), ignoring None values."""
    changes = {k: v for k, v in train.items() if v is not None}
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes)) if changes else cfg
