"""Nothing makes the operators raise (arbitrary bytes, JSON, states), and the offline replay end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.item import ItemOperator
from operators.schema import Event
from tests.unit.operators.conftest import T0, conf_with

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.text(max_size=5) | json_values, "user_id": st.sampled_from(["u1", "u2", ""]) | json_values,
        "item_id": st.text(max_size=5), "event_type": st.sampled_from(["view", "click", "rating", "buy"]),
        "ts": st.integers(T0 - 10**12, T0 + 10**12) | json_values, "rating": json_values | st.floats(0, 6),
        "context": json_values, "x": json_values,
    },
)  # fmt: skip


@FUZZ
@given(state=st.none() | st.binary(max_size=300), raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(make_op: Callable[..., Any], state: bytes | None, raw: bytes) -> None:
    op = make_op()
    r = op.step(state, raw)
    assert r.dead_letters or r.recommendations or r.duplicate or r.timer_ts
    op.on_timer(state, T0)
    op.erase(state, "u", T0)
    ItemOperator(conf_with()).step(state, raw)


@FUZZ
@given(state=st.none() | st.binary(max_size=200), obj=event_like | json_values)
def test_arbitrary_json_never_raises(make_op: Callable[..., Any], state: bytes | None, obj: Any) -> None:
    op = make_op()
    try:
        text = json.dumps(obj)
    except ValueError:
        text = "{}"
    for payload in (obj, text):
        r = op.step(state, payload)
        json.dumps(r.dead_letters + r.recommendations + r.fraud_flags + r.item_events)
    ItemOperator(conf_with()).step(state, obj)


@FUZZ
@given(
    item=st.text(min_size=1, max_size=8),
    etype=st.sampled_from(["view", "click", "cart", "purchase", "rating"]),
    ts=st.integers(946_684_800_000, 4_102_444_799_999),
    seed_state=st.binary(max_size=64),
)
def test_valid_events_on_garbage_state(make_op: Callable[..., Any], item: str, etype: str, ts: int,
                                       seed_state: bytes) -> None:  # fmt: skip
    op = make_op()
    e = Event("e", "u", item, etype, ts, rating=4.0 if etype == "rating" else None)
    r = op.step(seed_state, e)
    assert r.state is not None and not r.dead_letters
    r2 = op.step(r.state, e)
    assert r2.duplicate
    iop = ItemOperator(conf_with())
    for ie in r.item_events:
        assert not iop.step(seed_state, ie).dead_letters


def test_replay_end_to_end(model_dir: Path, sim_dir: Path, tmp_path: Path) -> None:
    from streamrec.cli import main

    events = tmp_path / "events.jsonl"
    lines = (sim_dir / "events.jsonl").read_bytes().splitlines()[:1500]
    dup = lines[10]
    events.write_bytes(b"\n".join([*lines[:20], dup, b"{not json", b'{"event_id":"x"}', *lines[20:]]) + b"\n")
    outs = []
    for run in ("a", "b"):
        rc = main(["replay", "--model", str(model_dir), "--events", str(events), "--out", str(tmp_path / run),
                   "--labels", str(sim_dir / "labels.json")])  # fmt: skip
        assert rc == 0
        outs.append(tmp_path / run)
    s = json.loads((outs[0] / "summary.json").read_text())
    assert s["events_in"] == 1503 and s["valid"] == 1501 and s["duplicates"] == 1
    assert s["dead_letters"] == 2 and s["dead_letter_reasons"] == {"missing_field": 1, "not_json": 1}
    recs = (outs[0] / "recommendations.jsonl").read_text().splitlines()
    assert len(recs) == s["recommendations"] > 0
    assert len((outs[0] / "dead_letters.jsonl").read_text().splitlines()) == 2
    assert s["state_bytes_per_user"]["p50"] > 0 and s["events_per_second"] > 0
    assert "overall" in s["labels_eval"]["users"] and "overall" in s["labels_eval"]["items"]
    # a replay rewrites the same records (deterministic ids and content)
    for name in ("recommendations.jsonl", "fraud_flags.jsonl", "dead_letters.jsonl"):
        assert (outs[0] / name).read_text() == (outs[1] / name).read_text()
    ids = [json.loads(r)["rec_id"] for r in recs]
    assert len(set(ids)) == len(ids)
