"""`streamrec`: the one console command. Each area registers its subcommands in `COMMAND_MODULES`.

A command module exposes `register(subparsers)`, which adds its parsers and sets `func` on each; `func(args)`
returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
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
    parser.add_argument("--services", default="", metavar="PROFILE",
                        help="services profile in conf/ (e.g. secure.yaml); sets STREAMREC_SERVICES_CONF for this "
                             "command and the processes it starts (default: $STREAMREC_SERVICES_CONF or services.yaml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def use_profile(name: str) -> None:
    """Select a services profile for this process and its children (the job, its Python workers, the bench)."""
    from streamrec import config
    from streamrec.services import settings

    if not (config.CONF_DIR / name).exists():
        raise SystemExit(f"no services profile {config.CONF_DIR / name}")
    os.environ[settings.PROFILE_ENV] = name
    settings.services.cache_clear()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.services:
        use_profile(args.services)
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
