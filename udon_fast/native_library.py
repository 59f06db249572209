"""Loads the native CPU library built by CMakeLists.txt (`udon_fast/_native*.so`), once."""

import functools
from pathlib import Path

import torch


def library_path() -> Path | None:
    """Path of the built library inside the package, or None when it was not built."""
    found = sorted(Path(__file__).parent.glob("_native*.so"))
    return found[0] if found else None


@functools.cache
def load() -> Path:
    """Load the library's torch.library ops (namespace `udon_fast_native`); return its path."""
    path = library_path()
    if path is None:
        raise RuntimeError(
            "udon_fast's native library is not built: reinstall with "
            "`pip install --no-build-isolation -e .` (needs cmake and a C++20 compiler)"
        )
    torch.ops.load_library(str(path))
    return path


def status() -> tuple[bool, str]:
    """(loaded, one-line description) for `python -m udon_fast.info`."""
    try:
        path = load()
    except (RuntimeError, OSError) as exc:
        return False, str(exc).splitlines()[0]
    return True, f"{path.name}: {torch.ops.udon_fast_native.build_info()}"
