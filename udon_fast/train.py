"""`python -m udon_fast.train`: runs udon_fast.commands.train."""

import sys

from .commands import run

if __name__ == "__main__":
    sys.exit(run("train", "udon_fast.train"))
