"""What every command line shares: one-line errors for bad sizes and counts, the pixel limit flag."""
import argparse

from .data.image_bytes import DEFAULT_MAX_PIXELS

MAX_PIXELS_HELP = (f"refuse images of more than this many pixels (width x height, read from the file header) on "
                   f"every path (training skips them, evaluation names them); default {DEFAULT_MAX_PIXELS:,}, "
                   f"PIL's decompression-bomb limit")


def check_positive(args: argparse.Namespace | object, *names: str) -> None:
    """Raise ValueError naming the flag when one of the integer options `names` of `args` (parsed
    arguments or a config object) is below 1."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """`--max-pixels N` (default `image_bytes.DEFAULT_MAX_PIXELS`); apply it with `image_bytes.set_max_pixels`."""
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help=MAX_PIXELS_HELP)
