"""`python -m udon_fast.index`: runs udon_fast.commands.index."""

import sys

from .commands import run

if __name__ == "__main__":
    sys.exit(run("index", "udon_fast.index"))
