"""`python -m udon_fast.evaluate`: runs udon_fast.commands.evaluate."""

import sys

from .commands import run

if __name__ == "__main__":
    sys.exit(run("evaluate", "udon_fast.evaluate"))
