"""`python -m udon_fast.info`: runs udon_fast.commands.info."""
import sys

from .commands.info import main

if __name__ == "__main__":
    sys.exit(main())
