"""Item text in the running job (issue 15, must-show 2), on the real services: an item the model never saw,
published on `items` with a title and description that match a user's interests, is embedded in the stream
(`embed-items`: the pinned sentence encoder, int8) and broadcast; the user's next list, built one checkpoint interval
after the item was published, holds it, marked `content`. And the CF topic's read-back path (issue 13's batches)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streamrec.config import REPO_ROOT
from streamrec.services.clients import kafka_kwargs
from tests.integration.test_control_plane import read_topic, wait_for
from tests.integration.test_job_e2e import job_env
from tests.integration.test_rescale import fresh_topics
from tests.tiny_model import TINY_MODEL_YAML

CHECKPOINT_MS = 5000  # the job's default checkpoint.interval_ms (conf/local.yaml)


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_an_item_published_with_text_reaches_a_matching_users_next_list(
        kafka_bootstrap: str, cassandra_up: Any, connector_jars: list[Path], tmp_path: Path,
        mode: str) -> None:  # fmt: skip
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient

    from model_export.encoder_fetch import fetch, load_encoder_conf
    from operators.cf import CfUpdate
    from operators.schema import Event, ItemMeta
    from operators.state import item_hash
    from streamrec.cli import main
    from streamrec.data import simulator
    from streamrec.services.cassandra import apply_schema, connect

    fetch(load_encoder_conf())
    sim = simulator.simulate(simulator.with_overrides(simulator.load_conf(), events=1500, users=100, seed=13))
    events = sim.events
    # The artefact knows the items of its training data (their text too): the published item is the only one the
    # model has never seen, so it is the only content candidate and the reserved content place is its to take.
    seen = {e.item_id for e in events}
    data = tmp_path / "data"
    data.mkdir()
    (data / "events.jsonl").write_text("".join(e.to_json() + "\n" for e in events))
    (data / "items.jsonl").write_text("".join(m.to_json() + "\n" for m in sim.items if m.item_id in seen))
    (tmp_path / "tiny.yaml").write_text(TINY_MODEL_YAML)
    model = tmp_path / "model"
    assert main(["train", "--data", str(data), "--out", str(model), "--conf", str(tmp_path / "tiny.yaml"),
                 "--content", "--no-progress"]) == 0  # fmt: skip
    assert json.loads((model / "config.json").read_text())["content"]["items"] == len(seen)

    # the test user: the genuine one with the most events; their main category; an unseen item in that category
    by_user = Counter(e.user_id for e in events if e.user_id not in sim.labels["users"])
    user = by_user.most_common(1)[0][0]
    cats = {m.item_id: m.categories for m in sim.items}
    top_cat = Counter(c for e in events if e.user_id == user for c in cats.get(e.item_id, ())).most_common(1)[0][0]
    like = next(m for m in sim.items if m.item_id in seen and m.categories[:1] == (top_cat,))
    new_id = f"new-{uuid.uuid4().hex[:8]}"
    new_item = ItemMeta(new_id, f"{like.title.split(' (')[0]} Returns", (top_cat,), like.text)

    run_id, topics = fresh_topics(kafka_bootstrap, "content")
    # Own keyspace and pseudonym key: this test's simulated users share ids with other tests' and get later lists,
    # which must not replace the rows those tests read back.
    keyspace = f"content_{uuid.uuid4().hex[:10]}"
    c = cassandra_up.cassandra
    apply_schema(c.contact_points, c.native_port, c, keyspace=keyspace)
    env = job_env(topics, model, keyspace, tmp_path, run_id)
    env.update({"STREAMREC_JOB_BOUNDED": "false", "STREAMREC_JOB_CHECKPOINT_INTERVAL_MS": str(CHECKPOINT_MS),
                "STREAMREC_DEBOUNCE_INTERVAL_MS": "0", "STREAMREC_PSEUDONYM_KEY": "content-test-key-0123456789abcdef",
                "STREAMREC_PSEUDONYM_KEY_ID": "content-k1",
                "STREAMREC_JOB_EXECUTION_MODE": mode})  # fmt: skip  (thread: the encoder is loaded inside the JVM)
    argv = [sys.executable, "-m", "jobs.recommend"] + [a for j in connector_jars for a in ("--jar", str(j))]
    producer = KafkaProducer(**kafka_kwargs(kafka_bootstrap), acks="all")

    def recs() -> list[dict[str, Any]]:
        return [json.loads(v) for _, v in read_topic(kafka_bootstrap, topics["recommendations"]) if v is not None]

    log = (tmp_path / "job.log").open("wb")
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        for e in events:
            producer.send(topics["events"], value=e.to_json().encode(), timestamp_ms=e.ts)
        producer.flush()
        last_id = [e.event_id for e in events if e.user_id == user][-1]
        before = wait_for("the user's list for their last event",
                          lambda: [r for r in recs() if r["event_id"] == last_id], proc=proc)[-1]  # fmt: skip
        assert new_id not in before["items"] and "content" not in before["sources"]

        producer.send(topics["items"], value=new_item.to_json().encode(), timestamp_ms=int(time.time() * 1000))
        producer.flush()
        time.sleep(CHECKPOINT_MS / 1000)  # one checkpoint interval after the item was published ...
        last = max(e.ts for e in events)
        nxt = Event(f"{run_id}-next", user, like.item_id, "view", last + 60_000)
        producer.send(topics["events"], value=nxt.to_json().encode(), timestamp_ms=nxt.ts)
        producer.flush()
        # ... the user's next list holds it, marked content
        rec = wait_for("the list for the next event", lambda: [r for r in recs() if r["event_id"] == nxt.event_id],
                       timeout_s=120, proc=proc)[-1]  # fmt: skip
        assert new_id in rec["items"], f"{new_id} not in {rec['items']} ({rec['sources']})"
        assert rec["sources"][rec["items"].index(new_id)] == "content"
        assert rec["catalog_version"] >= 1
        dead = [json.loads(v) for _, v in read_topic(kafka_bootstrap, topics["dead-letters"]) if v is not None]
        assert not [d for d in dead if d.get("source") == "embed_items"], dead

        # Streaming CF's read-back path (issue 13: the CF topic is read in batches, `recommend.batch_cf`): a
        # neighbour list on the job's CF topic makes a new item a successor of the user's latest item; the next
        # list holds it in the reserved CF place. A record that is no neighbour list becomes a dead letter.
        cf_topic, cf_id = f"g-{run_id}-cf", f"cf-{uuid.uuid4().hex[:8]}"
        update = CfUpdate(cf_id, ((item_hash(like.item_id), 100.0),), last + 60_000)
        now_ms = int(time.time() * 1000)
        producer.send(cf_topic, key=cf_id.encode(), value=json.dumps(update.to_dict()).encode(), timestamp_ms=now_ms)
        # the same key: the same partition, after the update (read, batched and parsed in that order)
        producer.send(cf_topic, key=cf_id.encode(), value=b"{not json", timestamp_ms=now_ms)
        producer.flush()
        wait_for("the bad CF record's dead letter", lambda: [
            d for _, v in read_topic(kafka_bootstrap, topics["dead-letters"]) if v is not None
            for d in [json.loads(v)] if d.get("source") == cf_topic], timeout_s=60, proc=proc)  # fmt: skip
        # ParseCf emitted the update (broadcast) with the dead letter's batch or before it. The broadcast and the
        # events reach the user operator on different inputs, in no guaranteed order: up to three events later
        got = []
        for k in range(3):
            time.sleep(1.0)
            ev = Event(f"{run_id}-cf{k}", user, like.item_id, "view", last + 120_000 * (k + 1))
            producer.send(topics["events"], value=ev.to_json().encode(), timestamp_ms=ev.ts)
            producer.flush()
            got.append(wait_for("the list for an event after the CF update",
                                lambda ev=ev: [r for r in recs() if r["event_id"] == ev.event_id],
                                timeout_s=120, proc=proc)[-1])  # fmt: skip
            if cf_id in got[-1]["items"]:
                break
        rec = got[-1]
        assert cf_id in rec["items"], f"{cf_id} not in {[(r['items'], r['sources']) for r in got]}"
        assert rec["sources"][rec["items"].index(cf_id)] == "cf"
    finally:
        admin = KafkaAdminClient(**kafka_kwargs(kafka_bootstrap))
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        producer.close()
        admin.delete_topics([*topics.values(), f"g-{run_id}-cf"])
        admin.close()
        drop = connect(c.contact_points, c.native_port)
        try:
            drop.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
        finally:
            drop.cluster.shutdown()
