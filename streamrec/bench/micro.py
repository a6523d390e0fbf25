"""Offline measurements (no Flink): scorer micro-benchmarks, per-event logic vs catalogue size, state growth with the
number of users, and the per-event profile (parsing, state, model, sinks).

All of them run the product's own code: `operators.scorer.Scorer`, and the plain consumer's `EventHandler` (which
calls `parse_event`, `UserOperator.step` / `on_timer`, `ItemOperator.step` exactly as the job's functions do).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.config import REPO_ROOT

BENCH_PSEUDONYM_KEY = b"streamrec-bench-key-not-a-secret"

# ---------------------------------------------------------------------------------------------- scorer


def _requests(art: Any, batch: int, history: int, rng: np.random.Generator) -> list[Any]:
    """`batch` requests shaped like the operator's: `history` known items, consumed items excluded, the static
    business mask as `extra_exclude`."""
    from operators.scorer import ScoreRequest

    mask = np.zeros(art.n_items, dtype=bool)
    out = []
    for _ in range(batch):
        items = rng.integers(0, art.n_items, history).tolist()
        ts = (1_704_067_200_000 + np.cumsum(rng.integers(1_000, 3_600_000, history))).tolist()
        out.append(ScoreRequest(items, rng.integers(1, 6, history).tolist(), ts, sorted(set(items)),
                                extra_exclude=mask))  # fmt: skip
    return out


GRAPHS = ("topk", "full")  # scorer_grid cells' "graph": model.topk.onnx (serves every list), model.onnx (+ log-probs)


def scorer_grid(models: list[tuple[str, Path]], batches: tuple[int, ...], seconds: float, history: int,
                max_gb: float, say: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    """µs per scored event through `Scorer.score` (inputs built, graph run, outputs split), onnxruntime 1 thread,
    for each graph: "topk" (`need_logprob=False`, the fast graph: what every list costs) and "full"
    (`need_logprob=True`, the full graph: what a list the surprise detector judges costs). For each (model,
    precision, batch) the "topk" cell comes first.

    A cell whose float32 intermediates ((B, L, N) for the full graph, which scores every position for next-item
    log-probs; (B, N) for the fast one) would need more than `max_gb` is skipped and says so, and so is a "topk" cell
    of an artefact without the fast graph."""
    from model_export.artifact import load_artifact
    from operators.scorer import Scorer

    rows: list[dict[str, Any]] = []
    for label, path in models:
        art = load_artifact(path, verify=False)
        for int8 in (False, True):
            scorer = Scorer(art, int8=int8, threads=1)
            for graph in GRAPHS:
                full = graph == "full"
                for b in batches:
                    est_gb = b * (history if full else 1) * art.n_items * 4 * (2.5 if full else 4) / 1e9
                    row: dict[str, Any] = {"model": label, "n_items": art.n_items, "graph": graph,
                                           "precision": "int8" if int8 else "fp32", "batch": b,
                                           "history": history}  # fmt: skip
                    if not full and scorer.topk_session is None:
                        row.update(us_per_event=None, skipped="artefact has no fast graph (model.topk.onnx)")
                        rows.append(row)
                        continue
                    if est_gb > max_gb:
                        shape = "(B, L, N)" if full else "(B, N)"
                        row.update(us_per_event=None, skipped=f"needs ~{est_gb:.1f} GB of {shape} intermediates "
                                                              f"(limit {max_gb} GB: --scorer-max-gb)")  # fmt: skip
                        rows.append(row)
                        continue
                    row.update(_time_score(scorer, _requests(art, b, history, np.random.default_rng(b)), full,
                                           seconds))  # fmt: skip
                    rows.append(row)
                    say(f"    {label:>10} {graph:>4} {row['precision']} batch {b:>3}: "
                        f"{row['us_per_event']:>9,.1f} µs/event")  # fmt: skip
            del scorer
            gc.collect()
    return rows


def _time_score(scorer: Any, reqs: list[Any], need_logprob: bool, seconds: float) -> dict[str, Any]:
    """Median time of `scorer.score(reqs, need_logprob)` over at least 3 calls and about `seconds`."""
    b = len(reqs)
    scorer.score(reqs, need_logprob=need_logprob)  # warm-up (allocations, kernels)
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        scorer.score(reqs, need_logprob=need_logprob)
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and sum(times) > 4 * seconds:
            break
    per_call = float(np.median(times))
    return {"us_per_event": round(per_call / b * 1e6, 1), "ms_per_call": round(per_call * 1e3, 2),
            "calls": len(times)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- per-event logic


def make_handler(model_dir: Path, operators_conf: str = "operators.yaml", stopwatch: Any = None,
                 int8: bool = False) -> Any:  # fmt: skip
    """The consumer's `EventHandler` over an artefact (onnxruntime 1 thread, the bench pseudonym key; the scorer's
    call shaping from the operators config, as the job and the consumer build it)."""
    from model_export.artifact import load_artifact
    from operators.config import load_operators_conf
    from operators.item import ItemOperator
    from operators.privacy import Pseudonymizer
    from operators.scorer import Scorer
    from operators.user import UserOperator
    from streamrec.bench.consumer import EventHandler

    conf = load_operators_conf(operators_conf)
    art = load_artifact(model_dir, verify=False)
    scorer = Scorer.from_conf(art, conf.scorer, int8=int8, threads=1)
    op = UserOperator(art, conf, Pseudonymizer(BENCH_PSEUDONYM_KEY, "bench"), scorer)
    return EventHandler(op, ItemOperator(conf), "bench-events", 5000, stopwatch)


def run_handler(handler: Any, stream: list[tuple[bytes, bytes | None, int]], max_events: int, seconds: float,
                emit: Callable[[Any], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Feed `stream` (at most `max_events`, at most `seconds`) through `handler`; events/s."""
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    deadline = t0 + seconds
    for payload, _k, ts in stream[:max_events]:
        out = handler.handle(payload, ts)
        if emit is not None:
            emit(out)
        n += 1
        if n % 64 == 0 and time.perf_counter() > deadline:
            break
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    # cpu_share < 1: this process waited for a core (a busy machine), so its wall times are inflated
    return {"events": n, "seconds": round(dt, 2), "events_per_s": round(n / max(dt, 1e-9), 1),
            "cpu_seconds": round(cpu, 2), "cpu_share": round(cpu / max(dt, 1e-9), 2)}  # fmt: skip


def catalogue_throughput(models: list[tuple[str, Path]], stream: list[tuple[bytes, bytes | None, int]],
                         max_events: int, seconds: float, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per-event logic (parse, user + item operators, timers, JSON; no sinks) on the same stream, one model per
    catalogue size. `model_calls` counts onnxruntime runs, `model_calls_full` those of the full graph (lists the
    surprise detector judges, its extra calls; every call on an artefact without the fast graph)."""
    rows = []
    for label, path in models:
        h = make_handler(path)
        calls = _count_model_calls(h)
        r = run_handler(h, stream, max_events, seconds)
        r["new_item_us"] = new_item_cost(h.user_op)
        r.update(model=label, n_items=h.user_op.n_items, model_calls=calls["n"],
                 model_calls_per_event=round(calls["n"] / max(r["events"], 1), 3), model_calls_full=calls["full"],
                 model_calls_full_per_event=round(calls["full"] / max(r["events"], 1), 3))  # fmt: skip
        rows.append(r)
        say(f"    {label:>10}: {r['events_per_s']:>8,.1f} events/s ({r['events']:,} events, "
            f"{r['model_calls_per_event']:.2f} model calls/event, {r['model_calls_full_per_event']:.3f} full graph; "
            f"a new stream item {r['new_item_us']:,.0f} µs)")
        del h
        gc.collect()
    return rows


def new_item_cost(user_op: Any, items: int = 2000) -> float:
    """µs per item the model never saw becoming a stream item in the user operator (`apply_cf` of a first CF
    publication: a new index, a row of every item array), over `items` new items in a row: what a catalogue that
    grows in the stream costs the operator, per new item (an embedded one takes the same path, after its projection)."""
    from operators.cf import CfUpdate
    from operators.state import item_hash

    known = [item_hash(user_op.item_ids[i]) for i in range(min(200, user_op.n_items))]
    t0 = time.perf_counter()
    for n in range(items):
        preds = tuple((known[(7 * n + k) % len(known)], 1.0 / (k + 1)) for k in range(5))
        user_op.apply_cf(CfUpdate(f"bench-new-item-{n}", preds, 1_700_000_000_000 + n))
    return round((time.perf_counter() - t0) / items * 1e6, 1)


def _count_model_calls(handler: Any) -> dict[str, int]:
    """Count onnxruntime runs of the handler's scorer: "n" all of them, "full" those of the full graph."""
    calls = {"n": 0, "full": 0}

    class Counting:
        def __init__(self, sess: Any, full: bool) -> None:
            self.sess, self.full = sess, full

        def run(self, *a: Any, **k: Any) -> Any:
            calls["n"] += 1
            calls["full"] += self.full
            return self.sess.run(*a, **k)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.sess, name)

    scorer = handler.user_op.scorer
    scorer.session = Counting(scorer.session, True)
    if getattr(scorer, "topk_session", None) is not None:
        scorer.topk_session = Counting(scorer.topk_session, False)
    return calls


# ---------------------------------------------------------------------------------------------- profile


@contextlib.contextmanager
def instrument(handler: Any, sw: Any) -> Iterator[None]:
    """Time the stages inside `UserOperator` (state codec, onnxruntime, scorer I/O, re-ranking, fallback, fraud
    detectors) by wrapping the module-level names it calls; restored on exit. Names that do not exist (the operators
    are being changed) are skipped."""
    import operators.fraud as fraud_mod
    import operators.user as user_mod

    patched: list[tuple[Any, str, Any]] = []

    def wrap(mod: Any, name: str, stage: str) -> None:
        real = getattr(mod, name, None)
        if real is None:
            return

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                sw.add(stage, time.perf_counter() - t0)

        patched.append((mod, name, real))
        setattr(mod, name, timed)

    wrap(user_mod, "decode", "state_decode")
    wrap(user_mod, "encode", "state_encode")
    wrap(user_mod, "mmr", "rerank_mmr_diversity")
    wrap(user_mod, "intra_list_diversity", "rerank_mmr_diversity")
    wrap(user_mod, "knn_candidates", "cold_start_fallback")
    for name in ("velocity", "regularity", "rating_anomaly", "surprise"):
        wrap(fraud_mod, name, "fraud_detectors")
    scorer = handler.user_op.scorer
    real_score, sess, topk_sess = scorer.score, scorer.session, getattr(scorer, "topk_session", None)

    def score(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real_score(*a, **k)
        finally:
            sw.add("model_total", time.perf_counter() - t0)

    class TimedSession:  # both graphs' runs count as "model_onnxruntime_run"
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def run(self, *a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return self.inner.run(*a, **k)
            finally:
                sw.add("model_onnxruntime_run", time.perf_counter() - t0)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    scorer.score, scorer.session = score, TimedSession(sess)
    if topk_sess is not None:
        scorer.topk_session = TimedSession(topk_sess)
    try:
        yield
    finally:
        for mod, name, real in reversed(patched):
            setattr(mod, name, real)
        scorer.score, scorer.session = real_score, sess
        if topk_sess is not None:
            scorer.topk_session = topk_sess


def profile_breakdown(seconds: dict[str, float], events: int) -> list[dict[str, Any]]:
    """Exclusive stages in µs per input event from a Stopwatch's totals (nested stages subtracted from their
    parents), largest first, with shares of the total."""
    s = dict(seconds)
    inner_user = ("state_decode", "state_encode", "model_total", "rerank_mmr_diversity", "cold_start_fallback",
                  "fraud_detectors")  # fmt: skip
    user_total = s.get("user_operator", 0.0) + s.get("user_timer", 0.0)
    split = any(k in s for k in inner_user)
    rest = ("user operator: rest (update, dedup, hashing, pseudonym, records)" if split else
            "user operator (state codec, model, re-rank, detectors: not split in these processes)")
    rows = {
        "parse + validate (parse_event)": s.get("parse", 0.0),
        "state decode": s.get("state_decode", 0.0),
        "state encode": s.get("state_encode", 0.0),
        "model: onnxruntime run": s.get("model_onnxruntime_run", 0.0),
        "model: inputs/outputs (Scorer)": s.get("model_total", 0.0) - s.get("model_onnxruntime_run", 0.0),
        "re-rank: MMR + diversity": s.get("rerank_mmr_diversity", 0.0),
        "cold-start fallback (item-KNN, popular)": s.get("cold_start_fallback", 0.0),
        "fraud detectors (user)": s.get("fraud_detectors", 0.0),
        rest: user_total - sum(s.get(k, 0.0) for k in inner_user),
        "item operator": s.get("item_operator", 0.0),
        "JSON serialisation": s.get("json", 0.0),
        "Kafka send (kafka-python)": s.get("kafka_send", 0.0),
        "Cassandra write (CassandraWriter)": s.get("cassandra_write", 0.0),
        "flush outputs + commit offsets": sum(s.get(k, 0.0) for k in ("flush_kafka", "flush_cassandra", "commit")),
        "Kafka poll": s.get("poll", 0.0),
    }  # fmt: skip
    total = sum(max(v, 0.0) for v in rows.values())
    out = [{"stage": k, "us_per_event": round(max(v, 0.0) / max(events, 1) * 1e6, 1),
            "share": round(max(v, 0.0) / total, 4) if total else 0.0}
           for k, v in rows.items() if v / max(events, 1) * 1e6 >= 0.05]  # fmt: skip
    return sorted(out, key=lambda r: -r["us_per_event"])


def profile_run(model_dir: Path, stream: list[tuple[bytes, bytes | None, int]], max_events: int, seconds: float,
                sinks: Any | None) -> dict[str, Any]:  # fmt: skip
    """The consumer's per-event path in this process over `stream`, every stage timed, outputs sent to real
    `sinks` (a `consumer.Sinks`) when given; flushed at the end like a commit."""
    from streamrec.bench.consumer import Stopwatch

    sw = Stopwatch()
    h = make_handler(model_dir, stopwatch=sw)
    if sinks is not None:
        sinks.sw = sw
    with instrument(h, sw):
        r = run_handler(h, stream, max_events, seconds, emit=sinks.emit if sinks is not None else None)
        if sinks is not None:
            t0 = time.perf_counter()
            sinks.flush()
            r["final_flush_s"] = round(time.perf_counter() - t0, 3)
    r["stages"] = profile_breakdown(sw.seconds, r["events"])
    r["stage_seconds"] = dict(sw.seconds)
    r["users"] = len(h.user_states)
    r["state_sizes"] = sorted(len(v) for v in h.user_states.values())
    return r


# ---------------------------------------------------------------------------------------------- state growth


def state_templates(model_dir: Path, stream: list[tuple[bytes, bytes | None, int]], max_events: int,
                    seconds: float) -> tuple[list[bytes], dict[str, Any]]:  # fmt: skip
    """Real user states: the per-event logic over a simulated stream; (states, run summary)."""
    h = make_handler(model_dir)
    r = run_handler(h, stream, max_events, seconds)
    r["users"] = len(h.user_states)
    return list(h.user_states.values()), r


def size_stats(sizes: list[int]) -> dict[str, Any]:
    a = np.asarray(sizes, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": int(a.size), "p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(a.max()),
            "mean": round(float(a.mean()), 1)}  # fmt: skip


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def build_states(templates: list[bytes], n_users: int, seed: int = 0, verify: int = 200) -> dict[str, bytes]:
    """`n_users` states in the operator's codec: each a real state (drawn at random from `templates`, so sizes follow
    the simulated distribution) with its own user id and pseudonym.

    The pseudonym is the codec's last-but-one field, so a state with a new one is the template's bytes with that
    field replaced; the first `verify` are checked against `encode` of the decoded template with the new pseudonym
    (byte for byte), and every template must decode."""
    import copy

    from operators.privacy import Pseudonymizer
    from operators.state import decode, encode

    rng = np.random.default_rng(seed)
    parts: list[tuple[Any, bytes, bytes, int]] = []
    for t in templates:
        st = decode(t)
        tail = st.user_key.encode() + st.key_id.encode()
        if not t.endswith(tail):
            raise ValueError("state layout changed: the pseudonym is no longer the last-but-one field")
        parts.append((st, t[: len(t) - len(tail)], st.key_id.encode(), len(st.user_key)))
    pseud = Pseudonymizer(BENCH_PSEUDONYM_KEY, "bench")
    pick = rng.integers(0, len(parts), n_users)
    out: dict[str, bytes] = {}
    for i in range(n_users):
        st, head, kid, n_key = parts[int(pick[i])]
        uid = f"u{i:08d}"
        key = pseud.pseudonym(uid)
        if len(key) != n_key:  # a template without a pseudonym: the codec itself
            s2 = copy.copy(st)
            s2.user_key = key
            out[uid] = encode(s2)
            continue
        b = head + key.encode() + kid
        if i < verify:
            s2 = copy.copy(st)
            s2.user_key = key
            if encode(s2) != b:
                raise AssertionError("spliced state differs from the codec's encoding")
        out[uid] = b
    return out


def rss_child(templates_file: Path, n_users: int) -> dict[str, Any]:
    """(In a fresh process.) Memory of a process holding the dict of `n_users` states: RSS after − before."""
    templates = pickle.loads(templates_file.read_bytes())
    import operators.privacy  # noqa: F401 - imported before the baseline, like the states' own code
    import operators.state  # noqa: F401

    gc.collect()
    before = _rss_kb()
    t0 = time.perf_counter()
    states = build_states(templates, n_users)
    build_s = time.perf_counter() - t0
    gc.collect()
    after = _rss_kb()
    payload = sum(map(len, states.values()))
    sizes = [len(v) for v in states.values()]
    return {"users": n_users, "rss_before_mb": round(before / 1024, 1), "rss_after_mb": round(after / 1024, 1),
            "rss_bytes_per_user": round((after - before) * 1024 / n_users, 1),
            "payload_bytes": payload, "payload_bytes_per_user": round(payload / n_users, 1),
            "state_bytes": size_stats(sizes), "build_seconds": round(build_s, 1)}  # fmt: skip


def growth(templates: list[bytes], users: tuple[int, ...], work_dir: Path, say: Callable[[str], None],
           timeout_s: float = 900) -> list[dict[str, Any]]:  # fmt: skip
    """`rss_child` for each user count, each in its own process (a clean RSS baseline)."""
    f = work_dir / "state-templates.pkl"
    f.write_bytes(pickle.dumps(templates))
    rows = []
    for n in users:
        proc = subprocess.run([sys.executable, "-m", "streamrec.bench.micro", "rss", str(f), str(n)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
        if proc.returncode != 0:
            rows.append({"users": n, "error": proc.stderr[-1500:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        rss = row["rss_after_mb"] - row["rss_before_mb"]
        say(f"    {n:>9,} users: state payload {row['payload_bytes'] / 2**20:8.1f} MB "
            f"({row['payload_bytes_per_user']:.0f} B/user), process RSS +{rss:.0f} MB "
            f"({row['rss_bytes_per_user']:.0f} B/user), built in {row['build_seconds']} s")
    f.unlink(missing_ok=True)
    return rows


def scorer_rss_child(model_dir: Path, int8: bool, share_tables: bool) -> dict[str, Any]:
    """(In a fresh process.) Memory of one `Scorer` (both graphs' sessions) over an artefact: RSS after − before,
    the artefact's numpy tables and the onnxruntime and onnx imports already in the baseline (the job imports onnx
    when it verifies the artefact's weights: `load_artifact(verify=True)`)."""
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401 - the libraries themselves are not the scorer's memory

    from model_export.artifact import load_artifact
    from operators.scorer import Scorer

    art = load_artifact(model_dir, verify=False)
    gc.collect()
    before = _rss_kb()
    t0 = time.perf_counter()
    scorer = Scorer(art, int8=int8, threads=1, share_tables=share_tables)
    load_s = time.perf_counter() - t0
    gc.collect()
    after = _rss_kb()
    scorer.score(_requests(art, 1, 50, np.random.default_rng(0)))  # both sessions usable
    scorer.score(_requests(art, 1, 50, np.random.default_rng(1)), need_logprob=True)
    return {"rss_mb": round((after - before) / 1024, 1), "load_s": round(load_s, 2)}


def scorer_memory(models: list[tuple[str, Path]], say: Callable[[str], None],
                  timeout_s: float = 600) -> list[dict[str, Any]]:  # fmt: skip
    """`scorer_rss_child` per (model, precision), tables shared between the two sessions and not, side by side."""
    from model_export.artifact import load_artifact

    rows = []
    for label, path in models:
        art = load_artifact(path, verify=False)
        for int8 in (False, True):
            files = [art.int8_path if int8 else art.model_path, art.topk_int8_path if int8 else art.topk_path]
            row: dict[str, Any] = {"model": label, "n_items": art.n_items, "precision": "int8" if int8 else "fp32",
                                   "files_mb": round(sum(f.stat().st_size for f in files if f) / 2**20, 1)}
            for share in (True, False):
                proc = subprocess.run([sys.executable, "-m", "streamrec.bench.micro", "scorer-rss", str(path),
                                       "int8" if int8 else "fp32", "shared" if share else "separate"],
                                      cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
                key = "shared" if share else "separate"
                if proc.returncode != 0:
                    row[f"{key}_error"] = proc.stderr[-1500:]
                    continue
                got = json.loads(proc.stdout.strip().splitlines()[-1])
                row[f"{key}_rss_mb"], row[f"{key}_load_s"] = got["rss_mb"], got["load_s"]
            rows.append(row)
            say(f"    {label:>10} {row['precision']}: scorer RSS {row.get('shared_rss_mb')} MB with the tables "
                f"shared, {row.get('separate_rss_mb')} MB without (graph files {row['files_mb']} MB)")
        del art
        gc.collect()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "rss":
        print(json.dumps(rss_child(Path(args[1]), int(args[2]))))
        return 0
    if len(args) == 4 and args[0] == "scorer-rss" and args[2] in ("fp32", "int8") \
            and args[3] in ("shared", "separate"):
        print(json.dumps(scorer_rss_child(Path(args[1]), args[2] == "int8", args[3] == "shared")))
        return 0
    print("usage: python -m streamrec.bench.micro rss TEMPLATES_PICKLE N_USERS\n"
          "       python -m streamrec.bench.micro scorer-rss MODEL_DIR fp32|int8 shared|separate", file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
