"""`python -m udon_fast.serve --index GALLERY.faiss --checkpoint CKPT [--host 127.0.0.1] [--port 8000]`:
serve searches of the gallery index over HTTP (`udon_fast.serve.app`: POST /search, GET /,
GET /healthz).  CKPT embeds the uploaded images (default: the checkpoint recorded with the index)."""

import argparse
import sys

import torch

from ..checks import check_positive
from ..errors import InputError
from ..extras import needs_extra
from ..retrieval.index import load_gallery
from ..retrieval.search import query_embedder
from ..serve.app import create_app
from ..serve.embedding import ImageEmbedder
from ..serve.uploads import MAX_UPLOAD_BYTES
from .cli import add_checkpoint, add_data_threads, add_index_file, command_parser, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m udon_fast.serve", __doc__)
    model = parser.add_argument_group("gallery and model")
    add_index_file(model)
    add_checkpoint(model, "model that embeds uploads (default: the one recorded with the index)")
    add_data_threads(model)
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    server.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    server.add_argument("--top", type=int, default=5, metavar="K", help="hits per query unless a request asks ?top=K")
    server.add_argument("--max-batch", type=int, default=32, help="images embedded together at most (default 32)")
    server.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long the first request of a batch waits for others to join it (default 5)",
    )
    server.add_argument(
        "--max-upload-mb",
        type=float,
        default=MAX_UPLOAD_BYTES / 2**20,
        help=f"largest upload per file in MiB (default {MAX_UPLOAD_BYTES / 2**20:g})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit code (docs/cli.md): 0 stopped, 2 bad options or input (the index, the checkpoint)."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _serve(args), "udon_fast.serve")


def _serve(args: argparse.Namespace) -> int:
    check_positive(args, "port", "top", "max_batch", "data_threads")
    if args.max_wait_ms < 0 or args.max_upload_mb <= 0:
        raise InputError("--max-wait-ms must be >= 0 and --max-upload-mb > 0")
    gallery = load_gallery(args.index)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = query_embedder(gallery, args.checkpoint, device)
    with needs_extra("serve"):
        import uvicorn

    embedder = ImageEmbedder(model, device, args.data_threads)
    app = create_app(
        gallery,
        embedder,
        top=args.top,
        max_batch=args.max_batch,
        max_wait_s=args.max_wait_ms / 1000,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        title=f"udon_fast search: {args.index}",
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        embedder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
