"""`python -m udon_fast.embed`: runs udon_fast.commands.embed."""
import sys

from .commands.embed import main

if __name__ == "__main__":
    sys.exit(main())
