"""The trainer end to end on a tiny generated dataset: outputs, NaN stop, torchrun (resume: test_resume.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from udon_fast.commands import train as train_cli
from udon_fast.commands.train import parse_args
from udon_fast.data import load_domains
from udon_fast.model import UDONModel
from udon_fast.trainer.loop import TrainingDiverged, train

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
    "16",
    "--frozen-epochs",
    "1",
    "--no-compile",
    "--no-progress",
    "--deterministic",
    "--data-threads",
    "1",
]


def _args(data_root, out, *extra):
    return ["--data-root", str(data_root), "--out", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    results = train(parse_args(_args(data_root, out, "--steps", "8")))
    return out, results


def test_outputs_of_a_run(finished_run):
    out, results = finished_run
    for name in (
        "config.json",
        "metrics.jsonl",
        "results.json",
        "results.md",
        "loss_per_domain.png",
        "sampler_weights.png",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(8))
    for record in records:
        assert {
            "domain",
            "total",
            "teacher_ce",
            "student_ce",
            "kl",
            "similarity",
            "lr",
            "sampler_weights",
            "images_per_s",
        } <= set(record)
        assert abs(sum(record["sampler_weights"].values()) - 1) < 1e-9
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for stage in ("initial", "final"):
        assert set(saved[stage]) == {"student", "teacher"}
        assert set(saved[stage]["student"]) == {"merged", "separate"}
        assert set(saved[stage]["teacher"]) == {"separate"}
        for leaf in (saved[stage]["student"]["merged"], saved[stage]["teacher"]["separate"]):
            assert set(leaf) == {"shops", "birds", "mean"}
            assert set(leaf["mean"]) == {
                "p_at_1",
                "mmp_at_5",
                "num_queries",
                "num_queries_without_positives",
                "no_positive",
            }
            assert leaf["mean"]["no_positive"] == "miss"
            assert set(leaf["shops"]) == {"p_at_1", "mmp_at_5", "num_queries", "num_queries_without_positives"}
    markdown = (out / "results.md").read_text()
    assert "| shops |" in markdown and "no_positive=miss" in markdown


def test_frozen_backbone_epoch_has_zero_backbone_lr(finished_run):
    out, _ = finished_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["lr"]["backbone"] == 0.0 and records[0]["lr"]["heads"] == 1e-3
    assert records[-1]["lr"]["backbone"] == pytest.approx(1e-5)


def test_refuses_to_overwrite_a_run(finished_run, data_root):
    out, _ = finished_run
    with pytest.raises(FileExistsError, match="--resume"):
        train(parse_args(_args(data_root, out, "--steps", "8")))


def test_non_finite_loss_stops_with_step_and_domain(data_root, tmp_path, monkeypatch):
    from udon_fast.trainer import step as step_module

    real = step_module.udon_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            return type(out)(out.total * float("nan"), *out[1:])
        return out

    monkeypatch.setattr(step_module, "udon_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 3 \(domain '(shops|birds)'\)"):
        train(parse_args(_args(data_root, out, "--steps", "8")))
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["extra"]["progress"]["step"] == 2


def test_decoder_option_reaches_every_loader(data_root, tmp_path, monkeypatch):
    from udon_fast.evaluation import protocol as evaluation
    from udon_fast.trainer import loop

    used = []

    def spy(real):
        return lambda *args, **kw: used.append(kw["decoder"]) or real(*args, **kw)

    for module, name in ((loop, "TrainLoader"), (evaluation, "EvalLoader")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    train(parse_args(_args(data_root, tmp_path / "tv", "--steps", "2", "--decoder", "torchvision")))
    assert len(used) > 1 and set(used) == {"torchvision"}
    assert json.loads((tmp_path / "tv" / "config.json").read_text())["decoder"] == "torchvision"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sampler", "fast"], "--sampler must be one of dynamic, round_robin, balanced, dataset_size"),
        (["--margin-type", "sphere"], "--margin-type must be one of normface, cosface, arcface"),
        (["--loss-backend", "cuda"], "--loss-backend must be one of"),
        (["--decoder", "pil"], "--decoder must be one of dali, torchvision; got 'pil'"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--config", "/nonexistent.yaml"], "--config file not found"),
    ],
)
def test_invalid_options_list_valid_values(argv, message, capsys):
    assert train_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_yaml_config_and_unknown_keys(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("epochs: 7\nmargin-type: arcface\nmargin: 0.2\n")
    config = parse_args(["--config", str(good), "--margin", "0.3"])
    assert (config.epochs, config.margin_type, config.margin) == (7, "arcface", 0.3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 7\n")
    with pytest.raises(ValueError, match="unknown option"):
        parse_args(["--config", str(bad)])


def test_uned_preset_is_the_papers_setup():
    config = parse_args(["--preset", "uned", "--data-root", "/data/uned"])
    assert (
        config.backbone,
        config.image_size,
        config.batch_size,
        config.epochs,
        config.frozen_epochs,
        config.update_every,
    ) == ("vit_base_patch16_224", 224, 128, 10, 2, 1000)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(data_root, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",  # a free port
            "-m",
            "udon_fast.train",
            *_args(data_root, out, "--steps", "4"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert json.loads((out / "results.json").read_text())["final"]["student"]["merged"]["mean"]


@pytest.mark.slow
def test_compiled_step_matches_eager(finished_run, data_root, tmp_path):
    """The run of `finished_run` with the step compiled (the default): the same domains,
    losses within 1e-4 relative at every step (frozen backbone steps and the unfrozen ones after
    the recompile), and parameters within 5% of each tensor's change from the initial model
    (inductor fuses and reorders fp32 sums: ~1e-6 differences, which AdamW's per-element
    normalisation turns into a visible part of the steps of elements with near-zero gradients)."""
    reference, _ = finished_run
    out = tmp_path / "compiled"
    config = parse_args([a for a in _args(data_root, out, "--steps", "8") if a != "--no-compile"])
    assert config.compile
    train(config)
    eager = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    compiled = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["domain"] for r in compiled] == [r["domain"] for r in eager]
    assert sorted({r["lr"]["backbone"] for r in eager}) == [0.0, pytest.approx(1e-5)], "frozen and unfrozen steps"
    for step, (got, want) in enumerate(zip(compiled, eager)):
        for term in ("total", "teacher_ce", "student_ce", "kl", "similarity"):
            assert got[term] == pytest.approx(want[term], rel=1e-4, abs=1e-7), (step, term)
    domains = load_domains(data_root)
    torch.manual_seed(config.seed)  # the trainer's initial model
    initial = UDONModel(
        config.backbone, {n: d.num_classes for n, d in domains.items()}, image_size=config.image_size
    ).state_dict()
    want = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]
    got = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    for name, value in want.items():
        if not value.is_floating_point():  # the classifiers' layout
            assert torch.equal(got[name], value), name
            continue
        change = (value.float() - initial[name].float()).norm()
        assert change > 0 or name.startswith("teacher_projections"), f"{name} did not train"
        assert (got[name].float() - value.float()).norm() <= 0.05 * change + 1e-12, (name, float(change))
