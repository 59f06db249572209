"""Checks of arguments shared by the library and the command lines (`check_positive` names flags)."""

from typing import Any

import numpy as np

from .errors import InputError


def positive_int(value: Any, name: str) -> int:
    """`value` as an int when it is an integer (Python or NumPy, not bool) >= 1; else InputError (a
    ValueError) naming `name`: an argument, or a flag (`check_positive`)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise InputError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise InputError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def check_positive(args: Any, *names: str) -> None:
    """Raise InputError naming the flag when one of the integer options `names` of `args` (parsed
    arguments or a config object) is below 1 (`checks.positive_int`)."""
    for name in names:
        positive_int(getattr(args, name), f"--{name.replace('_', '-')}")
