"""Tar shards (webdataset format) of a dataset, and reading them back in place.

Layout of a shard root (`python -m udon_fast.data shard ... --out SHARDS`):

    SHARDS/index.json                      the index (below); its presence marks a finished root
    SHARDS/<domain>/<split>.json           the split's member table (below)
    SHARDS/<domain>/<split>-000000.tar     webdataset shards, at most --shard-size bytes each
    SHARDS/<domain>/<split>-000000.idx     DALI's index of that shard (`wds2idx` format v1.2)

Every image is one webdataset sample of two members, written next to each other: `<key>.<ext>` (the
file's bytes, unchanged; ext: jpg, png, bmp, tiff, webp or img) and `<key>.cls` (its contiguous class
id in ASCII: the training label, the first one of a multi-label entry).  Keys are the sample's
position in its split, 9 digits ("000001234"), so members sort in split order and the shards hold the
split's images in the order the dataset lists them.  What else a sample has (all its labels, the file
it came from) is in the member table, not in the tar: a tar member costs a 512-byte header and pads
its data to 512 bytes, as much again as a small JPEG.

index.json: {"format": "udon_fast-shards", "version": 1, "shard_size": bytes, "domains": {name:
{"num_classes": C, "class_map": [[original id, contiguous id], ...], "folder_split": the record of a
carved folder domain or null, "splits": {split: {"count": N, "members": "<domain>/<split>.json",
"shards": [{"file": "<domain>/<split>-000000.tar", "index": "...idx", "first": first sample,
"count": samples, "bytes": file size}, ...]}}}}}.
A member table is columnar JSON: {"key", "ext", "shard" (position in the split's "shards"), "offset"
and "size" (the image member's bytes inside its tar), "label" (contiguous ids: ints, or lists padded
with -1 for multi-label splits), "source" (original file)}: the files each shard holds, in order.

Reading: `load_shard_domains` gives ordinary `Domain`s whose splits carry a `ShardMembers`: sample i of
a split is read from its tar by offset (`os.preadv`, no extraction; each thread keeps shard files open),
so the samplers, resume positions and batches are those of the same split read from files.  A
sample's name (`Split.paths[i]`, used in every error and skip message) is "<tar file>:<key>.<ext>".
"""

import io
import json
import os
import re
import resource
import secrets
import shutil
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..extras import needs_extra

with needs_extra("train"):
    from tqdm import tqdm

from ..errors import InputError
from ..files.outputs import atomic_write, atomic_write_text, writing
from .domain import Domain, Split, select_domains
from .errors import DatasetError

FORMAT, VERSION = "udon_fast-shards", 1
INDEX_FILE = "index.json"
IMAGE_EXTS = ("jpg", "png", "bmp", "tiff", "webp", "img")  # DALI reads them as one output: "jpg;png;..."
_SUFFIX_EXT = {
    ".jpg": "jpg",
    ".jpeg": "jpg",
    ".png": "png",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".webp": "webp",
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_BLOCK = 512  # tar block size
# Shard files each reading thread keeps open: 1/64 of the process's open-file limit, at least 16
# (all of UnED's ~1,100 256 MB shards where the limit is the usual container 1,048,576).
_OPEN_PER_THREAD = max(16, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 64)


def parse_size(text: str, flag: str = "--shard-size") -> int:
    """Bytes of "256MB", "1.5GB", "64MiB", "4096" (K/M/G/T: powers of 1000; KiB/MiB/...: of 1024)."""
    match = _SIZE.match(str(text))
    if not match:
        raise InputError(f"{flag}: expected a size such as 256MB, 1GB or 64MiB, got {text!r}")
    number, unit = float(match.group(1)), match.group(2).upper().removesuffix("B")
    base = 1024 if unit.endswith("I") else 1000
    size = int(number * base ** " KMGT".index(unit.removesuffix("I") or " "))
    if size < 1:
        raise InputError(f"{flag} must be at least 1 byte, got {text!r}")
    return size


def is_shard_root(path: str | os.PathLike) -> bool:
    """Whether `path` is a shard root (holds index.json and no UnED info_files/)."""
    return (Path(path) / INDEX_FILE).is_file() and not (Path(path) / "info_files").is_dir()


class ShardMembers:
    """Where the samples of one split lie in its tar shards.

    files: absolute tar paths (S,); shard int32 (N,): each sample's shard; offset, size int64 (N,):
    its image member's bytes in that tar; counts int64 (S,): samples each shard holds in all (a slice
    of a split keeps every shard of the split); index_files: DALI index of each shard (S,).
    """

    def __init__(
        self,
        files: list[str],
        index_files: list[str],
        counts: np.ndarray,
        shard: np.ndarray,
        offset: np.ndarray,
        size: np.ndarray,
    ):
        self.files, self.index_files, self.counts = files, index_files, counts
        self.shard, self.offset, self.size = shard, offset, size
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.shard)

    def __getitem__(self, rows: slice) -> "ShardMembers":
        return ShardMembers(
            self.files, self.index_files, self.counts, self.shard[rows], self.offset[rows], self.size[rows]
        )

    def _file(self, shard: int):
        """This thread's open file of `shard` (the least recently used one closed beyond a few)."""
        files = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = OrderedDict()
        handle = files.get(shard)
        if handle is None:
            if len(files) >= _OPEN_PER_THREAD:
                files.popitem(last=False)[1].close()
            handle = files[shard] = open(self.files[shard], "rb", buffering=0)
        else:
            files.move_to_end(shard)
        return handle

    def read(self, i: int) -> np.ndarray:
        """Sample i's encoded image, uint8 (n,) (OSError when its tar cannot be read or is truncated)."""
        shard, offset, size = int(self.shard[i]), int(self.offset[i]), int(self.size[i])
        data = np.empty(size, dtype=np.uint8)
        got = os.preadv(self._file(shard).fileno(), [data], offset)
        if got != size:
            raise OSError(f"{self.files[shard]}: truncated shard ({got} of {size} bytes at offset {offset})")
        return data

    def stat_key(self, i: int) -> tuple[int, int] | None:
        """(member size, the tar's mtime_ns) of sample i, or None when its tar is gone (verdict cache key)."""
        try:
            return int(self.size[i]), os.stat(self.files[int(self.shard[i])]).st_mtime_ns
        except OSError:
            return None

    def dali_input(self, folder: str | os.PathLike) -> tuple[list[str], list[str]]:
        """(tar paths, index paths) for `fn.readers.webdataset` reading exactly these samples, in order:
        a shard read whole uses its own index; for one read in part an index of those samples is
        written into `folder`."""
        paths, indexes = [], []
        shards, starts = np.unique(self.shard, return_index=True)
        for shard, _ in sorted(zip(shards.tolist(), starts.tolist()), key=lambda pair: pair[1]):
            rows = np.flatnonzero(self.shard == shard)
            paths.append(self.files[shard])
            if len(rows) == self.counts[shard]:
                indexes.append(self.index_files[shard])
                continue
            part = Path(folder) / f"part-{len(indexes):06d}.idx"
            lines = [f"{IMAGE_EXTS[0]} {self.offset[r]} {self.size[r]} {r}.{IMAGE_EXTS[0]}" for r in rows]
            part.write_text(f"v1.2 {len(rows)}\n" + "\n".join(lines) + "\n", encoding="ascii")
            indexes.append(str(part))
        return paths, indexes


def _image_ext(path: str) -> str:
    return _SUFFIX_EXT.get(Path(path).suffix.lower(), IMAGE_EXTS[-1])


def _padded(size: int, unit: int = _BLOCK) -> int:
    return (size + unit - 1) // unit * unit


def _closed_size(offset: int) -> int:
    """The size of a tar closed at `offset`: two end blocks, padded to whole records (tarfile's rule)."""
    return _padded(offset + 2 * _BLOCK, tarfile.RECORDSIZE)


def _sample(split: Split, i: int) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """Sample i of `split` as its tar members [(name, bytes)] (image, .cls) and its member-table row."""
    label = split.labels[i].tolist()
    first = label[0] if isinstance(label, list) else label
    key, ext = f"{i:09d}", _image_ext(split.paths[i])
    try:
        image = split.read(i).tobytes()
    except OSError as exc:  # an input, not an output, error
        raise DatasetError(f"{split.paths[i]}: cannot read image ({exc})") from None
    members = [(f"{key}.{ext}", image), (f"{key}.cls", str(first).encode("ascii"))]
    return members, {"key": key, "ext": ext, "label": label, "source": split.paths[i]}


def _write_split(folder: Path, split_name: str, split: Split, shard_size: int, bar) -> dict:
    """Write one split's tars (each at most `shard_size` bytes, at least one sample), their DALI indexes
    and its member table, each atomically; returns the split's entry of index.json."""
    columns: dict[str, list] = {k: [] for k in ("key", "ext", "shard", "offset", "size", "label", "source")}
    shards: list[dict[str, Any]] = []
    i, pending = 0, None
    while i < len(split):
        name = f"{split_name}-{len(shards):06d}"
        shard = {"file": f"{folder.name}/{name}.tar", "index": f"{folder.name}/{name}.idx", "first": i, "count": 0}
        lines = []
        with atomic_write(folder / f"{name}.tar", "shard") as f:
            tar = tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT)
            while i < len(split):
                members, row = pending or _sample(split, i)
                grows = sum(_BLOCK + _padded(len(data)) for _, data in members)
                if shard["count"] and _closed_size(tar.offset + grows) > shard_size:
                    pending = members, row
                    break
                pending, entries = None, []
                for member, data in members:
                    info = tarfile.TarInfo(member)
                    info.size, info.mode, info.mtime = len(data), 0o444, 0
                    tar.addfile(info, io.BytesIO(data))
                    entries.append((member, tar.offset - _padded(len(data)), len(data)))
                lines.append(" ".join(f"{m.split('.', 1)[1]} {offset} {size} {m}" for m, offset, size in entries))
                row.update(shard=len(shards), offset=entries[0][1], size=entries[0][2])
                for column, values in columns.items():
                    values.append(row[column])
                shard["count"] += 1
                i += 1
                bar.update()
            tar.close()
            shard["bytes"] = f.tell()
        # DALI's webdataset index (wds2idx format v1.2): per sample, its members as "ext offset size name"
        atomic_write_text(folder / f"{name}.idx", f"v1.2 {shard['count']}\n" + "\n".join(lines) + "\n")
        shards.append(shard)
    table = folder / f"{split_name}.json"
    atomic_write_text(table, json.dumps(columns, ensure_ascii=False, separators=(",", ":")))
    return {"count": len(split), "members": f"{folder.name}/{table.name}", "shards": shards}


def _remove_stale_partials(out: Path) -> None:
    """Remove the temporary folders of earlier `write_shards` runs into `out` whose process is gone."""
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 2)[-2]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            continue


def write_shards(
    domains: Mapping[str, Domain],
    out: str | os.PathLike,
    shard_size: int = 256 * 10**6,
    folder_splits: Mapping[str, Mapping] | None = None,
    progress: bool = True,
) -> dict[str, dict[str, int]]:
    """Write `domains` as a shard root at `out` (a new or empty folder); returns {domain: {split: samples}}.

    Written into a temporary folder beside `out` that is renamed into place when complete, so `out`
    is either a finished shard root or untouched; any write error (a full disk) is an `OutputError`
    naming the file, and the partial output is removed.
    folder_splits: {domain: split record} of carved folder domains (kept in the index).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty folder; choose a new folder for the shards")
    with writing(out.parent, "folder"):
        out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    temp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    index: dict[str, Any] = {"format": FORMAT, "version": VERSION, "shard_size": shard_size, "domains": {}}
    total = sum(len(s) for d in domains.values() for s in d.splits.values())
    try:
        with tqdm(total=total, desc="shard", unit="img", leave=False, disable=not progress) as bar:
            for name, domain in domains.items():
                folder = temp / name
                with writing(folder, "folder"):
                    folder.mkdir(parents=True)
                splits = {s: _write_split(folder, s, split, shard_size, bar) for s, split in domain.splits.items()}
                index["domains"][name] = {
                    "num_classes": domain.num_classes,
                    "class_map": [[k, v] for k, v in domain.class_map.items()],
                    "folder_split": (folder_splits or {}).get(name),
                    "splits": splits,
                }
        atomic_write_text(temp / INDEX_FILE, json.dumps(index, indent=1, ensure_ascii=False))
        with writing(out, "--out"):
            if out.exists():
                out.rmdir()
            os.rename(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return {name: {s: spec["count"] for s, spec in d["splits"].items()} for name, d in index["domains"].items()}


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the {what} ({exc})") from exc


def _labels(values: list, path: Path) -> np.ndarray:
    try:
        if any(isinstance(v, list) for v in values):
            width = max(len(v) for v in values)
            return np.array([v + [-1] * (width - len(v)) for v in values], dtype=np.int64)
        return np.array(values, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: malformed 'label' column ({exc})") from exc


def _load_split(root: Path, spec: Mapping, name: str, missing: dict[str, list[str]]) -> Split:
    table_path = root / spec["members"]
    table = _read_json(table_path, "member table")
    n = int(spec["count"])
    for column in ("key", "ext", "shard", "offset", "size", "label"):
        if len(table.get(column, ())) != n:
            raise DatasetError(f"{table_path}: column {column!r} should hold {n} entries (index.json's count)")
    files = [str(root / s["file"]) for s in spec["shards"]]
    members = ShardMembers(
        files,
        [str(root / s["index"]) for s in spec["shards"]],
        np.array([s["count"] for s in spec["shards"]], dtype=np.int64),
        np.array(table["shard"], dtype=np.int32),
        np.array(table["offset"], dtype=np.int64),
        np.array(table["size"], dtype=np.int64),
    )
    gone = [f for f in files if not os.access(f, os.R_OK) or not os.path.isfile(f)]
    if gone:
        missing[str(table_path)] = gone
    else:
        ends = np.zeros(len(files), dtype=np.int64)
        np.maximum.at(ends, members.shard, members.offset + members.size)
        for file, end in zip(files, ends.tolist()):
            if os.path.getsize(file) < end:
                raise DatasetError(
                    f"{file}: truncated shard ({os.path.getsize(file)} bytes, its members reach "
                    f"byte {end}); write the shards again"
                )
    names = [f"{files[s]}:{key}.{ext}" for s, key, ext in zip(table["shard"], table["key"], table["ext"])]
    return Split(names, _labels(table["label"], table_path), name=name, members=members)


def read_index(root: str | os.PathLike) -> dict[str, Any]:
    """The shard root's index.json, checked for its format and version."""
    path = Path(root) / INDEX_FILE
    index = _read_json(path, "shard index")
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DatasetError(f'{path}: not a udon_fast shard index (no "format": "{FORMAT}")')
    if index.get("version") != VERSION:
        raise DatasetError(f"{path}: shard index version {index.get('version')!r}; this udon_fast reads {VERSION}")
    return index


def load_shard_domains(
    root: str | os.PathLike, domains: Iterable[str] | None = None
) -> tuple[dict[str, Domain], dict[str, list[str]]]:
    """The domains of a shard root (all, or `domains`), plus {member table: missing tar files}."""
    root = Path(root)
    index = read_index(root)
    if not isinstance(index.get("domains"), dict):
        raise DatasetError(f'{root / INDEX_FILE}: no "domains" object')
    out, missing = {}, {}
    for name in select_domains(root, sorted(index["domains"]), domains):
        try:
            spec = index["domains"][name]
            if "train" not in spec["splits"]:
                raise DatasetError(f"{root / INDEX_FILE}: domain {name!r} has no train split")
            splits = {s: _load_split(root, sp, s, missing) for s, sp in spec["splits"].items()}
            class_map = {original: label for original, label in spec["class_map"]}
            out[name] = Domain(name, splits["train"], splits, int(spec["num_classes"]), class_map, root / name)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(
                f"{root / INDEX_FILE}: malformed entry of domain {name!r} ({type(exc).__name__}: {exc})"
            ) from None
    return out, missing
