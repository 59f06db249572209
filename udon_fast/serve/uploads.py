"""Checks on an uploaded image: not empty, not too large, an image the embedder's decoder reads."""

import numpy as np

from ..data.image_bytes import looks_complete
from ..data.torchvision_pipelines import decode
from ..errors import InputError

MAX_UPLOAD_BYTES = 10 * 1024 * 1024


class UploadError(InputError):
    """A rejected upload: the HTTP status to answer with and a message naming the file."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_upload(name: str, data: bytes, limit: int = MAX_UPLOAD_BYTES) -> np.ndarray:
    """The upload's bytes as uint8 (n,) once they pass; `UploadError` 400 (empty), 413 (over `limit`
    bytes) or 415 (not a decodable JPEG, PNG, GIF, WebP, BMP or TIFF) otherwise.  `data` may hold up
    to limit + 1 bytes: only whether it is over the limit matters."""
    if not data:
        raise UploadError(400, f"{name}: empty file")
    if len(data) > limit:
        raise UploadError(413, f"{name}: larger than the {limit}-byte limit")
    encoded = np.frombuffer(bytearray(data), dtype=np.uint8)  # writable: torch wraps it without a copy
    reason = looks_complete(encoded)
    if reason is None:
        try:
            decode(encoded)
        except Exception as exc:  # any decoder failure is a verdict on this upload
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'cannot decode'}"
    if reason is not None:
        raise UploadError(
            415, f"{name}: not an image this service can read (JPEG, PNG, GIF, WebP, BMP, TIFF): {reason}"
        )
    return encoded
