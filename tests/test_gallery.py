"""Result galleries: the merged-index neighbours and their marks (against a brute-force oracle), the
pages of `train` (on by default), `evaluate --gallery` and `search --html`: K seeded queries per
domain with their top-5, correct/wrong marks, the trained-vs-off-the-shelf sections, thumbnails
copied into the folder and relative links only (the folder still works after a move)."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from udon_fast.commands import embed as embed_cli
from udon_fast.commands import evaluate, search
from udon_fast.commands import index as index_cli
from udon_fast.commands.train import parse_args
from udon_fast.data import Domain, Split
from udon_fast.evaluation.protocol import Embedded
from udon_fast.gallery import compare, merged_search, sample_rows
from udon_fast.trainer.loop import train

TINY = [
    "--backbone",
    "vit_tiny_patch16_224",
    "--pretrained",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--update-every",
    "2",
    "--checkpoint-every",
    "4",
    "--eval-batch-size",
    "16",
    "--frozen-epochs",
    "1",
    "--no-compile",
    "--no-progress",
    "--deterministic",
    "--data-threads",
    "1",
    "--decoder",
    "torchvision",
]
LINK = re.compile(r'(?:src|href)="([^"]*)"')


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory):
    """A finished 6-step run with the trainer's default --gallery (8) and baseline."""
    out = tmp_path_factory.mktemp("gallery_run") / "out"
    train(parse_args(["--data-root", str(data_root), "--out", str(out), *TINY, "--steps", "6"]))
    return out


def _domain(name: str, query: Split, index: Split | None, classes: int) -> Domain:
    splits = {"test": query} | ({"index": index} if index is not None else {})
    return Domain(name, query, splits, classes, {f"k{c}": c for c in range(classes)})


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_merged_search_matches_brute_force_and_marks():
    rng = np.random.default_rng(0)
    a_query = Split([f"/a/q{i}.jpg" for i in range(7)], rng.integers(0, 3, 7).astype(np.int64), "test")
    a_index = Split([f"/a/x{i}.jpg" for i in range(9)], rng.integers(0, 3, 9).astype(np.int64), "index")
    b_query = Split([f"/b/q{i}.jpg" for i in range(6)], rng.integers(0, 2, 6).astype(np.int64), "test")  # own index
    domains = {"a": _domain("a", a_query, a_index, 3), "b": _domain("b", b_query, None, 2)}
    emb = {name: _unit(rng.normal(size=(n, 5))) for name, n in (("aq", 7), ("ax", 9), ("bq", 6))}
    sets = {
        "a": (Embedded(emb["aq"], None, a_query.labels), Embedded(emb["ax"], None, a_index.labels)),
        "b": (Embedded(emb["bq"], None, b_query.labels), None),
    }
    found = merged_search(domains, "test", sets)
    index = np.concatenate([emb["ax"], emb["bq"]])
    index_domain = np.array([0] * 9 + [1] * 6)
    index_labels = np.concatenate([a_index.labels, b_query.labels])
    queries = np.concatenate([emb["aq"], emb["bq"]])
    query_labels = np.concatenate([a_query.labels, b_query.labels])
    for q in range(13):
        scores = index @ queries[q]
        if q >= 7:
            scores[9 + q - 7] = -np.inf  # a leave-one-out query never finds itself
        expected = np.argsort(-scores, kind="stable")[:5]
        assert found.ids[q].tolist() == expected.tolist()
        np.testing.assert_allclose(found.scores[q], scores[expected], rtol=1e-5)
        q_domain = 0 if q < 7 else 1
        marks = (index_domain[expected] == q_domain) & (index_labels[expected] == query_labels[q])
        assert found.correct[q].tolist() == marks.tolist()
    result = found.result(8)
    assert result.path == "/b/q1.jpg" and result.domain == "b" and result.label == f"k{b_query.labels[1]}"
    assert [h.path for h in result.hits] == [([*a_index.paths, *b_query.paths])[i] for i in found.ids[8]]
    assert all(h.label.startswith("k") for h in result.hits)

    other = merged_search(domains, "test", {"a": sets["a"], "b": (Embedded(-emb["bq"], None, b_query.labels), None)})
    right_wrong, wrong_right = compare(found, other, "b")
    rows = found.rows_of("b")
    assert set(right_wrong) == {r for r in rows if found.correct[r, 0] and not other.correct[r, 0]}
    assert set(wrong_right) == {r for r in rows if not found.correct[r, 0] and other.correct[r, 0]}


def test_sample_is_seeded_and_bounded():
    rows = np.arange(10, 40)
    first = sample_rows(rows, 8, seed=3)
    assert first.tolist() == sample_rows(rows, 8, seed=3).tolist() and len(set(first)) == 8
    assert set(first) <= set(rows) and first.tolist() == sorted(first)
    assert sample_rows(rows, 8, seed=4).tolist() != first.tolist()
    assert sample_rows(rows[:5], 8, seed=3).tolist() == rows[:5].tolist()


def _check_self_contained(folder: Path) -> list[str]:
    """Every src/href of every page is relative and names a file inside `folder`; returns the links."""
    links = []
    for page in folder.glob("*.html"):
        for link in LINK.findall(page.read_text()):
            assert not re.match(r"^([a-z]+:|/)", link), f"{page.name}: absolute link {link}"
            assert (folder / link).resolve().is_file() and folder.resolve() in (folder / link).resolve().parents
            links.append(link)
    return links


def test_trainer_writes_the_gallery_by_default(run, tmp_path):
    folder = run / "gallery"
    index = (folder / "index.html").read_text()
    assert 'href="birds.html"' in index and 'href="shops.html"' in index
    assert "off-the-shelf backbone right at rank 1" in index
    for domain, queries in (("birds", 12), ("shops", 9)):
        html = (folder / f"{domain}.html").read_text()
        sample = html.split("<h2>Sample of queries</h2>")[1].split("<h2>")[0]
        assert sample.count('<figure class="query">') == 8  # K = 8 of the domain's queries
        assert sample.count('<figure class="hit') == 8 * 5  # top-5 each
        assert sample.count("&#10003; correct") + sample.count("&#10007; wrong") == 8 * 5
        assert "class " in sample and re.search(r"#1 &middot; [01]\.\d{3}", sample)
        assert f"of {queries} queries right at rank 1" in html
        assert "Trained model right, off-the-shelf backbone wrong" in html
        assert "Off-the-shelf backbone right, trained model wrong" in html
    links = _check_self_contained(folder)
    assert any(link.startswith("thumbs/") for link in links)
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)
    try:
        _check_self_contained(moved)
    finally:
        shutil.copytree(moved, folder)


def test_evaluate_gallery_is_seeded_and_compares_with_the_backbone(run, data_root, tmp_path, capsys):
    checkpoint = run / "checkpoints" / "best.pt"
    common = [
        "--checkpoint",
        str(checkpoint),
        "--data-root",
        str(data_root),
        "--decoder",
        "torchvision",
        "--batch-size",
        "16",
        "--data-threads",
        "1",
        "--gallery",
        "3",
    ]
    assert evaluate.main([*common, "--out", str(tmp_path / "a")]) == 0
    assert evaluate.main([*common, "--out", str(tmp_path / "b"), "--gallery-baseline", "none"]) == 0
    a, b = (tmp_path / "a" / "gallery"), (tmp_path / "b" / "gallery")
    for domain in ("birds", "shops"):
        first, second = (a / f"{domain}.html").read_text(), (b / f"{domain}.html").read_text()
        sample = first.split("<h2>Sample of queries</h2>")[1].split("</body>")[0]
        assert sample.count('<figure class="query">') == 3
        assert "off-the-shelf" not in first  # nothing to compare with
        assert "Trained model right, off-the-shelf backbone wrong" in second
        assert second.split("<h2>Sample of queries</h2>")[1].split("<h2>")[0].strip() == sample.strip()  # seeded
    _check_self_contained(a)
    _check_self_contained(b)
    capsys.readouterr()
    assert evaluate.main([*common[:-2], "--out", str(tmp_path / "c"), "--gallery-baseline", "none"]) == 2
    assert "--gallery-baseline goes with --gallery K" in capsys.readouterr().err
    assert evaluate.main([*common[:-1], "0", "--out", str(tmp_path / "c")]) == 2
    assert "--gallery must be >= 1" in capsys.readouterr().err


def test_search_html_renders_the_hits(run, data_root, tmp_path):
    checkpoint = run / "checkpoints" / "best.pt"
    images = Path(data_root) / "images" / "birds"
    assert (
        embed_cli.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "e.npy"),
                "--decoder",
                "torchvision",
                "--data-threads",
                "1",
            ]
        )
        == 0
    )
    assert index_cli.main(["build", "--embeddings", str(tmp_path / "e.npy"), "--out", str(tmp_path / "g.faiss")]) == 0
    queries = sorted((images / "test").glob("*.jpg"))[:2]
    folder = tmp_path / "q"
    folder.mkdir()
    for q in queries:
        shutil.copy(q, folder / q.name)
    out = tmp_path / "html"
    assert (
        search.main(
            [
                "--index",
                str(tmp_path / "g.faiss"),
                "--query",
                str(folder),
                "--top",
                "4",
                "--html",
                str(out),
                "--decoder",
                "torchvision",
                "--data-threads",
                "1",
            ]
        )
        == 0
    )
    html = (out / "index.html").read_text()
    assert html.count('<figure class="query">') == 2 and html.count('<figure class="hit ">') == 8
    assert "#1 &middot; 1.000" in html  # each query is itself a gallery image
    assert "class test" in html  # the folder the hit is in
    assert "correct" not in html.split("<body>")[1]  # no marks without labels
    _check_self_contained(out)
