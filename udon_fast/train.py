"""`python -m udon_fast.train`: runs udon_fast.commands.train."""
import sys

from .commands.train import main

if __name__ == "__main__":
    sys.exit(main())
