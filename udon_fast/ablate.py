"""`python -m udon_fast.ablate`: runs udon_fast.commands.ablate."""
import sys

from .commands.ablate import main

if __name__ == "__main__":
    sys.exit(main())
