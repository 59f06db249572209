"""`python -m udon_fast.data`: runs udon_fast.commands.data."""
import sys

from ..commands.data import main

if __name__ == "__main__":
    sys.exit(main())
