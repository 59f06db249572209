"""Checks of library arguments shared by several modules (the command-line flags: `cli.check_positive`)."""
from typing import Any

import numpy as np

from .errors import InputError


def positive_int(value: Any, name: str) -> int:
    """`value` as an int when it is an integer (Python or NumPy, not bool) >= 1; else InputError (a
    ValueError) naming the argument `name`."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return int(value)
