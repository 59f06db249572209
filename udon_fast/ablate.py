"""`python -m udon_fast.ablate`: runs udon_fast.commands.ablate."""

import sys

from .commands import run

if __name__ == "__main__":
    sys.exit(run("ablate", "udon_fast.ablate"))
