"""`python -m udon_fast.evaluate`, `udon_fast.embed` and `udon_fast.search` on a tiny dataset."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from udon_fast.commands import embed as embed_cli
from udon_fast.commands import evaluate as evaluate_cli
from udon_fast.commands import search as search_cli
from udon_fast.data import load_domains
from udon_fast.data.synthetic import write_tiny_uned
from udon_fast.evaluation import protocol as evaluation
from udon_fast.evaluation.protocol import evaluate_model
from udon_fast.model import UDONModel, save_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("uned")
    # shops: test class 4 (3 queries) is absent from the index: those queries have no positive
    write_tiny_uned(
        root,
        {"shops": {"train": 5, "val": 3, "test": 5, "index": 4}, "birds": {"train": 6, "val": 3, "test": 4}},
        per_class=3,
    )
    domains = load_domains(root)
    torch.manual_seed(0)
    model = UDONModel("vit_tiny_patch16_224", {n: d.num_classes for n, d in domains.items()}, image_size=32)
    checkpoint = save_checkpoint(root / "model.pt", model)
    return root, domains, model, checkpoint


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", f"udon_fast.{module}", *args], capture_output=True, text=True)


def test_evaluate_writes_results_matching_the_library(setup, tmp_path):
    root, domains, model, checkpoint = setup
    result = _run("evaluate", "--checkpoint", str(checkpoint), "--data-root", str(root), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((tmp_path / "results.json").read_text())
    expected = evaluate_model(model, domains, "test", progress=False)
    assert saved == json.loads(json.dumps(expected))
    csv_rows = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_rows[0] == (
        "embedding,index,domain,p_at_1,mmp_at_5,num_queries,num_queries_without_positives,no_positive"
    )
    assert len(csv_rows) == 1 + 3 * 3
    assert csv_rows[2].startswith("student,merged,shops,") and csv_rows[2].endswith(",15,3,miss")
    assert csv_rows[3].startswith("student,merged,mean,") and csv_rows[3].endswith(",27,3,miss")
    markdown = (tmp_path / "results.md").read_text()
    assert "| mean |" in markdown and "no_positive=miss" in markdown
    assert saved["student"]["merged"]["mean"]["no_positive"] == "miss"


def test_evaluate_no_positive_exclude(setup, tmp_path):
    root, domains, model, checkpoint = setup
    result = _run(
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--data-root",
        str(root),
        "--out",
        str(tmp_path),
        "--index",
        "separate",
        "--embedding",
        "student",
        "--no-positive",
        "exclude",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    exclude = json.loads((tmp_path / "results.json").read_text())["student"]["separate"]
    assert exclude == json.loads(
        json.dumps(
            evaluate_model(
                model, domains, "test", index="separate", embedding="student", no_positive="exclude", progress=False
            )["student"]["separate"]
        )
    )
    assert exclude["mean"]["no_positive"] == "exclude"
    assert (exclude["shops"]["num_queries"], exclude["shops"]["num_queries_without_positives"]) == (15, 3)
    miss = evaluate_model(model, domains, "test", index="separate", embedding="student", progress=False)
    miss = miss["student"]["separate"]
    # 12 of the 15 shops queries have a positive; every birds query has one
    assert exclude["shops"]["mmp_at_5"] > 0
    for key in ("p_at_1", "mmp_at_5"):
        assert miss["shops"][key] == pytest.approx(exclude["shops"][key] * 12 / 15)
        assert miss["birds"][key] == exclude["birds"][key]
    assert (tmp_path / "results.csv").read_text().splitlines()[2].endswith(",15,3,exclude")
    assert "no_positive=exclude" in (tmp_path / "results.md").read_text()


def test_evaluate_rejects_an_unknown_no_positive_rule(setup, tmp_path):
    result = _run("evaluate", "--checkpoint", str(setup[3]), "--out", str(tmp_path), "--no-positive", "drop")
    assert result.returncode == 2 and "--no-positive" in result.stderr


def test_evaluate_options_select_what_is_computed(setup, tmp_path):
    root, _, _, checkpoint = setup
    result = _run(
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--data-root",
        str(root),
        "--out",
        str(tmp_path),
        "--split",
        "val",
        "--index",
        "merged",
        "--embedding",
        "student",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved) == ["student"] and list(saved["student"]) == ["merged"]


def test_evaluate_embed_and_search_pass_the_decoder_on(setup, tmp_path, capsys, monkeypatch):
    """--decoder reaches every EvalLoader (in-process calls of the CLIs' main, loaders spied on)."""
    root, _, _, checkpoint = setup
    used = []
    loader = evaluation.EvalLoader
    monkeypatch.setattr(evaluation, "EvalLoader", lambda *args, **kw: used.append(kw["decoder"]) or loader(*args, **kw))
    assert (
        evaluate_cli.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--data-root",
                str(root),
                "--out",
                str(tmp_path),
                "--decoder",
                "torchvision",
                "--index",
                "separate",
                "--embedding",
                "student",
            ]
        )
        == 0
    )
    assert (tmp_path / "results.json").is_file() and len(used) == 3  # shops: test, index; birds: test
    images, out = root / "images" / "shops" / "test", tmp_path / "emb.npy"
    assert (
        embed_cli.main(
            ["--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out), "--decoder", "torchvision"]
        )
        == 0
    )
    query = json.loads((tmp_path / "emb.meta.json").read_text())["paths"][4]
    capsys.readouterr()
    assert search_cli.main(["--embeddings", str(out), "--query", query, "--top", "2", "--decoder", "torchvision"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[-1] == query
    assert used == ["torchvision"] * 5  # + embed, + the query


def test_evaluate_names_a_missing_checkpoint(tmp_path):
    result = _run("evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path))
    assert result.returncode == 2 and "none.pt" in result.stderr


def test_embed_then_search_finds_the_query_itself(setup, tmp_path):
    root, _, _, checkpoint = setup
    images = root / "images" / "birds" / "test"
    out = tmp_path / "emb.npy"
    result = _run("embed", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    embeddings = np.load(out)
    meta = json.loads((tmp_path / "emb.meta.json").read_text())
    assert embeddings.shape == (12, 64) and len(meta["paths"]) == 12
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    query = meta["paths"][5]
    result = _run("search", "--embeddings", str(out), "--query", query, "--top", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[-1] == query


def test_search_errors_name_the_inputs(setup, tmp_path):
    result = _run("search", "--embeddings", str(tmp_path / "missing.npy"), "--query", "x.jpg")
    assert result.returncode == 2 and "missing.npy" in result.stderr
    result = _run("embed", "--checkpoint", str(setup[3]), "--images", str(tmp_path), "--out", str(tmp_path / "e.npy"))
    assert result.returncode == 2 and "holds no image files" in result.stderr
