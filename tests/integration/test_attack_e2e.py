"""A shilling attack on public data through the job: the Flink job flags exactly what `streamrec replay` flags.

ML-100K's first 30,000 ratings (a ratings-only feed: the detectors must learn that) with 10 % random-attack profiles
in a burst (`streamrec data attack`), a model trained on the clean ratings, the default operators conf → Kafka → the
PyFlink job (minicluster) → Kafka. Every flag (user detectors, shilling items and members, detector alarms) must
equal the replay's: the base rates are learned per shard in the order the job sees them, and item events are taken
in event-time order, ties by event id (MovieLens times are whole seconds).
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import types
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamrec.config import REPO_ROOT
from streamrec.services.clients import kafka_kwargs
from tests.integration.test_job_e2e import job_env
from tests.integration.test_kafka import consume_all

ML100K = REPO_ROOT.parent / "shared" / "data" / "ml-100k"
N_RATINGS = 30_000

pytestmark = pytest.mark.skipif(not (ML100K / "u.data").is_file(),
                                reason="MovieLens-100K not at ../shared/data/ml-100k (never bundled: its licence)")


def ml_subset(out: Path) -> Path:
    """The first N_RATINGS ratings of ML-100K by time, with its item files: a MovieLens-format directory."""
    rows = [line.split("\t") for line in (ML100K / "u.data").read_text().splitlines()]
    rows.sort(key=lambda r: (int(r[3]), int(r[0]), int(r[1])))
    out.mkdir(parents=True)
    (out / "u.data").write_text("".join("\t".join(r) + "\n" for r in rows[:N_RATINGS]))
    for name in ("u.item", "u.genre"):
        (out / name).write_bytes((ML100K / name).read_bytes())
    return out


@pytest.fixture(scope="module")
def attacked(kafka_bootstrap: str, cassandra_keyspace: str, connector_jars: list[Path],
             tmp_path_factory: pytest.TempPathFactory) -> Any:  # fmt: skip
    from kafka.admin import KafkaAdminClient, NewTopic

    from streamrec.cli import main
    from streamrec.data import attack
    from streamrec.data.loaders import shift_into_contract, write_events_jsonl
    from streamrec.data.produce import produce
    from streamrec.data.simulator import load_conf

    tmp = tmp_path_factory.mktemp("attack-e2e")
    ds = attack.load_dataset(ml_subset(tmp / "ml"))
    att = attack.inject(ds, attack.AttackOptions(kind="random", size=0.10, timing="burst", seed=3))
    paths = attack.write_outputs(att, tmp / "attacked")
    clean = write_events_jsonl(shift_into_contract(ds.events)[0], [], tmp / "clean" / "events.jsonl")["events"]
    assert main(["train", "--data", str(clean), "--out", str(tmp / "model"), "--epochs", "3", "--no-progress"]) == 0

    run_id = f"att-{uuid.uuid4().hex[:10]}"
    outputs = ("recommendations", "fraud-flags", "dead-letters", "deletions")
    topics = {name: f"{run_id}-{name}" for name in ("events", "items", "control", *outputs)}
    admin = KafkaAdminClient(**kafka_kwargs(kafka_bootstrap))
    admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics.values()])
    lines = paths["events"].read_bytes().splitlines()
    stream = [(line, e.user_id.encode(), e.ts) for line, e in zip(lines, att.events, strict=True)]
    res = produce(types.SimpleNamespace(items=att.items, stream=stream),  # type: ignore[arg-type]
                  topics["events"], topics["items"], rate=0,
                  conf=load_conf().producer, bootstrap=kafka_bootstrap, progress=False)  # fmt: skip
    assert res.sent == len(stream) and res.failed == 0

    env = job_env(topics, tmp / "model", cassandra_keyspace, tmp, run_id)
    argv = [sys.executable, "-m", "jobs.recommend"] + [a for j in connector_jars for a in ("--jar", str(j))]
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    flags = [json.loads(v) for v in consume_all(kafka_bootstrap, topics["fraud-flags"], expected=1,
                                                isolation_level="read_committed", timeout_s=20)]  # fmt: skip
    rep = subprocess.run([sys.executable, "-m", "streamrec.cli", "replay", "--model", str(tmp / "model"),
                          "--events", str(paths["events"]), "--labels", str(paths["labels"]),
                          "--out", str(tmp / "replay")], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    assert rep.returncode == 0, rep.stderr[-3000:]
    offline = [json.loads(x) for x in (tmp / "replay" / "fraud_flags.jsonl").read_text().splitlines()]
    summary = json.loads((tmp / "replay" / "summary.json").read_text())
    yield types.SimpleNamespace(flags=flags, offline=offline, summary=summary, labels=att.labels, env=env)
    admin.delete_topics(list(topics.values()))
    admin.close()


def test_the_job_flags_what_the_replay_flags(attacked: Any) -> None:
    def ids(flags: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
        return sorted((f["kind"], f["detector"], f["subject"], f["flag_id"]) for f in flags)

    job, offline = ids(attacked.flags), ids(attacked.offline)
    assert len(set(job)) == len(job), "duplicate flag records"
    assert job == offline, (len(job), len(offline), collections.Counter(f[1] for f in set(job) ^ set(offline)))
    detectors = collections.Counter(f[1] for f in job)
    assert detectors["shilling"] >= 1 and detectors["shilling_member"] >= 1, detectors  # item and member flags too


def test_the_attack_is_caught_on_a_ratings_only_feed_with_the_default_conf(attacked: Any) -> None:
    ev = attacked.summary["labels_eval"]
    assert ev["users"]["overall"]["precision"] >= 0.9 and ev["users"]["overall"]["recall"] >= 0.8, ev["users"]
    assert ev["items"]["overall"]["recall"] == 1.0, ev["items"]
    assert not attacked.summary["detector_alarms"]
