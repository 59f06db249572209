"""`python -m udon_fast.serve`: a search service over a gallery index (FastAPI + uvicorn).

- `app.create_app(gallery, embedder)`: the FastAPI application (POST /search, GET /, GET /healthz,
  GET /image/{row}).
- `batcher.MicroBatcher`: embeds the images of concurrent requests in shared batches.
- `uploads.check_upload`: the checks an uploaded file must pass (a clear 4xx otherwise).
"""

from .app import create_app
from .batcher import MicroBatcher
from .uploads import UploadError, check_upload

__all__ = ["MicroBatcher", "UploadError", "check_upload", "create_app"]
