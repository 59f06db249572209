"""`python -m udon_fast.embed`: runs udon_fast.commands.embed."""

import sys

from .commands import run

if __name__ == "__main__":
    sys.exit(run("embed", "udon_fast.embed"))
