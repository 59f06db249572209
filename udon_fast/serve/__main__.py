"""`python -m udon_fast.serve --index GALLERY.faiss --checkpoint CKPT [--host 127.0.0.1] [--port 8000]`:
serve searches of the gallery index over HTTP (`udon_fast.serve.app`: POST /search, GET /,
GET /healthz).  CKPT embeds the uploaded images (default: the checkpoint recorded with the index)."""
import argparse
import sys

import torch

from ..cli import check_positive
from ..extras import needs_extra
from ..index import load_gallery
from ..search import query_embedder
from .app import create_app
from .embedding import ImageEmbedder
from .uploads import MAX_UPLOAD_BYTES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m udon_fast.serve", description=__doc__)
    parser.add_argument("--index", required=True, help="index file written by python -m udon_fast.index build")
    parser.add_argument("--checkpoint", help="model that embeds uploads (default: the one recorded with the index)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--top", type=int, default=5, help="hits per query unless a request asks ?top=K")
    parser.add_argument("--max-batch", type=int, default=32, help="images embedded together at most")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long the first request of a batch waits for others to join it")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20, help="per file")
    parser.add_argument("--threads", type=int, default=2, help="image decoding CPU threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_positive(args, "port", "top", "max_batch", "threads")
        if args.max_wait_ms < 0 or args.max_upload_mb <= 0:
            raise ValueError("--max-wait-ms must be >= 0 and --max-upload-mb > 0")
        gallery = load_gallery(args.index)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = query_embedder(gallery, args.checkpoint, device)
    except (OSError, ValueError) as exc:
        print(f"udon_fast.serve: error: {exc}", file=sys.stderr)
        return 1
    with needs_extra("serve"):
        import uvicorn

    embedder = ImageEmbedder(model, device, args.threads)
    app = create_app(gallery, embedder, top=args.top, max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000,
                     max_upload_bytes=int(args.max_upload_mb * 2**20), title=f"udon_fast search: {args.index}")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        embedder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
