"""`python -m udon_fast.data`: runs udon_fast.commands.data."""

import sys

from ..commands import run

if __name__ == "__main__":
    sys.exit(run("data", "udon_fast.data"))
