"""`python -m udon_fast.index`: runs udon_fast.commands.index."""
import sys

from .commands.index import main

if __name__ == "__main__":
    sys.exit(main())
