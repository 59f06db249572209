"""`python -m udon_fast.ablation.replay`: runs udon_fast.commands.replay."""

import sys

from ..commands import run

if __name__ == "__main__":
    sys.exit(run("replay", "udon_fast.ablation.replay"))
