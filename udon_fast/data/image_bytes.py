"""Read encoded image files and reject broken or oversized ones before they reach a decoder.

`looks_complete` is the cheap check run on every image before any decoder sees it (training,
evaluation, embedding, search, `verify`):
- a JPEG must start with SOI, have well-formed header segments up to its first scan
  (`jpeg_header_problem`) and reach a real end-of-image marker (`jpeg_end`: the marker after the
  last scan, found by walking the segments and the entropy-coded data, so bytes after the image,
  such as the video of a phone's "motion photo", are allowed while truncated files are not);
- a PNG must start with its signature and end with IEND; BMP, TIFF and WebP must have a header
  that PIL reads; other formats are refused;
- the image must have at most `max_pixels()` pixels (width x height, read from the header;
  `pixel_problem`): one rule for every path, set by `set_max_pixels` (the `--max-pixels` flags).
`decode_check` also fully decodes with PIL (used by `verify` and to find the culprit when a
decoder still fails).
"""

import io

import numpy as np

from ..extras import needs_extra

with needs_extra("train"):
    from PIL import Image

from ..errors import InputError

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = 0xD9
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
_SOS = 0xDA
_RST0, _RST7 = 0xD0, 0xD7
_STANDALONE = {0x01, 0xD8, *range(_RST0, _RST7 + 1)}  # markers without a length field
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_TAIL = 64  # bytes at the end of a PNG in which IEND may sit (some writers pad after it)

# The largest image (width x height) any path decodes: PIL's decompression-bomb error limit, which the
# evaluation paths applied before the limit was shared (`set_max_pixels` changes it for this process).
DEFAULT_MAX_PIXELS = 2 * 89_478_485
MAX_PIXELS_HELP = (
    f"refuse images of more than this many pixels (width x height, read from the file header) on "
    f"every path (training skips them, evaluation names them); default {DEFAULT_MAX_PIXELS:,}, "
    f"PIL's decompression-bomb limit"
)
_max_pixels = DEFAULT_MAX_PIXELS


def max_pixels() -> int:
    """The pixel limit in force in this process (`DEFAULT_MAX_PIXELS` unless `set_max_pixels` changed it)."""
    return _max_pixels


def set_max_pixels(limit: int) -> None:
    """Refuse images of more than `limit` pixels (width x height) on every path of this process.

    Also sets PIL's `Image.MAX_IMAGE_PIXELS` (a warning above it, an error above twice it) to `limit`,
    so that PIL, where it decodes after this check, neither warns about nor refuses an allowed image.
    """
    global _max_pixels
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"--max-pixels must be an integer >= 1, got {limit!r}")
    _max_pixels = limit
    Image.MAX_IMAGE_PIXELS = limit


def _bytes_view(data: bytes | np.ndarray) -> np.ndarray:
    return data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)


def _jpeg_walk(data: np.ndarray) -> tuple[str | None, int, tuple[int, int] | None]:
    """(problem or None, offset of the first SOS marker, (width, height) from the frame header)."""
    view = memoryview(np.ascontiguousarray(data, dtype=np.uint8)).cast("B")
    size, pos, frame = len(view), 2, None
    while True:
        if pos >= size or view[pos] != 0xFF:
            return f"broken JPEG header (no marker at byte {pos})", pos, frame
        while pos + 1 < size and view[pos + 1] == 0xFF:
            pos += 1
        if pos + 1 >= size or view[pos + 1] == 0x00:
            return f"broken JPEG header (invalid marker at byte {pos})", pos, frame
        code = view[pos + 1]
        if code == _SOS:
            return None if frame else "broken JPEG header (no frame header before the scan)", pos, frame
        if code in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > size:
            return f"broken JPEG header (segment at byte {pos} runs past the end)", pos, frame
        length = view[pos + 2] << 8 | view[pos + 3]
        if length < 2 or pos + 2 + length > size:
            return f"broken JPEG header (segment at byte {pos} has length {length})", pos, frame
        if code in _SOF:
            if length < 8 or not 1 <= view[pos + 9] <= 4:
                return f"broken JPEG header (frame header at byte {pos})", pos, frame
            frame = (view[pos + 7] << 8 | view[pos + 8], view[pos + 5] << 8 | view[pos + 6])
        pos += 2 + length


def jpeg_header_problem(data: bytes | np.ndarray) -> str | None:
    """None when the JPEG's marker segments from SOI to the first SOS are well formed, else the reason.

    The walk DALI's JPEG parser (nvImageCodec) makes before decoding, and as strict: every segment
    must start with 0xFF (fill bytes 0xFF allowed) and a marker code other than 0x00, its length must
    stay inside the file, and a frame header (SOF) with 1 to 4 components must come before SOS.
    That parser fails hard (a crashed process, at large batch sizes) on what PIL's tolerant
    parser skips, e.g. a segment length that lands in the middle of data.
    """
    return _jpeg_walk(_bytes_view(data))[0]


def jpeg_end(data: bytes | np.ndarray, scan: int) -> int | None:
    """Offset just past the JPEG's end-of-image marker, or None when the file ends before it.

    scan: offset of the first SOS marker (`_jpeg_walk`).  From there every marker is either inside
    the entropy-coded data (0xFF followed by 0x00 is a stuffed data byte, by 0xFF a fill byte, by
    RST0-7 a restart marker: none ends the image) or a segment between scans (DHT, SOS, DNL, ...;
    skipped by its length, so bytes inside it are never read as markers); the first EOI outside
    all of them is the end.  Vectorised: one pass over the bytes, then a step per marker.
    """
    view = _bytes_view(data)
    size = len(view)
    at = np.flatnonzero(view[scan : size - 1] == 0xFF) + scan
    codes = view[at + 1]
    keep = (codes != 0x00) & (codes != 0xFF) & ((codes < _RST0) | (codes > _RST7)) & (codes != 0x01)
    at, codes = at[keep], codes[keep]
    i = 0
    while i < len(at):
        pos, code = int(at[i]), int(codes[i])
        if code == _JPEG_EOI:
            return pos + 2
        if code == 0xD8:  # a stray SOI inside the data: standalone, no length
            i += 1
            continue
        if pos + 4 > size:
            return None
        length = int(view[pos + 2]) << 8 | int(view[pos + 3])
        following = pos + 2 + max(length, 2)
        if following > size:
            return None
        i = int(np.searchsorted(at, following, side="left"))
    return None


def image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from the header of a JPEG, PNG, BMP, TIFF or WebP file; None when unreadable.

    Raises PIL's `DecompressionBombError` for a BMP, TIFF or WebP file over PIL's own error limit
    (never below `max_pixels()`: see `set_max_pixels`).
    """
    view = _bytes_view(data)
    head = bytes(view[:24])
    if head.startswith(_JPEG_SOI):
        return _jpeg_walk(view)[2]
    if head.startswith(_PNG_SIG) and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    try:
        with Image.open(io.BytesIO(view.tobytes())) as image:  # reads the header only
            return image.size
    except Image.DecompressionBombError:
        raise
    except Exception:  # any header PIL cannot read: no size (the decoder will fail on it)
        return None


def _over_limit(size: str) -> str:
    return f"too many pixels ({size}, over the limit of {_max_pixels:,}; a decompression bomb? see --max-pixels)"


def pixel_problem(data: bytes | np.ndarray) -> str | None:
    """None when the image has at most `max_pixels()` pixels (or no readable size), else the reason."""
    try:
        size = image_size(data)
    except Image.DecompressionBombError:
        return _over_limit("more than PIL's decompression-bomb limit")
    if size is None or size[0] * size[1] <= _max_pixels:
        return None
    return _over_limit(f"{size[0]} x {size[1]} = {size[0] * size[1]:,}")


def looks_complete(data: bytes | np.ndarray) -> str | None:
    """None when the encoded image passes the header/trailer and pixel checks, else the reason (str)."""
    view = _bytes_view(data)
    if len(view) == 0:
        return "empty file"
    head = bytes(view[:8])
    if head.startswith(_JPEG_SOI[:2]):
        if not head.startswith(_JPEG_SOI):
            return "broken JPEG header"
        problem, scan, size = _jpeg_walk(view)
        if problem is None and jpeg_end(view, scan) is None:
            problem = "truncated or damaged JPEG (no end-of-image marker after its scan data)"
        if problem is None and size is not None and size[0] * size[1] > _max_pixels:
            problem = _over_limit(f"{size[0]} x {size[1]} = {size[0] * size[1]:,}")
        return problem
    if head.startswith(_PNG_SIG[:4]):
        if head != _PNG_SIG or _PNG_IEND not in bytes(view[-_TAIL:]):
            return "truncated or broken PNG"
        return pixel_problem(view)
    if head[:2] in (b"BM", b"II", b"MM", b"RI"):  # BMP, TIFF, RIFF (WebP): the rest is left to the decoder
        return pixel_problem(view)
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
