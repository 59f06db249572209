"""Helpers of the service and browser tests: a tiny trained gallery index, and the service run by
uvicorn in a thread of the test process on a free port of 127.0.0.1."""

import socket
import threading
import time
from pathlib import Path

import torch
import uvicorn

from udon_fast.commands import embed as embed_cli
from udon_fast.commands import index as index_cli
from udon_fast.commands.train import parse_args
from udon_fast.model import load_embedder
from udon_fast.retrieval.index import load_gallery
from udon_fast.serve import create_app
from udon_fast.serve.embedding import ImageEmbedder
from udon_fast.trainer.loop import train

TINY = [
    "--backbone",
    "vit_tiny_patch16_224",
    "--pretrained",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--update-every",
    "2",
    "--checkpoint-every",
    "4",
    "--eval-batch-size",
    "16",
    "--frozen-epochs",
    "1",
    "--no-compile",
    "--no-progress",
    "--deterministic",
    "--data-threads",
    "1",
    "--decoder",
    "torchvision",
    "--gallery",
    "4",
]


def trained_gallery(data_root: Path, folder: Path) -> tuple[Path, Path]:
    """Train 4 steps into `folder`/run (its gallery pages included), embed every image of `data_root`
    and build a flat index: (run folder, index file)."""
    run = folder / "run"
    train(parse_args(["--data-root", str(data_root), "--out", str(run), *TINY, "--steps", "4"]))
    assert (
        embed_cli.main(
            [
                "--checkpoint",
                str(run / "checkpoints" / "best.pt"),
                "--images",
                str(Path(data_root) / "images"),
                "--out",
                str(folder / "e.npy"),
                "--decoder",
                "torchvision",
                "--data-threads",
                "1",
            ]
        )
        == 0
    )
    assert index_cli.main(["build", "--embeddings", str(folder / "e.npy"), "--out", str(folder / "g.faiss")]) == 0
    return run, folder / "g.faiss"


def service(index: Path, **options):
    """The FastAPI app over `index` (its recorded checkpoint embeds) and the index's Gallery."""
    gallery = load_gallery(index)
    embedder = ImageEmbedder(load_embedder(gallery.meta["checkpoint"]), torch.device("cpu"), threads=1)
    return create_app(gallery, embedder, **options), gallery


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 (a free port) in a daemon thread; a context manager."""

    def __init__(self, app):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()
