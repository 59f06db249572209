"""The FastAPI application of `python -m udon_fast.serve`.

    POST /search?top=K   multipart form, field "images" (one or several files) -> JSON
                         {"top": K, "results": [{"query": filename, "neighbours": [{"rank", "score",
                         "path", "class", "url"}, ...]}, ...]}; "class" is the folder the gallery image
                         is in, "url" the link /image/{row} that serves it.
    GET /                the page: pick or drop images, see their top-k (template serve.html).
    GET /healthz         {"status": "ok", "gallery": N, "dimension": D, "checkpoint", "batches", "images"}.
    GET /image/{row}     gallery image `row` (0 <= row < N); anything else, path traversal included, 404.

Uploads are checked (`uploads.check_upload`): empty 400, over the size limit 413, not an image 415,
more than `max_files` files 413, none 400; the JSON error body is {"detail": message}.
"""

from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from ..extras import needs_extra

with needs_extra("serve"):
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, HTMLResponse
    from starlette.datastructures import UploadFile

from ..gallery.render import environment
from ..retrieval.index import Gallery
from .batcher import MicroBatcher
from .uploads import MAX_UPLOAD_BYTES, UploadError, check_upload

MAX_TOP = 100


def create_app(
    gallery: Gallery,
    embed_fn,
    *,
    top: int = 5,
    max_batch: int = 32,
    max_wait_s: float = 0.005,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_files: int = 32,
    title: str = "udon_fast search",
) -> FastAPI:
    """The service over `gallery`; `embed_fn(list of encoded images) -> (n, D) float32` (an
    `embedding.ImageEmbedder`), run through a `MicroBatcher`."""
    batcher = MicroBatcher(embed_fn, max_batch=max_batch, max_wait_s=max_wait_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.batcher = batcher
    page = environment().get_template("serve.html").render(title=title, count=len(gallery.paths), top=top)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/healthz")
    async def healthz() -> dict:
        return {
            "status": "ok",
            "gallery": len(gallery.paths),
            "dimension": gallery.dimension,
            "checkpoint": gallery.meta.get("checkpoint"),
            "batches": len(batcher.batch_sizes),
            "images": sum(batcher.batch_sizes),
        }

    @app.get("/image/{row}")
    async def image(row: str) -> FileResponse:
        if (
            not (row.isascii() and row.isdigit())
            or int(row) >= len(gallery.paths)
            or not Path(gallery.paths[int(row)]).is_file()
        ):
            raise HTTPException(404, "no such gallery image")
        return FileResponse(gallery.paths[int(row)])

    @app.post("/search")
    async def search(request: Request, top: int = Query(top, ge=1, le=MAX_TOP)) -> dict:
        form = await request.form(max_files=max_files + 1)
        files = [f for f in form.getlist("images") if isinstance(f, UploadFile)]
        if not files:
            raise HTTPException(400, "no image: send one or more files in the multipart field 'images'")
        if len(files) > max_files:
            raise HTTPException(413, f"{len(files)} files; at most {max_files} per request")
        encoded = []
        try:
            for upload in files:
                data = await upload.read(max_upload_bytes + 1)
                encoded.append(
                    await run_in_threadpool(check_upload, upload.filename or "upload", data, max_upload_bytes)
                )
        except UploadError as exc:
            raise HTTPException(exc.status, exc.message) from exc
        queries = await batcher.embed(encoded)
        scores, ids = await run_in_threadpool(gallery.search, np.asarray(queries), top)
        return {
            "top": top,
            "results": [
                {
                    "query": upload.filename,
                    "neighbours": [
                        {
                            "rank": rank,
                            "score": float(score),
                            "path": gallery.paths[i],
                            "class": Path(gallery.paths[i]).parent.name,
                            "url": f"image/{i}",
                        }
                        for rank, (score, i) in enumerate(zip(row_scores, row_ids), start=1)
                        if i >= 0
                    ],
                }
                for upload, row_scores, row_ids in zip(files, scores, ids)
            ],
        }

    return app
