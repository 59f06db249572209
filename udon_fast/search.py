"""`python -m udon_fast.search`: runs udon_fast.commands.search."""

import sys

from .commands import run

if __name__ == "__main__":
    sys.exit(run("search", "udon_fast.search"))
