"""The decode/augment stage of the loaders, by name: "dali" (default) or "torchvision".

Both take the same sources (`sources.py`), draws (`sampling.py`) and augmentation definition
(`augment.py`) and give the same batches; only decoding and resampling differ.  DALI is imported
here, lazily, and only for the DALI decoder: when it is not importable the loaders fall back to
torchvision and say so once per process (a WARNING log line).  The interface each decoder module
implements: `pipeline.Decoder` and `pipeline.DecoderPipeline`.
"""

import importlib
import logging
from collections.abc import Callable

from ..errors import InputError
from .pipeline import Decoder, DecoderPipeline

log = logging.getLogger(__name__)

DECODERS = ("dali", "torchvision")
_MODULES = {"dali": ".dali_pipelines", "torchvision": ".torchvision_pipelines"}
_fallback_reported = False


DATA_THREADS_HELP = "CPU threads that read and decode images (default {default})"


def dali_import_error() -> Exception | None:
    """None when NVIDIA DALI imports, else the error it raised."""
    try:
        import nvidia.dali  # noqa: F401
    except (ImportError, OSError) as exc:
        return exc
    return None


def resolve_decoder(decoder: str) -> str:
    """The decoder that will run for `decoder`: itself, or "torchvision" for "dali" without DALI."""
    global _fallback_reported
    if decoder not in DECODERS:
        raise InputError(f"decoder must be one of {', '.join(DECODERS)}; got {decoder!r}")
    if decoder == "dali":
        error = dali_import_error()
        if error is None:
            return decoder
        if not _fallback_reported:
            log.warning("NVIDIA DALI is not importable (%s): decoding images with torchvision instead", error)
            _fallback_reported = True
        return "torchvision"
    return decoder


def _module(decoder: str) -> Decoder:
    return importlib.import_module(_MODULES[decoder], __package__)


def train_pipeline(decoder: str, source: Callable, **options) -> DecoderPipeline:
    """The train pipeline of `decoder` (already resolved by `resolve_decoder`) over `source`: its
    `outputs()` -> (images, labels) torch tensors; see `dali_pipelines.train_pipeline` for the options
    and batches."""
    return _module(decoder).train_pipeline(source, **options)


def eval_pipeline(decoder: str, source: Callable, **options) -> DecoderPipeline:
    """The eval pipeline of `decoder` (already resolved) over `source`: `outputs()` -> (images,); see
    `dali_pipelines.eval_pipeline`."""
    return _module(decoder).eval_pipeline(source, **options)
