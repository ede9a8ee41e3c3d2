"""The `elmo-fast` command. Each workflow module contributes one subcommand via `add_parser(subparsers)`.

Exit status: 0 on success; 2 for a usage error (argparse's, or a bad setting: `elmo_fast.utils.UsageError`);
1 for any other error, printed as one line (`--debug` prints the traceback instead). Warnings and
progress messages go through `logging` to stderr (`-q` keeps warnings and errors only).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module -> owner of a subcommand; each defines add_parser(subparsers) and sets func=...
SUBCOMMANDS = ("elmo_fast.train.cli", "elmo_fast.classify.cli", "elmo_fast.classify.predict", "elmo_fast.embed", "elmo_fast.demo")

log = logging.getLogger("elmo_fast")


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already names it or it has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or "default" in text.lower() or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS
                or not action.option_strings or isinstance(action, argparse._HelpAction)):
            return text
        return text + " (default: %(default)s)"


def _version() -> str:
    import torch

    from . import __version__

    return f"elmo-fast {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})"


class _VersionAction(argparse.Action):
    """--version, computed only when asked (it imports torch)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elmo-fast", description="Train, export and use ELMo (elmo_fast).",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action=_VersionAction, help="print the version (and torch's) and exit")
    parser.add_argument("--debug", action="store_true", help="debug logging, and a traceback on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)
    add = sub.add_parser

    def add_parser(*a, **kw):
        p = add(*a, **{"formatter_class": _HelpFormatter, **kw})
        # also accepted after the subcommand; SUPPRESS keeps the top-level value when not given here
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="as elmo-fast --debug")
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="as elmo-fast --quiet")
        return p

    sub.add_parser = add_parser
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


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("elmo-fast: %(levelname)s: %(message)s"))
    for name in ("elmo_fast", "py.warnings"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level)
        lg.propagate = False
    logging.captureWarnings(True)  # warnings.warn(...) of elmo_fast and torch reach the user through the same handler


def main(argv: list[str] | None = None) -> int:
    from .utils import UsageError

    args = build_parser().parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"elmo-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (the command line reports every failure as one line)
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, (OSError, ValueError, ImportError, RuntimeError)):
            msg = f"{type(e).__name__}: {msg} (run with --debug for the traceback)"
        print(f"elmo-fast {args.command}: error: {msg}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    finally:
        logging.captureWarnings(False)


if __name__ == "__main__":
    sys.exit(main())
