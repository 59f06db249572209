"""`python -m udon_fast.ablation.replay`: runs udon_fast.commands.replay."""
import sys

from ..commands.replay import main

if __name__ == "__main__":
    sys.exit(main())
