"""`--class-parallel` training on 2 gloo ranks: the losses of a data-parallel 2-rank run to 1e-4, the DCP
checkpoint layout (a manifest and its folder), whole classifiers read back equal to the data-parallel run's,
an exact resume after a crash between the DCP folder and the manifest, evaluation and export from the
manifest, and `evaluate` embedding on both ranks with the single-rank results."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_helpers import free_port, run_ranks, use_port

from udon_fast.commands import train as train_cli
from udon_fast.commands.train import parse_args
from udon_fast.data.synthetic import write_tiny_uned
from udon_fast.model import CheckpointError, load_model
from udon_fast.model.checkpoint import read_checkpoint
from udon_fast.trainer import distributed_checkpoint
from udon_fast.trainer.state import load_run

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
    "2",
    "--eval-batch-size",
    "4",
    "--frozen-epochs",
    "1",
    "--no-compile",
    "--no-progress",
    "--deterministic",
    "--data-threads",
    "1",
    "--steps",
    "6",
    "--grad-clip",
    "0.05",
]
TERMS = ("total", "teacher_ce", "student_ce", "kl", "similarity")
CRASH_STEP = 4


def _crash_on_manifest(real):
    """write_checkpoint that fails for the manifest of step CRASH_STEP: its DCP folder is on disk."""

    def write(path, config, state, optimizer, extra):
        if extra["progress"]["step"] == CRASH_STEP and Path(path).name == "last.pt":
            raise OSError("simulated crash before the manifest")
        return real(path, config, state, optimizer, extra)

    return write


def _worker(rank, world, root, data_root, ports):
    """Data-parallel and class-parallel runs, a crashed + resumed one, evaluate on both ranks; one process per rank."""
    from udon_fast.commands import evaluate as evaluate_cli
    from udon_fast.data import knn_pairs, load_domains
    from udon_fast.evaluation.protocol import _embed_share, embed_split, evaluate_model
    from udon_fast.trainer.loop import train

    root, out = Path(root), {}
    base = ["--data-root", str(data_root), *TINY]
    use_port(ports[0])
    train(parse_args([*base, "--out", str(root / "dp")]))
    use_port(ports[1])
    train(parse_args([*base, "--out", str(root / "cp"), "--class-parallel"]))
    real = distributed_checkpoint.write_checkpoint
    distributed_checkpoint.write_checkpoint = _crash_on_manifest(real)
    use_port(ports[2])
    try:
        train(parse_args([*base, "--out", str(root / "crashed"), "--class-parallel"]))
        out["crash"] = "no error"
    except (OSError, ValueError) as exc:
        out["crash"] = f"{type(exc).__name__}: {exc}"
    distributed_checkpoint.write_checkpoint = real
    out["after_crash"] = sorted(p.name for p in (root / "crashed" / "checkpoints").iterdir() if p.is_dir())
    use_port(ports[3])
    train(parse_args([*base, "--out", str(root / "crashed"), "--class-parallel", "--resume"]))
    use_port(ports[4])
    out["evaluate_rc"] = evaluate_cli.main(
        [
            "--checkpoint",
            str(root / "cp" / "checkpoints" / "best.pt"),
            "--data-root",
            str(data_root),
            "--out",
            str(root / "evaluated"),
            "--batch-size",
            "4",
            "--data-threads",
            "1",
        ]
    )
    model, _ = load_model(root / "cp" / "checkpoints" / "best.pt")
    domains = load_domains(data_root, list(model.domains))
    if rank == 0:
        out["single"] = evaluate_model(model, domains, "test", batch_size=4, num_threads=1, progress=False)
    use_port(ports[5])
    torch.distributed.init_process_group("gloo")
    try:
        query, _ = knn_pairs(domains["birds"], "test")
        options = dict(batch_size=4, device=torch.device("cpu"), teacher=True, num_threads=1, progress=False)
        shared = _embed_share(model, query, "birds", **options)
        if rank == 0:
            alone = embed_split(model, query, "birds", **options)
            out["same_embeddings"] = np.array_equal(shared.student, alone.student) and np.array_equal(
                shared.teacher, alone.teacher
            )
    finally:
        torch.distributed.destroy_process_group()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("class_parallel")
    data_root = root / "uned"
    write_tiny_uned(
        data_root,
        {"shops": {"train": 6, "val": 3, "test": 3, "index": 3}, "birds": {"train": 10, "val": 4, "test": 4}},
        per_class=3,
    )
    results = run_ranks(_worker, 2, str(root), str(data_root), [free_port() for _ in range(6)], process_group=False)
    return root, data_root, results


def _metrics(path: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in path.read_text().splitlines()
    ]


def test_losses_match_a_data_parallel_run(runs):
    root, _, _ = runs
    dp, cp = _metrics(root / "dp" / "metrics.jsonl"), _metrics(root / "cp" / "metrics.jsonl")
    assert [r["step"] for r in cp] == list(range(6))
    assert [r["domain"] for r in cp] == [r["domain"] for r in dp]
    for a, b in zip(dp, cp):
        for term in TERMS:
            assert abs(a[term] - b[term]) <= 1e-4, (a["step"], term, a[term], b[term])


def test_checkpoint_is_a_manifest_of_a_dcp_folder_with_the_whole_classifiers(runs):
    root, _, _ = runs
    checkpoints = root / "cp" / "checkpoints"
    manifest = read_checkpoint(checkpoints / "last.pt", model_state=False)
    assert manifest["model"] == {} and "class_slices" not in manifest["config"]
    info = manifest["extra"]["distributed_checkpoint"]
    assert (info["world_size"], info["step"], info["global_batch"], info["dir"]) == (2, 6, 16, "last-step000000006")
    assert len(info["data"]) == len(info["rng"]) == 2
    best_step = read_checkpoint(checkpoints / "best.pt", model_state=False)["extra"]["distributed_checkpoint"]["step"]
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == sorted(
        [f"best-step{best_step:09d}", "last-step000000006"]
    )
    assert sorted(p.name for p in (checkpoints / "last-step000000006").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    model, _ = load_model(checkpoints / "last.pt")
    assert model.teacher_classifier("shops").shape == (6, 256) and model.student_classifier("birds").shape == (10, 64)
    reference, _ = load_model(root / "dp" / "checkpoints" / "last.pt")
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=1e-4, msg=lambda m: f"{name}: {m}")
    with torch.no_grad():
        assert model.embed(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_class_parallel_checkpoint_exports(runs, tmp_path):
    """`python -m udon_fast.export` reads a class-parallel manifest (no classifier rows needed): the file it
    writes embeds like `load_embedder` and like the model `load_model` rebuilds from the manifest."""
    from udon_fast.commands import export
    from udon_fast.model import load_embedder

    root, _, _ = runs
    manifest = root / "cp" / "checkpoints" / "best.pt"
    out = tmp_path / "embedder.ts.pt"
    assert export.main(["--checkpoint", str(manifest), "--format", "torchscript", "--out", str(out)]) == 0
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model, _ = load_model(manifest)
    with torch.no_grad():
        expected = load_embedder(manifest)(images)
        torch.testing.assert_close(torch.jit.load(str(out))(images), expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(model.embed(images), expected, rtol=0, atol=1e-5)


def test_resume_after_a_crash_before_the_manifest_is_exact(runs):
    root, _, results = runs
    assert "simulated crash before the manifest" in results[0]["crash"]
    assert "rank 0 failed to write " in results[1]["crash"] and "simulated crash" in results[1]["crash"]
    left = results[0]["after_crash"]
    assert f"last-step{CRASH_STEP:09d}" in left  # orphaned: the manifest never named it
    assert "last-step000000003" in left  # what the surviving manifest names
    assert _metrics(root / "crashed" / "metrics.jsonl") == _metrics(root / "cp" / "metrics.jsonl")
    assert json.loads((root / "crashed" / "results.json").read_text()) == json.loads(
        (root / "cp" / "results.json").read_text()
    )
    assert not any(f"step{CRASH_STEP:09d}" in p.name for p in (root / "crashed" / "checkpoints").iterdir())


def test_evaluate_on_two_ranks_equals_single_rank(runs):
    root, _, results = runs
    assert [r["evaluate_rc"] for r in results] == [0, 0]
    assert json.loads((root / "evaluated" / "results.json").read_text()) == json.loads(json.dumps(results[0]["single"]))
    assert results[0]["same_embeddings"]


def test_a_distributed_checkpoint_names_what_is_wrong(runs, tmp_path):
    root, _, _ = runs
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(root / "cp" / "checkpoints", checkpoints)
    with pytest.raises(ValueError, match="was written by a run on 2 ranks; resume it with torchrun"):
        load_run(checkpoints / "last.pt", None, None, None, None)
    (checkpoints / "last-step000000006" / "__1_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint folder .*last-step000000006: rank\(s\) \[0\]"):
        load_model(checkpoints / "last.pt")
    shutil.rmtree(checkpoints / "last-step000000006")
    with pytest.raises(
        CheckpointError,
        match=r"last.pt names the checkpoint folder .*last-step000000006, which "
        r"cannot be read",
    ):
        load_model(checkpoints / "last.pt")


def test_class_parallel_needs_a_torchrun_job_and_a_fused_backend(runs, capsys):
    root, data_root, _ = runs
    argv = ["--data-root", str(data_root), *TINY, "--out", str(root / "single"), "--class-parallel"]
    assert train_cli.main(argv) == 2
    assert "--class-parallel shards the classifiers over the ranks of a torchrun job" in capsys.readouterr().err
    assert train_cli.main([*argv, "--loss-backend", "reference"]) == 2
    assert "--class-parallel needs a fused --loss-backend" in capsys.readouterr().err
