"""Run a command by name: ``scripts/<command>.py`` and the ``dogbreed`` console script."""

from __future__ import annotations

import importlib
import sys

from dogbreed_scripts import settings

COMMANDS = ("data", "push", "tune", "train", "deploy", "invoke", "cleanup", "demo", "soak")
# demo and soak print their own errors; the AWS steps turn known ones into one line.
# Every command stops on SIGTERM as on Ctrl-C (settings.run).
OWN_ERRORS = ("demo", "soak")


def run(command: str, argv: list[str] | None = None) -> None:
    """Run `command`'s main() with `argv` (default: sys.argv[1:]) and exit with its code."""
    main = importlib.import_module(f"dogbreed_scripts.{command}").main
    settings.run(main, argv, own_errors=command in OWN_ERRORS)


def main() -> None:
    """``dogbreed COMMAND [OPTIONS]``: the same as ``scripts/COMMAND.py [OPTIONS]``."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: dogbreed {{{','.join(COMMANDS)}}} [--help | OPTIONS]", file=sys.stderr)
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    command, argv = sys.argv[1], sys.argv[2:]
    sys.argv = [f"dogbreed {command}", *argv]  # argparse's prog in usage lines
    run(command, argv)
