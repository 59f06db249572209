"""Optional dependencies: which extra of setup.py installs them, and the error when one is missing.

`pip install udon_fast` installs the core: the losses, the native kernel, the sampler and the kNN
metrics (torch, numpy, faiss-cpu).  Everything else comes with an extra:

    train   the trainer and the commands that run a model on images: DALI, timm, torchvision,
            the packaged EfficientNet-Lite0 weights, pillow, scikit-image, matplotlib, tqdm,
            pyyaml, jinja2, tensorboard
    serve   [train] + fastapi, uvicorn, python-multipart (`python -m udon_fast.serve`)
    export  [train] + onnx, onnxscript, onnxruntime (`python -m udon_fast.export`)

Every import of an optional package sits inside `needs_extra`:

    with needs_extra("train"):
        import timm

so that a missing package raises `MissingExtraError`, one line naming the module and the extra:
"udon_fast needs the module 'timm', from the [train] extra: pip install 'udon_fast[train]'".
"""

import contextlib
from collections.abc import Iterator

from .errors import EXIT_USAGE, UdonFastError

EXTRAS = ("train", "serve", "export")


class MissingExtraError(UdonFastError, ImportError):
    """An optional package is not installed; the message names the extra that installs it.  A command
    reports it in one line and exits 2."""

    exit_code = EXIT_USAGE


@contextlib.contextmanager
def needs_extra(extra: str) -> Iterator[None]:
    """Turn a missing third-party module imported inside the block into `MissingExtraError` naming
    `extra`.  A missing udon_fast module (a bug) and an inner block's error pass through unchanged."""
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {EXTRAS}, got {extra!r}")
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] == "udon_fast":
            raise
        raise MissingExtraError(
            f"udon_fast needs the module '{exc.name}', from the [{extra}] extra: pip install 'udon_fast[{extra}]'",
            name=exc.name,
        ) from exc
