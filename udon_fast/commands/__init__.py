"""The command lines, one module per command, each with its parser and `main(argv) -> int`: train, evaluate,
embed, index, search, export, ablate, serve, data and info; `cli` is the convention they share (flags,
help, exit codes, the one error wrapper).  Commands import the library; the library never imports them.
`python -m udon_fast.<command>` runs `udon_fast.commands.<command>` through a thin alias module."""

import importlib
import sys

from ..errors import EXIT_USAGE
from ..extras import MissingExtraError


def run(command: str, prog: str) -> int:
    """What `python -m PROG` runs: import `udon_fast.commands.<command>` and return its `main()`'s exit code.
    A command whose modules need an optional package that is not installed stops with one line naming the
    extra to install (exit 2) instead of an import traceback."""
    try:
        module = importlib.import_module(f"{__name__}.{command}")
    except MissingExtraError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return module.main()
