"""Control plane of the running job as plain functions: check a published model before any instance switches to it.

A `model` control record names an artefact directory, its version and the sha256 of its files
(`model_export.artifact.checksum`). Every parallel instance verifies it on its own; a rejected artefact leaves the
current model serving and produces a dead letter saying why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_export.artifact import ModelArtifact, checksum, load_artifact
from model_export.onnx_io import INPUT_NAMES
from operators.dead_letter import operator_dead_letter
from operators.schema import ModelUpdate

MODEL_REJECTED = "model_rejected"  # dead-letter reason: a published model failed verification
SOURCE = "control"


class ModelRejected(ValueError):
    """Why a published artefact cannot serve."""


def verify_model(update: ModelUpdate, current: ModelArtifact | None, store: Path | None = None) -> ModelArtifact:
    """Load the artefact a `model` record names and check it can replace `current`; raises `ModelRejected`.

    Checks: the directory is inside the model store `store` (the job's `model_store`: a control record cannot make
    the workers load a path anywhere else, `..` and symlinks resolved first; None: no store, the CLI's own check of
    what it is about to publish); it exists; its checksum is the published one (the files are the published
    files); it loads and its weights hash to its version; the version is the published one; the graph inputs are
    the ones the scorer feeds; its event types are the current model's (state stores event codes by that order).
    """
    d = Path(update.path)
    if store is not None:
        try:
            inside = d.resolve().is_relative_to(store.resolve())
        except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a NUL in the path
            raise ModelRejected(f"artefact path {update.path!r} does not resolve: {e}") from e
        if not inside:
            raise ModelRejected(f"artefact path {update.path!r} is outside the model store {str(store)!r}")
    if not d.is_dir():
        raise ModelRejected(f"artefact directory not found: {d}")
    try:
        got = checksum(d)
    except OSError as e:
        raise ModelRejected(f"cannot read {d}: {e}") from e
    if got != update.sha256:
        raise ModelRejected(f"checksum mismatch for {d}: published {update.sha256[:16]}..., files {got[:16]}...")
    try:
        art = load_artifact(d, verify=True)
    except Exception as e:  # noqa: BLE001 - corrupt files raise all sorts (protobuf DecodeError, numpy, JSON)
        raise ModelRejected(f"artefact does not load: {type(e).__name__}: {e}") from e
    if art.version != update.version:
        raise ModelRejected(f"published version {update.version!r}, artefact says {art.version!r}")
    names = tuple(str(i.get("name")) for i in art.inputs)
    if names != INPUT_NAMES:
        raise ModelRejected(f"input signature {names} is not the scorer's {INPUT_NAMES}")
    if art.n_items < 1:
        raise ModelRejected("empty item vocabulary")
    if current is not None and art.event_types != current.event_types:
        raise ModelRejected(f"event types {art.event_types} differ from the serving model's {current.event_types}")
    return art


def model_rejection(update: ModelUpdate, reason: str) -> dict[str, Any]:
    """Dead letter for a rejected model record (deterministic id: a replay rewrites the same record)."""
    return operator_dead_letter(MODEL_REJECTED, f"model {update.version} rejected: {reason}", SOURCE,
                                update.to_dict())
