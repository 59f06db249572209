"""`python -m udon_fast.export`: runs udon_fast.commands.export."""
import sys

from .commands.export import main

if __name__ == "__main__":
    sys.exit(main())
