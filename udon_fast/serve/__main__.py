"""`python -m udon_fast.serve`: runs udon_fast.commands.serve."""
import sys

from ..commands.serve import main

if __name__ == "__main__":
    sys.exit(main())
