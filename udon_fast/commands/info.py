"""`python -m udon_fast.info`: versions and which accelerated paths are usable on this machine."""

import importlib
import os
import platform
import sys

import torch

from ..losses import backends
from .cli import command_parser


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except ImportError as exc:
        return f"not importable ({exc})"


def _faiss_line() -> str:
    try:
        import faiss
    except ImportError as exc:
        return f"not importable ({exc})"
    gpus = faiss.get_num_gpus()
    return f"{faiss.__version__} ({'GPU index on ' + str(gpus) + ' GPU(s)' if gpus else 'CPU indexes only'})"


def _dali_line() -> str:
    try:
        import nvidia.dali as dali
    except ImportError as exc:
        return f"not importable ({exc})"
    mode = "mixed (GPU) decode" if torch.cuda.is_available() else "CPU pipelines (device_id=None)"
    return f"{dali.__version__} ({mode})"


def report() -> list[tuple[str, str]]:
    """(item, value) rows of the availability table."""
    from .. import __version__

    cuda = f"yes: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if torch.cuda.is_available() else "no"
    rows = [
        ("udon_fast", __version__),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("CUDA device", cuda),
        ("CPU threads", str(torch.get_num_threads())),
        ("triton", _version("triton")),
        ("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset")),
        ("DALI", _dali_line()),
        ("faiss", _faiss_line()),
        ("timm", _version("timm")),
    ]
    for name, (ok, reason) in backends.status().items():
        rows.append((f"loss backend {name}", f"{'available' if ok else 'unavailable'}: {reason}"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows.append((f"backend='auto' on {device}", backends.auto_backend(device)))
    return rows


def build_parser():
    return command_parser("python -m udon_fast.info", __doc__)


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit code 0 (docs/cli.md)."""
    build_parser().parse_args(argv)
    rows = report()
    width = max(len(item) for item, _ in rows)
    for item, value in rows:
        print(f"{item:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
