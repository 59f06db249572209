"""faiss index files for a gallery, and `python -m udon_fast.index build`.

    python -m udon_fast.index build --embeddings E.npy --out GALLERY.faiss [--kind flat|ivf|hnsw] [--gpu]

reads E.npy ((N, D) float32 unit-norm rows, from `python -m udon_fast.embed`) and E.meta.json (its
image paths, checkpoint, shape and the .npy's checksum: the pair is checked, and every row must be
finite), builds an inner-product (= cosine) index and writes GALLERY.faiss (`faiss.write_index`'s
bytes) plus GALLERY.faiss.meta.json: {"format", "version", "kind", "requested_kind", "parameters",
"dimension", "count", "metric", "checkpoint", "embeddings", "paths", "note", "sha256", "bytes"},
where paths[i] is the image of index row i and sha256/bytes describe GALLERY.faiss; both files are
written as a pair (`files.pairs`).  `python -m udon_fast.search --index GALLERY.faiss` reads and
checks both.

Kinds and the parameters chosen by gallery size N (recall against flat: `bench/test_bench_index.py`):
- flat: `IndexFlatIP`, exact.
- ivf: `IndexIVFFlat` over an `IndexFlatIP` coarse quantiser.  nlist = round(4 sqrt(N)), clipped
  to [1, N // 39] (faiss's k-means wants at least 39 training points per list) and to 65,536;
  trained on the gallery itself (faiss samples at most 256 points per list); nprobe =
  max(8, nlist // 16) clipped to nlist, i.e. about 1/16 of the lists: recall first.  A gallery too
  small for two lists (N < 78) gets a flat index instead, and the note says so.
- hnsw: `IndexHNSWFlat`, M = 16 below 1M vectors, else 32; efConstruction = max(40, 4 M);
  efSearch = 128 (faiss's HNSW search widens to K itself when K is larger).
`--gpu` builds flat and ivf indexes with faiss's GPU index when faiss sees a GPU (the file written
is the CPU copy); faiss has no GPU HNSW here.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import InputError
from ..files.pairs import check_pair, write_pair

KINDS = ("flat", "ivf", "hnsw")
FORMAT, VERSION = "udon_fast.index", 1
MIN_POINTS_PER_LIST = 39
MAX_LISTS = 65_536
HNSW_EF_SEARCH = 128


class IndexFileError(InputError):
    """An index or embeddings file that is missing, unreadable or inconsistent (names the file)."""


def ivf_parameters(n: int) -> dict[str, int] | None:
    """{"nlist", "nprobe"} for a gallery of `n` vectors, or None when `n` is too small for two lists."""
    nlist = min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST, MAX_LISTS)
    if nlist < 2:
        return None
    return {"nlist": nlist, "nprobe": min(nlist, max(8, nlist // 16))}


def hnsw_parameters(n: int) -> dict[str, int]:
    """{"M", "efConstruction", "efSearch"} for a gallery of `n` vectors."""
    m = 16 if n < 1_000_000 else 32
    return {"M": m, "efConstruction": max(40, 4 * m), "efSearch": HNSW_EF_SEARCH}


@dataclass
class Gallery:
    """A searchable gallery: a faiss index, the image path of every row and where it came from."""

    index: Any
    paths: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dimension(self) -> int:
        return self.index.d

    def search(self, queries: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k) float32, row ids (Q, k) int64) by decreasing inner product, k = min(top, N);
        rows an approximate index could not fill have id -1."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(top, self.index.ntotal))


def _gpu_resources():
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        raise InputError("--gpu: faiss sees no GPU (a faiss build with GPU support and a CUDA device are needed)")
    return faiss.StandardGpuResources()


def build_index(embeddings: np.ndarray, kind: str = "flat", gpu: bool = False) -> tuple[Any, dict[str, Any]]:
    """An inner-product index of `embeddings` (N, D) float32 holding every row in order.

    Returns (CPU faiss index, {"kind": built kind, "requested_kind", "parameters", "note"}).
    """
    if kind not in KINDS:
        raise InputError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = x.shape
    info = {"kind": kind, "requested_kind": kind, "parameters": {}, "note": ""}
    if kind == "ivf":
        params = ivf_parameters(n)
        if params is None:
            info.update(
                kind="flat",
                note=f"ivf needs at least {2 * MIN_POINTS_PER_LIST} vectors for two lists of "
                f"{MIN_POINTS_PER_LIST} training points; {n} given: built flat (exact)",
            )
            kind = "flat"
        else:
            info["parameters"] = params
    if kind == "hnsw":
        if gpu:
            raise InputError("--gpu: faiss has no GPU HNSW index here; build hnsw without --gpu, or use --kind ivf")
        params = hnsw_parameters(n)
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["efConstruction"]
        index.hnsw.efSearch = params["efSearch"]
        info["parameters"] = params
        index.add(x)
        return index, info
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, info["parameters"]["nlist"], faiss.METRIC_INNER_PRODUCT)
    if gpu:
        resources = _gpu_resources()
        on_gpu = faiss.index_cpu_to_gpu(resources, 0, index)
        if kind == "ivf":
            on_gpu.train(x)
        on_gpu.add(x)
        index = faiss.index_gpu_to_cpu(on_gpu)
    else:
        if kind == "ivf":
            index.train(x)
        index.add(x)
    if kind == "ivf":  # set on the final CPU index (a GPU round trip does not keep it)
        index.nprobe = info["parameters"]["nprobe"]
    return index, info


def meta_path(index_path: Path) -> Path:
    """GALLERY.faiss -> GALLERY.faiss.meta.json."""
    return index_path.with_name(index_path.name + ".meta.json")


def embeddings_meta_path(embeddings: Path) -> Path:
    """E.npy -> E.meta.json: the image paths and checkpoint `udon_fast.embed` writes beside E.npy."""
    return embeddings.with_suffix(".meta.json")


def _read_meta(meta_file: Path) -> Any:
    try:
        return json.loads(meta_file.read_text(encoding="utf-8"))
    except RecursionError as exc:
        raise IndexFileError(f"{meta_file}: malformed JSON (nested too deeply)") from exc
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, malformed JSON
        raise IndexFileError(f"{meta_file}: malformed JSON ({exc})") from exc


def _check_pair(data: Path, meta_file: Path, meta: dict[str, Any], writer: str) -> None:
    try:
        check_pair(data, meta_file, meta, writer)
    except ValueError as exc:
        raise IndexFileError(str(exc)) from exc


def read_embeddings(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(embeddings (N, D) float32, E.meta.json {"paths", "checkpoint"?, ...}) written by
    `udon_fast.embed`; `IndexFileError` naming the file that is missing or malformed, the pair when
    the two files do not belong together (`files.pairs.check_pair`, shape), the row that is not finite."""
    meta_file = embeddings_meta_path(path)
    if not path.is_file() or not meta_file.is_file():
        raise IndexFileError(f"--embeddings: need {path} and {meta_file} (written by udon_fast.embed)")
    try:
        embeddings = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IndexFileError(f"--embeddings {path} is not a .npy array written by udon_fast.embed ({exc})") from exc
    if embeddings.ndim != 2 or embeddings.dtype.kind != "f" or not len(embeddings):
        raise IndexFileError(
            f"--embeddings {path}: expected an (N, D) float array with N >= 1, got "
            f"{embeddings.dtype} {embeddings.shape}"
        )
    meta = _read_meta(meta_file)
    if not (
        isinstance(meta, dict) and isinstance(meta.get("paths"), list) and isinstance(meta.get("checkpoint", ""), str)
    ):
        raise IndexFileError(
            f'{meta_file}: expected {{"paths": [image paths], "checkpoint": path}} as written by udon_fast.embed'
        )
    _check_pair(path, meta_file, meta, "python -m udon_fast.embed")
    if len(meta["paths"]) != len(embeddings) or meta.get("shape") != list(embeddings.shape):
        raise IndexFileError(
            f"--embeddings: {path} has shape {embeddings.shape} but {meta_file} records shape "
            f"{meta.get('shape')} and lists {len(meta['paths'])} paths"
        )
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise IndexFileError(
            f"--embeddings {path}: row {row} ({meta['paths'][row]}) holds NaN or inf values "
            f"({int((~finite).sum())} such row(s))"
        )
    return embeddings.astype(np.float32, copy=False), meta


def write_gallery(out: Path, index: Any, info: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Write the index file and its meta file as a pair (`files.pairs.write_pair`); return the meta written."""
    record = {
        "format": FORMAT,
        "version": VERSION,
        **info,
        "dimension": index.d,
        "count": index.ntotal,
        "metric": "inner_product",
        **meta,
    }
    return write_pair(out, lambda f: f.write(faiss.serialize_index(index).tobytes()), meta_path(out), record, "--out")


def load_gallery(path: str | Path) -> Gallery:
    """The index file `path` and its meta file, checked against each other (checksum, count, dimension)."""
    path = Path(path)
    meta_file = meta_path(path)
    if not path.is_file() or not meta_file.is_file():
        raise IndexFileError(f"--index: need {path} and {meta_file} (written by python -m udon_fast.index build)")
    meta = _read_meta(meta_file)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("paths"), list):
        raise IndexFileError(f"--index: {meta_file} is not a udon_fast index meta file")
    _check_pair(path, meta_file, meta, "python -m udon_fast.index build")
    try:
        index = faiss.read_index(str(path))
    except (ValueError, OSError, RuntimeError) as exc:
        raise IndexFileError(f"--index: cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if len(meta["paths"]) != index.ntotal or meta.get("dimension") != index.d:
        raise IndexFileError(
            f"--index: {path} holds {index.ntotal} vectors of {index.d} dims but {meta_file} "
            f"lists {len(meta['paths'])} paths of {meta.get('dimension')} dims"
        )
    return Gallery(index, meta["paths"], meta)


def build(embeddings_path: Path, out: Path, kind: str, gpu: bool) -> dict[str, Any]:
    """`index build`: read E.npy + E.meta.json, build, write OUT and OUT.meta.json; return the meta."""
    embeddings, source = read_embeddings(embeddings_path)
    index, info = build_index(embeddings, kind, gpu)
    return write_gallery(
        out,
        index,
        info,
        {
            "checkpoint": source.get("checkpoint"),
            "embeddings": str(embeddings_path.resolve()),
            "paths": source["paths"],
        },
    )
