"""`python -m udon_fast.export`: runs udon_fast.commands.export."""

import sys

from .commands import run

if __name__ == "__main__":
    sys.exit(run("export", "udon_fast.export"))
