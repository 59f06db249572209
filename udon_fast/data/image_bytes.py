"""Read encoded image files and reject obviously broken ones before they reach a decoder.

`looks_complete` is the cheap check run on every training sample: a JPEG must start with SOI, end
with EOI (truncated files do not) and have well-formed header segments up to its scan
(`jpeg_header_problem`), a PNG must start with its signature and end with IEND;
other formats must be non-empty.  `decode_check` fully decodes with PIL (used by `verify` and to
find the culprit when a decoder still fails).
"""
import io

import numpy as np
from PIL import Image

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
_SOS = 0xDA
_RST0, _RST7 = 0xD0, 0xD7
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_TAIL = 64  # bytes at the end in which an end marker may sit (some writers pad after it)


def jpeg_header_problem(data: bytes | np.ndarray) -> str | None:
    """None when the JPEG's marker segments from SOI to the first SOS are well formed, else the reason.

    The walk DALI's JPEG parser (nvImageCodec) makes before decoding, and as strict: every segment
    must start with 0xFF (fill bytes 0xFF allowed) and a marker code other than 0x00, its length must
    stay inside the file, and a frame header (SOF) with 1 to 4 components must come before SOS.
    That parser fails hard (a crashed process, at large batch sizes) on what PIL's tolerant
    parser skips, e.g. a segment length that lands in the middle of data.
    """
    data = memoryview(np.asarray(data, dtype=np.uint8)).cast("B") if isinstance(data, np.ndarray) else memoryview(data)
    size, pos, frame = len(data), 2, False
    while True:
        if pos >= size or data[pos] != 0xFF:
            return f"broken JPEG header (no marker at byte {pos})"
        while pos + 1 < size and data[pos + 1] == 0xFF:
            pos += 1
        if pos + 1 >= size or data[pos + 1] == 0x00:
            return f"broken JPEG header (invalid marker at byte {pos})"
        code = data[pos + 1]
        if code == _SOS:
            return None if frame else "broken JPEG header (no frame header before the scan)"
        if _RST0 <= code <= _RST7 or code in (0x01, 0xD8):  # standalone markers: no length
            pos += 2
            continue
        if pos + 4 > size:
            return f"broken JPEG header (segment at byte {pos} runs past the end)"
        length = data[pos + 2] << 8 | data[pos + 3]
        if length < 2 or pos + 2 + length > size:
            return f"broken JPEG header (segment at byte {pos} has length {length})"
        if code in _SOF:
            if length < 8 or not 1 <= data[pos + 9] <= 4:
                return f"broken JPEG header (frame header at byte {pos})"
            frame = True
        pos += 2 + length


def looks_complete(data: bytes | np.ndarray) -> str | None:
    """None when the encoded image passes the header/trailer check, else the reason (str)."""
    head = bytes(data[:8])
    tail = bytes(data[-_TAIL:])
    if len(data) == 0:
        return "empty file"
    if head.startswith(_JPEG_SOI[:2]):
        if not head.startswith(_JPEG_SOI):
            return "broken JPEG header"
        if _JPEG_EOI not in tail:
            return "truncated JPEG (no end-of-image marker)"
        return jpeg_header_problem(data)
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
        data = read_encoded(path)
    except Exception as exc:  # an I/O failure is a verdict on this file
        return f"{type(exc).__name__}: {exc}"
    return decode_check_bytes(data)


def decode_check_bytes(data: np.ndarray) -> str | None:
    """`decode_check` of an encoded image already read (uint8 (n,), e.g. a tar shard's member)."""
    try:
        reason = looks_complete(data)
        if reason is None:
            with Image.open(io.BytesIO(data.tobytes())) as image:
                image.load()
    except Exception as exc:  # any decoder failure is a verdict on this image
        return f"{type(exc).__name__}: {exc}"
    return reason
