"""`python -m udon_fast.info`: runs udon_fast.commands.info."""

import sys

from .commands import run

if __name__ == "__main__":
    sys.exit(run("info", "udon_fast.info"))
