"""`python -m udon_fast.evaluate`: runs udon_fast.commands.evaluate."""
import sys

from .commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
