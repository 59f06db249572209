"""`udon_fast.index`: faiss index files (flat, ivf, hnsw), their parameters by size, and the build CLI."""

import json

import faiss
import numpy as np
import pytest

from udon_fast.commands import index as index_cli
from udon_fast.retrieval.embed import write_embeddings as write_pair
from udon_fast.retrieval.index import (
    IndexFileError,
    build_index,
    hnsw_parameters,
    ivf_parameters,
    load_gallery,
    meta_path,
)


def clustered(n: int, seed: int, dim: int = 32, clusters: int = 100) -> np.ndarray:
    """(n, dim) float32 unit rows around `clusters` centres (same centres for every seed)."""
    centres = np.random.default_rng(123).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_embeddings(folder, vectors: np.ndarray, name: str = "gallery.npy"):
    path = folder / name
    write_pair(path, vectors, [f"/images/{i:05d}.jpg" for i in range(len(vectors))], "/runs/a/best.pt")
    return path


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(ids, exact)]))


def test_parameters_follow_the_documented_rule():
    assert ivf_parameters(100_000) == {"nlist": 1265, "nprobe": 79}
    assert ivf_parameters(4_000) == {"nlist": 102, "nprobe": 8}
    assert ivf_parameters(1_000) == {"nlist": 25, "nprobe": 8}  # 39 training points per list
    assert ivf_parameters(100) == {"nlist": 2, "nprobe": 2}
    assert ivf_parameters(77) is None
    assert ivf_parameters(10**12)["nlist"] == 65_536
    assert hnsw_parameters(10_000) == {"M": 16, "efConstruction": 64, "efSearch": 128}
    assert hnsw_parameters(2_000_000) == {"M": 32, "efConstruction": 128, "efSearch": 128}


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_files_search_like_flat(tmp_path, capsys, kind):
    gallery, queries = clustered(4_000, seed=0), clustered(200, seed=1)
    exact_scores = queries @ gallery.T
    exact = np.argsort(-exact_scores, axis=1, kind="stable")[:, :10]
    embeddings = write_embeddings(tmp_path, gallery)
    out = tmp_path / "gallery.faiss"
    assert index_cli.main(["build", "--embeddings", str(embeddings), "--out", str(out), "--kind", kind]) == 0
    assert f"{kind} index of 4000 x 32-d vectors" in capsys.readouterr().out
    meta = json.loads(meta_path(out).read_text())
    assert meta["kind"] == kind and meta["count"] == 4000 and meta["dimension"] == 32
    assert meta["checkpoint"] == "/runs/a/best.pt" and meta["paths"][7] == "/images/00007.jpg"
    assert meta["parameters"] == {"flat": {}, "ivf": ivf_parameters(4000), "hnsw": hnsw_parameters(4000)}[kind]
    loaded = load_gallery(out)
    scores, ids = loaded.search(queries, 10)
    assert ids.shape == (200, 10)
    if kind == "flat":
        np.testing.assert_array_equal(ids[:, 0], exact[:, 0])
        np.testing.assert_allclose(scores, np.take_along_axis(exact_scores, ids, axis=1), rtol=1e-5, atol=1e-5)
    elif kind == "ivf":  # the chosen nprobe travels with the file (0.96 here; faiss's default nprobe 1: 0.79)
        assert loaded.index.nprobe == meta["parameters"]["nprobe"]
        assert recall(ids, exact) >= 0.93
    else:  # efSearch 128 (1.0 here; efSearch 10: 0.94)
        assert loaded.index.hnsw.efSearch == 128
        assert recall(ids, exact) >= 0.98


def test_small_gallery_falls_back_from_ivf_to_flat(tmp_path, capsys):
    embeddings = write_embeddings(tmp_path, clustered(50, seed=4))
    out = tmp_path / "small.faiss"
    assert index_cli.main(["build", "--embeddings", str(embeddings), "--out", str(out), "--kind", "ivf"]) == 0
    assert "note: ivf needs at least 78 vectors" in capsys.readouterr().out
    meta = json.loads(meta_path(out).read_text())
    assert meta["kind"] == "flat" and meta["requested_kind"] == "ivf"
    assert isinstance(faiss.read_index(str(out)), faiss.IndexFlatIP)


def test_build_errors_are_one_line(tmp_path, capsys):
    def error(*args):
        assert index_cli.main(["build", *args]) == 2
        message = capsys.readouterr().err
        assert message.startswith("udon_fast.index: error:") and message.count("\n") == 1
        return message

    assert "missing.npy" in error("--embeddings", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "x.faiss"))
    embeddings = write_embeddings(tmp_path, clustered(100, seed=5))
    if faiss.get_num_gpus() == 0:
        assert "faiss sees no GPU" in error(
            "--embeddings", str(embeddings), "--out", str(tmp_path / "g.faiss"), "--gpu"
        )
    assert "no GPU HNSW" in error(
        "--embeddings", str(embeddings), "--out", str(tmp_path / "h.faiss"), "--kind", "hnsw", "--gpu"
    )
    meta = json.loads(embeddings.with_suffix(".meta.json").read_text())
    embeddings.with_suffix(".meta.json").write_text(json.dumps({**meta, "paths": ["only-one.jpg"]}))
    assert "lists 1 paths" in error("--embeddings", str(embeddings), "--out", str(tmp_path / "y.faiss"))
    with pytest.raises(IndexFileError, match="y.faiss.meta.json"):
        load_gallery(tmp_path / "y.faiss")


@pytest.mark.gpu
def test_gpu_build_matches_cpu(tmp_path):
    gallery, queries = clustered(4_000, seed=0), clustered(50, seed=1)
    for kind in ("flat", "ivf"):
        cpu, _ = build_index(gallery, kind)
        gpu, info = build_index(gallery, kind, gpu=True)
        assert info["kind"] == kind and gpu.ntotal == 4000
        _, cpu_ids = cpu.search(queries, 10)
        _, gpu_ids = gpu.search(queries, 10)
        assert recall(gpu_ids, cpu_ids) >= 0.95
