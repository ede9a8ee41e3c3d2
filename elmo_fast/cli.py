"""The `elmo-fast` command. Each workflow module contributes one subcommand via `add_parser(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

# module -> owner of a subcommand; each defines add_parser(subparsers) and sets func=...
SUBCOMMANDS = ("elmo_fast.train.cli", "elmo_fast.classify.cli", "elmo_fast.embed", "elmo_fast.demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elmo-fast", description="Train, export and use ELMo (elmo_fast).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # Only a workflow that is not installed is skipped; a broken import inside one is an error.
            if not (e.name == name or name.startswith(e.name + ".")):
                raise
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ._backend import BackendUnavailableError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    # user errors: one clear line, no traceback (a bad path, a bad value, a backend not available here)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError, ValueError,
            BackendUnavailableError) as e:
        print(f"elmo-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
