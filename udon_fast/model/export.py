"""A checkpoint's universal embedder as one ONNX or TorchScript file (`python -m udon_fast.export`).

The file maps `images` (N, 3, S, S) float32, N dynamic, prepared as `model.embedder.Preprocessing`
says, to `embeddings` (N, 64) float32 with unit-norm rows: what `udon_fast.load_embedder(CKPT)`
computes.  Only the backbone and the student projection are exported (no teacher heads, no
classifiers).  The preprocessing travels inside the file as JSON: ONNX metadata property
`udon_fast.preprocessing`, TorchScript extra file `preprocessing.json`.

ONNX uses torch's `torch.export`-based exporter (needs `onnx` and `onnxscript`); TorchScript uses
`torch.jit.trace`.  After writing, the file is loaded back (onnxruntime / `torch.jit.load`), run on
a batch of another size than the one traced, and compared with PyTorch: a difference above 1e-4 is
an error, so a written file is a checked file.

Failures are one line and leave nothing behind: the file is built in a temporary file next to `out`
(removed on any failure) and renamed only once checked.  TorchScript is serialized into memory first
and then written from Python, so a full disk is an `OutputError` ("cannot write ...: No space left on
device"), never an abort inside libtorch's writer.  `--opset` must lie in MIN_OPSET ..
`onnx.defs.onnx_opset_version()`, and the written file must declare the opset asked for.
"""

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import ExportCheckFailed, InputError
from ..extras import needs_extra
from ..files.outputs import os_error_in, writing
from .embedder import Embedder

FORMATS = ("onnx", "torchscript")
INPUT, OUTPUT = "images", "embeddings"
METADATA_KEY = "udon_fast.preprocessing"
EXTRA_FILE = "preprocessing.json"
TOLERANCE = 1e-4
MIN_OPSET = 18  # torch's ONNX exporter has no implementations below (it silently writes 18 instead)


def _example(embedder: Embedder, n: int) -> torch.Tensor:
    size = embedder.preprocessing.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n))


def _write_onnx(embedder: Embedder, out: Path, metadata: str, opset: int | None) -> None:
    with needs_extra("export"):
        import onnx
        import onnxscript  # noqa: F401  (torch's ONNX exporter imports it)

    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            embedder,
            (_example(embedder, 2),),
            str(out),
            dynamo=True,
            external_data=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
    model = onnx.load(str(out))
    written = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:
        raise ExportCheckFailed(f"the exporter wrote opset {written}, not the --opset {opset} asked for")
    onnx.helper.set_model_props(model, {METADATA_KEY: metadata})
    onnx.save(model, str(out))


def _write_torchscript(embedder: Embedder, out: Path, metadata: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still the format asked for
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape asserts at the fixed S; checked after
        traced = torch.jit.trace(embedder, _example(embedder, 2), check_trace=False)
        buffer = io.BytesIO()  # libtorch's file writer aborts the process on a full disk; Python's write raises
        torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: metadata})
    out.write_bytes(buffer.getbuffer())


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """Embed `images` (N, 3, S, S) float32 with an exported file: (N, D) float32."""
    if fmt == "onnx":
        with needs_extra("export"):
            import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT], {INPUT: images.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return module(images).numpy()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""


def export_embedder(embedder: Embedder, fmt: str, out: str | Path, opset: int | None = None) -> float:
    """Write `embedder` (on the CPU, eval mode) to `out` as `fmt`; return the max |difference| of the
    written file's output against PyTorch on a 3-image batch (`ExportCheckFailed` above `TOLERANCE`, or
    when the exporter fails).  The file appears at `out` only once checked."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if opset is not None:
        if fmt != "onnx":
            raise InputError(f"--opset applies to --format onnx only, got --format {fmt}")
        with needs_extra("export"):
            import onnx

        newest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= opset <= newest:
            raise InputError(
                f"--opset {opset} is not supported: the ONNX exporter writes opsets {MIN_OPSET} to {newest}"
            )
    out = Path(out)
    with writing(out.parent, "folder"):
        out.parent.mkdir(parents=True, exist_ok=True)
    embedder = embedder.cpu().eval()
    metadata = json.dumps(embedder.preprocessing.to_dict())
    staged = out.with_name(f".{out.name}.tmp")
    try:
        with writing(out, f"{fmt} file"):
            try:
                if fmt == "onnx":
                    _write_onnx(embedder, staged, metadata, opset)
                else:
                    _write_torchscript(embedder, staged, metadata)
            except (ExportCheckFailed, OSError):
                raise
            except Exception as exc:  # the exporters raise many types; the message is kept
                cause = os_error_in(exc)
                if cause is not None:  # e.g. a full disk, wrapped by the exporter: `writing` names the file
                    raise OSError(cause.errno, cause.strerror) from exc
                raise ExportCheckFailed(
                    f"{fmt} export of {embedder.config['backbone_name']} failed: "
                    f"{type(exc).__name__}: {_first_line(exc)}"
                ) from exc
        check = _example(embedder, 3)
        with torch.inference_mode():
            expected = embedder(check).numpy()
        try:
            exported = run_exported(staged, fmt, check)
        except Exception as exc:  # onnxruntime / torch.jit raise many types
            raise ExportCheckFailed(
                f"the written {fmt} file does not run: {type(exc).__name__}: {_first_line(exc)}; not written to {out}"
            ) from exc
        difference = float(np.abs(exported - expected).max())
        if not difference <= TOLERANCE:
            raise ExportCheckFailed(
                f"the exported {fmt} file differs from PyTorch by {difference:.2e} (> {TOLERANCE}); "
                f"not written to {out}"
            )
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    return difference
