"""`python -m udon_fast.export`: a checkpoint's universal embedder as one ONNX or TorchScript file (the file,
its checks and its failures: `udon_fast.model.export`)."""

import argparse
import json
import sys

from ..model import export as model_export
from ..model.embedder import load_embedder
from ..model.export import FORMATS, MIN_OPSET, export_embedder
from .cli import add_checkpoint, command_parser, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m udon_fast.export", model_export.__doc__)
    inputs = parser.add_argument_group("input")
    add_checkpoint(inputs, required=True)
    output = parser.add_argument_group("output")
    output.add_argument("--format", required=True, choices=FORMATS, help="onnx or torchscript")
    output.add_argument("--out", required=True, help="output file (e.g. embedder.onnx, embedder.ts.pt)")
    output.add_argument("--opset", type=int, help=f"ONNX opset, {MIN_OPSET} or newer (default: the exporter's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit code (docs/cli.md): 0 written and checked, 1 the export or its check failed (nothing written),
    2 bad options or input."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _export(args), "udon_fast.export")


def _export(args: argparse.Namespace) -> int:
    embedder = load_embedder(args.checkpoint)
    difference = export_embedder(embedder, args.format, args.out, opset=args.opset)
    size = embedder.preprocessing.image_size
    print(
        f"{args.out}: {args.format}, images (N, 3, {size}, {size}) float32 -> embeddings (N, {embedder.dim}) "
        f"float32, unit norm; max |difference| to PyTorch {difference:.1e}"
    )
    print(f"preprocessing: {json.dumps(embedder.preprocessing.to_dict())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
