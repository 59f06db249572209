"""Read encoded image files and reject obviously broken ones before they reach a decoder.

`looks_complete` is the cheap check run on every training sample: a JPEG must start with SOI and
end with EOI (truncated files do not), a PNG must start with its signature and end with IEND;
other formats must be non-empty.  `decode_check` fully decodes with PIL (used by `verify` and to
find the culprit when a decoder still fails).
"""
import numpy as np
from PIL import Image

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
_TAIL = 64  # bytes at the end in which an end marker may sit (some writers pad after it)


def looks_complete(data: bytes | np.ndarray) -> str | None:
    """None when the encoded image passes the header/trailer check, else the reason (str)."""
    head = bytes(data[:8])
    tail = bytes(data[-_TAIL:])
    if len(data) == 0:
        return "empty file"
    if head.startswith(_JPEG_SOI[:2]):
        if not head.startswith(_JPEG_SOI):
            return "broken JPEG header"
        return None if _JPEG_EOI in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(_PNG_SIG[:4]):
        return None if head == _PNG_SIG and _PNG_IEND in tail else "truncated or broken PNG"
    if head[:2] in (b"BM", b"II", b"MM", b"RI"):  # BMP, TIFF, RIFF (WebP): left to the decoder
        return None
    return "not a JPEG/PNG/BMP/TIFF/WebP file"


def read_encoded(path: str) -> np.ndarray:
    """The file's bytes as uint8 (n,) (raises OSError when unreadable)."""
    return np.fromfile(path, dtype=np.uint8)


def decode_check(path: str) -> str | None:
    """None when `path` passes `looks_complete` and fully decodes with PIL, else the reason (str)."""
    try:
        reason = looks_complete(read_encoded(path))
        if reason is None:
            with Image.open(path) as image:
                image.load()
    except Exception as exc:  # any decoder or I/O failure is a verdict on this file
        return f"{type(exc).__name__}: {exc}"
    return reason
