"""`streamrec`: the one console command. Each area registers its subcommands in `COMMAND_MODULES`.

A command module exposes `register(subparsers)`, which adds its parsers and sets `func` on each; `func(args)`
returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that add subcommands. Add one line per area; keep imports inside the modules' functions cheap
# (torch, pyflink) so `streamrec --help` stays fast.
COMMAND_MODULES: tuple[str, ...] = (
    "streamrec.services.cli",
    "model_export.cli",
    "streamrec.data.cli",
    "streamrec.jobcli",
    "streamrec.demo",
    "streamrec.replay",
    "streamrec.control",
    "streamrec.bench.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrec",
        description="Real-time recommendations and fraud flags on Apache Flink (PyFlink).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
