"""`streamrec model publish DIR | erase USER | items publish FILE`: drive the running job's control plane.

Records go to the job's `control` and `items` topics (names from the job conf, `conf/local.yaml`); the job applies
them without a restart. `model publish` first checks the artefact here and copies it into the model store
(`model_store`), which every worker must be able to read; the record carries the copy's path and checksum.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any


def _producer(bootstrap: str) -> Any:
    from kafka import KafkaProducer

    from streamrec.services.clients import kafka_kwargs

    return KafkaProducer(**kafka_kwargs(bootstrap), acks="all", linger_ms=0)


def _send(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> int:
    """Send and wait for every acknowledgement; raises on the first failure."""
    producer = _producer(bootstrap)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        producer.flush()
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close()
    return len(records)


def publish_model(src: Path, store: Path, bootstrap: str, topic: str) -> dict[str, Any]:
    """Verify `src`, copy it to `store/<version>` (atomically: a worker never sees half a copy), publish the record."""
    from model_export.artifact import checksum, load_artifact
    from operators.control import verify_model
    from operators.schema import ModelUpdate

    art = load_artifact(src, verify=True)  # fails here, before anything is published, on a broken artefact
    dest = store / art.version
    if not dest.exists():
        tmp = store / f".{art.version}.{uuid.uuid4().hex[:8]}.tmp"
        shutil.copytree(src, tmp)
        tmp.rename(dest)
    update = ModelUpdate(art.version, str(dest.resolve()), checksum(dest), int(time.time() * 1000))
    verify_model(update, None, store)  # the copy is what the workers will check
    _send(bootstrap, topic, [(b"model", json.dumps(update.to_dict()).encode())])
    return update.to_dict()


def erase_user(user_id: str, bootstrap: str, topic: str, request_id: str | None = None) -> dict[str, Any]:
    from operators.schema import EraseRequest

    req = EraseRequest(user_id, request_id or uuid.uuid4().hex, int(time.time() * 1000))
    _send(bootstrap, topic, [(None, json.dumps(req.to_dict()).encode())])
    return req.to_dict()


def publish_items(path: Path, bootstrap: str, topic: str) -> tuple[int, list[str]]:
    """Validate each JSONL line as an item record; send the valid ones (keyed by item id). Returns (sent, errors)."""
    from operators.schema import Rejection, parse_item

    records: list[tuple[bytes | None, bytes]] = []
    errors: list[str] = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parsed = parse_item(line.rstrip(b"\n"))
            if isinstance(parsed, Rejection):
                errors.append(f"{path}:{n}: {parsed.reason.value}: {parsed.message}")
            else:
                records.append((parsed.item_id.encode(), parsed.to_json().encode()))
    return _send(bootstrap, topic, records) if records else 0, errors


def _job(args: argparse.Namespace) -> Any:
    from jobs.config import load_job_conf
    from streamrec.services.settings import kafka_bootstrap

    return load_job_conf(args.conf), kafka_bootstrap()


def cmd_model_publish(args: argparse.Namespace) -> int:
    from model_export.artifact import ArtifactError
    from operators.control import ModelRejected

    job, bootstrap = _job(args)
    store = job.path(job.model_store)
    store.mkdir(parents=True, exist_ok=True)
    try:
        rec = publish_model(Path(args.dir), store, bootstrap, job.topics.control)
    except (ArtifactError, ModelRejected, OSError) as e:
        print(f"not published: {e}")
        return 1
    print(json.dumps(rec))
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    job, bootstrap = _job(args)
    print(json.dumps(erase_user(args.user, bootstrap, job.topics.control, args.request_id)))
    return 0


def cmd_items_publish(args: argparse.Namespace) -> int:
    job, bootstrap = _job(args)
    sent, errors = publish_items(Path(args.file), bootstrap, job.topics.items)
    for e in errors:
        print(e)
    print(json.dumps({"sent": sent, "rejected": len(errors), "topic": job.topics.items}))
    return 1 if errors else 0


def register(sub: Any) -> None:
    model = sub.add_parser("model", help="model artefacts of the running job (hot-swap)")
    msub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    pub = msub.add_parser("publish", help="verify DIR, copy it to the model store, switch the running job to it")
    pub.add_argument("dir", help="model artefact directory (`streamrec train --out`)")
    pub.add_argument("--conf", default="local.yaml", help="job config (topics, model store)")
    pub.set_defaults(func=cmd_model_publish)

    erase = sub.add_parser("erase", help="forget a user: state, Cassandra rows, a tombstone on recommendations")
    erase.add_argument("user", help="the user id (raw; the job pseudonymises it)")
    erase.add_argument("--request-id", default=None, help="id for the audit trail (default: random)")
    erase.add_argument("--conf", default="local.yaml", help="job config (topics)")
    erase.set_defaults(func=cmd_erase)

    items = sub.add_parser("items", help="catalogue updates for the running job")
    isub = items.add_subparsers(dest="items_command", metavar="ACTION", required=True)
    ipub = isub.add_parser("publish", help="send item records (JSONL: item_id, title, categories[, available])")
    ipub.add_argument("file", help="JSONL file of item records")
    ipub.add_argument("--conf", default="local.yaml", help="job config (topics)")
    ipub.set_defaults(func=cmd_items_publish)
