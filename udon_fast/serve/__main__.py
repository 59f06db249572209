"""`python -m udon_fast.serve`: runs udon_fast.commands.serve."""

import sys

from ..commands import run

if __name__ == "__main__":
    sys.exit(run("serve", "udon_fast.serve"))
