"""What every command line shares: one-line errors for bad sizes and counts."""
import argparse


def check_positive(args: argparse.Namespace | object, *names: str) -> None:
    """Raise ValueError naming the flag when one of the integer options `names` of `args` (parsed
    arguments or a config object) is below 1."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
