"""Control plane logic without Flink: control-record validation, model verification, catalogue updates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from model_export.artifact import checksum
from operators.control import MODEL_REJECTED, ModelRejected, model_rejection, verify_model
from operators.schema import EraseRequest, ItemMeta, ModelUpdate, Reason, Rejection, parse_control, parse_item
from tests.unit.operators.conftest import T0, ev

SHA = "a" * 64


def test_parse_control_accepts_model_and_erase_records() -> None:
    m = parse_control(json.dumps({"kind": "model", "version": "v1", "path": "/m", "sha256": SHA, "ts": T0}))
    assert m == ModelUpdate("v1", "/m", SHA, T0)
    e = parse_control(json.dumps({"kind": "erase", "user_id": "u1", "request_id": "r1", "ts": T0}).encode())
    assert e == EraseRequest("u1", "r1", T0)
    assert parse_control(json.dumps(m.to_dict())) == m and parse_control(json.dumps(e.to_dict())) == e


CONTROL_CASES: list[tuple[dict[str, Any], Reason]] = [
    ({"kind": "reboot", "ts": T0}, Reason.BAD_CONTROL),
    ({"version": "v1", "path": "/m", "sha256": SHA, "ts": T0}, Reason.MISSING_FIELD),
    ({"kind": "model", "version": "v1", "path": "/m", "sha256": "xyz", "ts": T0}, Reason.BAD_CONTROL),
    ({"kind": "model", "version": "v1", "path": "", "sha256": SHA, "ts": T0}, Reason.BAD_CONTROL),
    ({"kind": "model", "version": "v1", "path": "/m", "sha256": SHA}, Reason.MISSING_FIELD),
    ({"kind": "erase", "user_id": "u1", "ts": T0}, Reason.MISSING_FIELD),
    ({"kind": "erase", "user_id": 7, "request_id": "r", "ts": T0}, Reason.BAD_TYPE),
    ({"kind": "erase", "user_id": "u1", "request_id": "r", "ts": T0, "extra": 1}, Reason.UNKNOWN_FIELD),
    ({"kind": "erase", "user_id": "u1", "request_id": "r", "ts": 5}, Reason.TS_OUT_OF_RANGE),
]


@pytest.mark.parametrize(("record", "reason"), CONTROL_CASES)
def test_parse_control_rejects_with_a_reason(record: dict[str, Any], reason: Reason) -> None:
    got = parse_control(json.dumps(record))
    assert isinstance(got, Rejection) and got.reason == reason


def test_parse_control_never_raises_on_garbage() -> None:
    for raw in (b"\xff\xfe", b"[]", b"", b"null", b"{" * 5000):
        assert isinstance(parse_control(raw), Rejection)


def test_item_availability_round_trips_and_is_validated() -> None:
    gone = ItemMeta("i1", "title", ("c",), available=False)
    assert parse_item(gone.to_json()) == gone
    assert "available" not in ItemMeta("i1", "title").to_dict()  # the common case keeps the old shape
    bad = parse_item(json.dumps({"item_id": "i1", "title": "t", "categories": [], "available": "no"}))
    assert isinstance(bad, Rejection) and bad.reason == Reason.BAD_TYPE


def _update(d: Path, version: str, sha: str | None = None) -> ModelUpdate:
    return ModelUpdate(version, str(d), sha or checksum(d), T0)


def test_verify_model_accepts_the_published_artefact(model_dir: Path, artifact: Any) -> None:
    art = verify_model(_update(model_dir, artifact.version), artifact)
    assert art.version == artifact.version


def test_verify_model_rejects_missing_changed_mislabelled_and_incompatible(
        model_dir: Path, artifact: Any, tmp_path: Path) -> None:
    with pytest.raises(ModelRejected, match="not found"):
        verify_model(_update(tmp_path / "nope", artifact.version, SHA), artifact)
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    digest = checksum(copy)
    with (copy / "model.onnx").open("r+b") as fh:  # a file changed after publication
        fh.seek(100)
        fh.write(b"\x01" * 32)
    with pytest.raises(ModelRejected, match="checksum mismatch"):
        verify_model(_update(copy, artifact.version, digest), artifact)
    with pytest.raises(ModelRejected, match="does not load"):  # right checksum of broken files: load fails
        verify_model(_update(copy, artifact.version), artifact)
    shutil.rmtree(copy)
    shutil.copytree(model_dir, copy)
    with pytest.raises(ModelRejected, match="published version"):
        verify_model(_update(copy, "sasrec-0000000000000000"), artifact)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["event_types"] = list(reversed(cfg["event_types"]))
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelRejected, match="event types"):
        verify_model(_update(copy, artifact.version), artifact)


def test_verify_model_refuses_paths_outside_the_model_store(model_dir: Path, artifact: Any, tmp_path: Path) -> None:
    """A control record naming a directory anywhere but the job's model store is refused before anything is read
    there, however the path is spelt (`..`, a symlink); the same artefact inside the store is accepted."""
    store = tmp_path / "store"
    inside = store / artifact.version
    shutil.copytree(model_dir, inside)
    assert verify_model(_update(inside, artifact.version), artifact, store).version == artifact.version
    outside = tmp_path / "elsewhere"
    shutil.copytree(model_dir, outside)
    (store / "link").symlink_to(outside)
    for path in (outside, store / ".." / "elsewhere", store / "link", Path("/etc")):
        with pytest.raises(ModelRejected, match="outside the model store"):
            verify_model(ModelUpdate(artifact.version, str(path), SHA, T0), artifact, store)
    assert verify_model(_update(outside, artifact.version), artifact).version == artifact.version  # no store: CLI


def test_model_rejection_is_a_deterministic_dead_letter() -> None:
    u = ModelUpdate("v9", "/m", SHA, T0)
    a, b = model_rejection(u, "checksum mismatch"), model_rejection(u, "checksum mismatch")
    assert a == b and a["reason"] == MODEL_REJECTED and "v9" in a["message"]


def test_unavailable_item_leaves_lists_from_the_next_event_and_comes_back(make_op: Any, artifact: Any) -> None:
    op = make_op(debounce={"interval_ms": 0})
    items = list(artifact.vocab.item_ids[:6])
    state = None
    for i, item in enumerate(items[:3]):
        state = op.step(state, ev(i, item, T0 + i * 1000)).state
    before = op.step(state, ev(10, items[3], T0 + 10_000)).recommendations[0]
    assert before["catalog_version"] == 0
    target = before["items"][0]
    assert op.apply_item(ItemMeta(target, "t", (), available=False)) is True
    after = op.step(state, ev(11, items[3], T0 + 11_000)).recommendations[0]
    assert target not in after["items"] and after["catalog_version"] == 1
    op.apply_item(ItemMeta(target, "t", (), available=True))
    again = op.step(state, ev(12, items[3], T0 + 12_000)).recommendations[0]
    assert target in again["items"] and again["catalog_version"] == 2
    assert op.apply_item(ItemMeta("not-in-vocab", "t", ())) is False


def test_unavailable_item_also_leaves_cold_start_lists(make_op: Any) -> None:
    op = make_op(debounce={"interval_ms": 0})
    first = op.step(None, ev(1, "unknown-item", T0)).recommendations[0]
    assert first["source"] == "cold_start"
    op.apply_item(ItemMeta(first["items"][0], "t", (), available=False))
    second = op.step(None, ev(2, "unknown-item", T0 + 1000)).recommendations[0]
    assert first["items"][0] not in second["items"]


def test_a_new_model_operator_adopts_the_catalogue(make_op: Any, artifact: Any) -> None:
    old, new = make_op(), make_op()
    target = artifact.vocab.item_ids[0]
    old.apply_item(ItemMeta(target, "t", ("fresh",), available=False))
    new.adopt_catalog(old)
    i = artifact.item_index(target)
    assert new.static_exclude[i] and new.catalog_version == old.catalog_version == 1
    assert target not in [new.item_ids[j] for j in new.popular]
