"""`python -m udon_fast.search`: runs udon_fast.commands.search."""
import sys

from .commands.search import main

if __name__ == "__main__":
    sys.exit(main())
