"""Batch frames and shards: Python (jobs/batching.py) and the job's Java classes (jobs/java) agree."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from jobs import batching

HERE = Path(__file__).parent


def test_batch_frame_round_trip() -> None:
    events = [b'{"a":1}', b"", "é\x1e".encode(), bytes(range(256))]
    frame = batching.encode_batch(-5, events)
    assert batching.frame_key(frame) == -5
    assert batching.decode_batch(frame) == events
    assert not batching.is_erase(frame)
    with pytest.raises(batching.FrameError):
        batching.decode_batch(frame + b"x")  # trailing garbage
    with pytest.raises(batching.FrameError):
        batching.decode_batch(b"SRB")
    erase = batching.encode_erase(3, {"user_id": "u1", "request_id": "r", "ts": 5})
    assert batching.is_erase(erase) and batching.frame_key(erase) == 3
    assert batching.decode_erase(erase) == {"user_id": "u1", "request_id": "r", "ts": 5}
    with pytest.raises(batching.FrameError):
        batching.decode_batch(erase)


def test_shards_spread_users() -> None:
    n = 8
    counts = [0] * n
    for i in range(8000):
        counts[batching.shard_of(f"user-{i}", n)] += 1
    assert min(counts) > 800 and max(counts) < 1200
    assert batching.shard_key("user-1", [10, 20, 30]) in (10, 20, 30)


def test_java_and_python_agree(tmp_path: Path) -> None:
    """User id extraction, shard of every id, the shard key table spread over key groups, the batch frame and the
    output splitter: what the JVM does must match what the Python operators expect."""
    from streamrec.services import maven
    from streamrec.services.settings import services

    flink = sorted(maven.fetch(services().state_path, "flink").glob("*.jar"))
    jar = maven.job_jar(tmp_path, flink)
    dist = maven.pyflink_jars()
    users = ["u1", "user-42", "é-ü-用户", "x" * 256, "emoji-😀", 'quote"and\\slash']
    raws = [json.dumps({"event_id": "e", "user_id": u, "item_id": "i", "context": {"user_id": "nested"}}).encode()
            for u in users]  # fmt: skip
    raws += [json.dumps({"user_id": u}, ensure_ascii=False).encode() for u in users]
    raws += [b"not json", b'{"user_id": 5}', b"[1]", b'{"x": {"user_id": "deep"}}']
    cp = os.pathsep.join(str(p) for p in [jar, *dist, *flink])
    proc = subprocess.run([maven.java(), "-cp", cp, str(HERE / "java" / "ShardCheck.java"), "8", "128"],
                          input="\n".join(r.hex() for r in raws), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    table = {ln.split()[0]: [tuple(int(v) for v in x.split(":")) for x in ln.split()[1:]]
             for ln in lines if ln.startswith(("keys ", "legacy "))}
    keys = [k for k, _, _ in table["keys"]]
    assert len(set(keys)) == 8
    # Shard i in key group (2i + 1) * 128 / 16 both as the batcher keys it (Integer) and as the Python operators do
    # (Row(key)): every parallelism dividing 8 gets an equal share of the shards in both.
    assert [(ig, rg) for _, ig, rg in table["keys"]] == [((2 * i + 1) * 8, (2 * i + 1) * 8) for i in range(8)]
    for p in (1, 2, 4, 8):
        per_subtask = Counter(rg * p // 128 for _, _, rg in table["keys"])  # Flink's operator index of a key group
        assert sorted(per_subtask.values()) == [8 // p] * p, (p, per_subtask)
    # The legacy table (state written before 2026-12-03) placed the Integer only: 5 + 3 shards at parallelism 2.
    assert [ig for _, ig, _ in table["legacy"]] == [(2 * i + 1) * 8 for i in range(8)]
    assert sorted(Counter(rg * 2 // 128 for _, _, rg in table["legacy"]).values()) == [3, 5]
    checks = dict(ln[len("mismatch "):].split(" -> ") for ln in lines if ln.startswith("mismatch "))
    assert checks["[1, 2] | [1, 2]"] == "null"  # restored with the table it was written with
    assert checks[" | [9, 8]"] == "null"  # nothing recorded: written before tables were, with the legacy table
    assert checks["[1, 2];[1, 2] | [1, 2]"] == "null"  # one copy per subtask (union state)
    for wrong in (" | [1, 2]", "[9, 8] | [1, 2]", "[1, 2];[7] | [1, 2]"):
        assert "restore it with the batching.shards and batching.key_table" in checks[wrong], wrong
    assert "keyed by shard keys [9, 8], this job by [1, 2]" in checks[" | [1, 2]"]
    got = [ln.split() for ln in lines[1:] if ln.startswith("user ")]
    expect = [*users, *users, None, None, None, None]
    for (_, uhex, shard), want in zip(got, expect, strict=True):
        if want is None:
            assert uhex == "-" and shard == "-"
        else:
            assert bytes.fromhex(uhex).decode() == want
            assert int(shard) == batching.shard_of(want, 8)
    frame = bytes.fromhex(next(ln for ln in lines if ln.startswith("frame ")).split()[1])
    assert batching.frame_key(frame) == 7 and batching.decode_batch(frame) == raws
    split = next(ln for ln in lines if ln.startswith("split "))
    assert split == "split 3 " + "|".join(["a\\nb", "k\\n", "c"])
    assert batching.join_records(["a\nb", "k\n", "c"]) == "a\nb\x1ek\n\x1ec"


def test_cf_batches_parse_into_updates_and_dead_letters() -> None:
    """The CF topic's records reach ParseCf as one batch frame (`recommend.batch_cf`): every neighbour list becomes
    a `CfUpdate`, in order, and every other record a dead letter naming the topic, nothing dropped."""
    from jobs.functions import ParseCf
    from operators.cf import CfUpdate, parse_records

    good = [CfUpdate("i1", ((7, 2.0), (9, 1.0)), 100), CfUpdate("i2", ((7, 0.5),), 120)]
    raw = [json.dumps(good[0].to_dict()).encode(), b"{not json", json.dumps(good[1].to_dict()).encode(),
           b'{"kind": "cf_neighbours", "item_id": "i3"}', b"\xff\xfe"]  # fmt: skip
    updates, dead = parse_records(raw, "g-cf")
    assert updates == tuple(good)
    assert [json.loads(d)["source"] for d in dead] == ["g-cf"] * 3
    assert [json.loads(d)["reason"] for d in dead] == [json.loads(dead[0])["reason"]] * 3
    # weights JSON can carry but no publication has: infinite (Python's json reads `Infinity`), NaN, negative
    odd = [b'{"kind": "cf_neighbours", "item_id": "i4", "ts": 1, "preds": [[7, %s]]}' % w
           for w in (b"Infinity", b"NaN", b"-1.0")]
    none, dead = parse_records(odd, "g-cf")
    assert none == () and len(dead) == 3 and all("bad predecessor" in json.loads(d)["message"] for d in dead)

    out = list(ParseCf("g-cf", patches=False).process_element((0, batching.encode_batch(0, raw)), None))
    assert out[0] == tuple(good)
    assert out[1][1].count(batching.SEP) == 2  # the three dead letters, one record for the JVM to split
