"""Mean (and spread) over seeds of `streamrec evaluate --json` outputs, as a markdown table for RESULTS.md.

Usage: python -m model_export.report eval-s0.json eval-s1.json eval-s2.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("model", "model_int8", "mostpop", "itemknn")


def table(runs: Sequence[dict[str, Any]], k: int = 10) -> str:
    """Markdown table: method x (full, sampled) x (HR, NDCG), mean ± sample std over runs."""
    cols = [(p, m) for p in ("full", "sampled") for m in (f"hr@{k}", f"ndcg@{k}")]
    lines = ["| method | " + " | ".join(f"{p} {m}" for p, m in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for meth in METHODS:
        cells = []
        for p, m in cols:
            v = np.array([r[meth][p][m] for r in runs])
            sd = f" ± {v.std(ddof=1):.4f}" if len(v) > 1 else ""
            cells.append(f"{v.mean():.4f}{sd}")
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    ratio = np.mean([r["model"]["full"][f"ndcg@{k}"] for r in runs]) / np.mean(
        [r["itemknn"]["full"][f"ndcg@{k}"] for r in runs]
    )
    lines.append(f"\nmodel / itemknn full NDCG@{k}: {ratio:.3f}x over {len(runs)} run(s)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m model_export.report EVAL.json [EVAL.json ...]", file=sys.stderr)
        return 2
    try:
        runs = [json.loads(Path(p).read_text()) for p in paths]
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
