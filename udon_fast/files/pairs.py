"""A data file and its JSON metadata file, written and read as a pair (E.npy + E.meta.json from
`embed`, GALLERY.faiss + GALLERY.faiss.meta.json from `index build`).

`write_pair` writes both to temporary files, each completely and fsynced, before either replaces
its old file (`files.outputs.atomic_write`): a failure while writing (a full disk, an I/O error, an
exception) removes both temporary files and leaves the old pair.  The metadata records the data
file's SHA-256 and size, so the short window between the two renames is covered too: a process
killed there leaves a new metadata file beside the old data file (or the reverse), which
`check_pair` refuses, naming both files, instead of pairing one file's rows with the other's paths.
"""

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InputError
from .outputs import atomic_write, atomic_write_text

CHUNK = 1 << 22


class _Hashing:
    """A write-only file that passes bytes on and hashes them."""

    def __init__(self, file: BinaryIO):
        self.file, self.sha256, self.size = file, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        return self.file.write(data)


def write_pair(
    data_path: Path, write_data: Callable[[BinaryIO], None], meta_path: Path, meta: dict[str, Any], what: str = ""
) -> dict[str, Any]:
    """Write `data_path` (its bytes from `write_data(file)`) and `meta_path` (`meta` plus "sha256" and
    "bytes" of the data file, as JSON) as a pair (module docstring); return the metadata written."""
    with atomic_write(data_path, what) as data_file:
        hashing = _Hashing(data_file)
        write_data(hashing)
        data_file.flush()
        os.fsync(data_file.fileno())
        record = {**meta, "sha256": hashing.sha256.hexdigest(), "bytes": hashing.size}
        atomic_write_text(meta_path, json.dumps(record, ensure_ascii=False), what)
    return record


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_pair(data_path: Path, meta_path: Path, meta: dict[str, Any], writer: str) -> None:
    """Raise ValueError (one line naming both files; `writer` is the command that writes them) unless
    `meta` records the size and SHA-256 that `data_path` has."""
    recorded = meta.get("sha256")
    if not isinstance(recorded, str) or not isinstance(meta.get("bytes"), int):
        raise InputError(
            f"{meta_path} records no checksum of {data_path} (written by an older udon_fast?): run {writer} again"
        )
    if data_path.stat().st_size != meta["bytes"] or file_sha256(data_path) != recorded:
        raise InputError(
            f"{data_path} and {meta_path} are not a pair: the data file's size or SHA-256 differs "
            f"from the one recorded (one of them was replaced on its own, or a write was "
            f"interrupted): run {writer} again"
        )
