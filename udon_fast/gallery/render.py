"""Gallery pages from Jinja2 templates (package data), with thumbnails copied into the output folder.

Every page links only to files below its own folder (thumbs/*.jpg, sibling pages), so a gallery
folder can be moved or zipped and still open.  Pages and thumbnails are written atomically.
"""

import hashlib
import io
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..extras import needs_extra

with needs_extra("train"):
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
    from PIL import Image, ImageOps

from ..data.image_bytes import read_encoded
from ..files.outputs import atomic_write, atomic_write_text, check_writable_folder
from .retrieval import MergedSearch, QueryResult, compare, sample_rows

THUMBNAIL_SIDE = 160
THUMBNAIL_FOLDER = "thumbs"


def environment() -> Environment:
    """The Jinja2 environment of the gallery and service templates (HTML autoescaped)."""
    return Environment(
        loader=PackageLoader("udon_fast.gallery", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class Thumbnails:
    """Copies images, shrunk to at most THUMBNAIL_SIDE px (JPEG), into `folder`/thumbs/ once each and
    returns their links relative to `folder`.  `read(path)`: an image's encoded bytes (default: the file's;
    `MergedSearch.read` also reads tar shard members)."""

    def __init__(self, folder: Path, read: Callable[[str], np.ndarray] = read_encoded):
        self.folder = folder / THUMBNAIL_FOLDER
        check_writable_folder(self.folder, "gallery")
        self.links: dict[str, str] = {}
        self.read = read

    def __call__(self, path: str) -> str:
        link = self.links.get(path)
        if link is None:
            name = hashlib.sha1(str(Path(path).resolve()).encode("utf-8")).hexdigest()[:20] + ".jpg"
            with Image.open(io.BytesIO(self.read(path).tobytes())) as image:
                thumbnail = ImageOps.exif_transpose(image).convert("RGB")
            thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            with atomic_write(self.folder / name, "gallery thumbnail") as f:
                thumbnail.save(f, format="JPEG", quality=85)
            link = self.links[path] = f"{THUMBNAIL_FOLDER}/{name}"
        return link


def page_name(domain: str) -> str:
    """The file name of `domain`'s page (characters outside [A-Za-z0-9_-] become '_')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", domain) + ".html"


def write_gallery(
    folder: str | Path,
    trained: MergedSearch,
    count: int,
    *,
    title: str,
    baseline: MergedSearch | None = None,
    seed: int = 0,
) -> Path:
    """`folder`/index.html and one page per domain: a seeded sample of `count` queries per domain with
    their top-k in the merged index (`trained`); with `baseline` (the off-the-shelf backbone's search of
    the same queries) also up to `count` queries `trained` gets right at rank 1 and `baseline` wrong,
    and the reverse.  Returns the path of index.html."""
    folder = check_writable_folder(folder, "gallery")
    env, thumb = environment(), Thumbnails(folder, trained.read)
    summaries = []
    for d, domain in enumerate(trained.names):
        rows = trained.rows_of(domain)
        sample = [trained.result(r) for r in sample_rows(rows, count, seed + d)]
        comparisons = []
        if baseline is not None:
            for heading, chosen in zip(
                (
                    "Trained model right, off-the-shelf backbone wrong",
                    "Off-the-shelf backbone right, trained model wrong",
                ),
                compare(trained, baseline, domain),
            ):
                shown = sample_rows(chosen, count, seed + d)
                comparisons.append(
                    {
                        "heading": heading,
                        "total": len(chosen),
                        "pairs": [(trained.result(r), baseline.result(r)) for r in shown],
                    }
                )
        right = int(trained.correct[rows, 0].sum())
        summaries.append(
            {
                "name": domain,
                "page": page_name(domain),
                "queries": len(rows),
                "right": right,
                "baseline_right": None if baseline is None else int(baseline.correct[rows, 0].sum()),
            }
        )
        html = env.get_template("domain.html").render(
            title=title,
            domain=domain,
            sample=sample,
            queries=len(rows),
            right=right,
            comparisons=comparisons,
            thumb=thumb,
            top=trained.ids.shape[1],
            count=count,
        )
        atomic_write_text(folder / page_name(domain), html)
    html = env.get_template("index.html").render(
        title=title, domains=summaries, count=count, top=trained.ids.shape[1], compared=baseline is not None
    )
    atomic_write_text(folder / "index.html", html)
    return folder / "index.html"


def write_search_page(folder: str | Path, results: Sequence[QueryResult], *, title: str) -> Path:
    """`folder`/index.html: each query of `search` with its ranked hits, as thumbnails (the gallery
    pages' layout, without correct/wrong marks).  Returns its path."""
    folder = check_writable_folder(folder, "--html")
    env, thumb = environment(), Thumbnails(folder)
    html = env.get_template("search.html").render(title=title, results=results, thumb=thumb)
    atomic_write_text(folder / "index.html", html)
    return folder / "index.html"
