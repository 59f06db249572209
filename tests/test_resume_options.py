"""--resume compares the options with the run's config.json; Ctrl-C is one line saying how to resume; a run
without a val split still writes best.pt."""

import json

import pytest

from udon_fast.commands import train as train_cli
from udon_fast.commands.train import parse_args
from udon_fast.config import RESUME_MAY_DIFFER, TrainConfig
from udon_fast.data.synthetic import write_tiny_uned
from udon_fast.model.checkpoint import read_checkpoint

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
    "--no-compile",
    "--no-progress",
    "--deterministic",
    "--data-threads",
    "1",
]


def _one_error(capsys, prefix: str = "udon_fast.train: error: ") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    argv = ["--data-root", str(data_root), "--out", str(out), *TINY, "--steps", "4"]
    assert train_cli.main(argv) == 0
    return out, argv


def test_resume_with_changed_options_is_refused_listing_each(finished, capsys):
    out, argv = finished
    before = (out / "config.json").read_text()
    capsys.readouterr()
    assert train_cli.main([*argv, "--resume", "--margin-type", "cosface", "--margin", "0.5", "--lr", "0.1"]) == 2
    line = _one_error(capsys)
    assert line.startswith(
        f"udon_fast.train: error: --resume: the options differ from the run in {out} (config.json): "
    )
    for change in ("--margin-type normface -> cosface", "--margin 0.0 -> 0.5", "--lr 0.001 -> 0.1"):
        assert change in line
    assert (out / "config.json").read_text() == before


def test_resume_with_more_steps_is_refused_in_plain_words(finished, capsys):
    out, argv = finished
    capsys.readouterr()
    assert train_cli.main([*argv, "--resume", "--steps", "8"]) == 2
    line = _one_error(capsys)
    assert "--steps 4 -> 8" in line and "cannot extend it: start a new run in another --out to train longer" in line


def test_options_that_cannot_change_results_may_differ_on_resume(finished, capsys):
    out, argv = finished
    results = json.loads((out / "results.json").read_text())
    neutral = [
        "--data-threads",
        "2",
        "--decoder",
        "torchvision",
        "--checkpoint-every",
        "3",
        "--eval-batch-size",
        "8",
        "--no-baseline",
        "--progress",
    ]
    assert train_cli.main([*argv, "--resume", *neutral]) == 0, capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["final"] == results["final"]


def test_differences_cover_every_option_but_the_neutral_ones():
    saved = json.loads(TrainConfig().to_json())
    assert TrainConfig().differences(saved) == []
    del saved["split_seed"]  # a config.json written before an option existed: compared with its default
    assert TrainConfig().differences(saved) == []
    assert TrainConfig(split_seed=3).differences(saved) == ["--split-seed 0 -> 3"]
    assert TrainConfig(domains=["a", "b"], grad_clip=1.0, distill=False).differences(saved) == [
        "--domains (unset) -> a b",
        "--distill on -> off",
        "--grad-clip (unset) -> 1.0",
    ]
    assert TrainConfig(out="elsewhere", data_threads=7, progress=False).differences(saved) == []
    assert set(RESUME_MAY_DIFFER) == {
        "out",
        "resume",
        "progress",
        "data_threads",
        "decoder",
        "checkpoint_every",
        "eval_batch_size",
        "baseline",
        "gallery",
        "tensorboard",
        "log_every",
        "compile",
    }


def test_batch_size_is_compared_as_the_global_batch_on_another_rank_count():
    saved = {**json.loads(TrainConfig(batch_size=3).to_json()), "world_size": 2}
    assert TrainConfig(batch_size=3).differences(saved, world_size=2) == []
    assert TrainConfig(batch_size=2).differences(saved, world_size=3) == []
    assert TrainConfig(batch_size=6).differences(saved, world_size=1) == []
    assert TrainConfig(batch_size=2).differences(saved, world_size=2) == ["--batch-size 3 -> 2"]
    assert TrainConfig(batch_size=3).differences(saved, world_size=3) == [
        "--batch-size 3 on 2 rank(s) -> 3 on 3 (the global batch, --batch-size x ranks, must stay 6)"
    ]
    del saved["world_size"]  # written before config.json recorded the rank count: one rank
    assert TrainConfig(batch_size=1).differences(saved, world_size=3) == []
    assert TrainConfig(batch_size=2).differences(saved, world_size=3) == [
        "--batch-size 3 on 1 rank(s) -> 2 on 3 (the global batch, --batch-size x ranks, must stay 3)"
    ]


def test_ctrl_c_is_one_line_naming_the_step_and_how_to_resume(data_root, tmp_path, capsys, monkeypatch):
    from udon_fast.trainer import loop

    steps = {"n": 0}

    def interrupt(event):
        if event == "step":
            steps["n"] += 1
            if steps["n"] == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(loop, "kill_point", interrupt)
    out = tmp_path / "run"
    argv = ["--data-root", str(data_root), "--out", str(out), *TINY, "--steps", "6"]
    assert train_cli.main(argv) == 130
    line = _one_error(capsys, "udon_fast.train: interrupted at step 3; ")
    last = out / "checkpoints" / "last.pt"
    assert f"--resume continues from the last checkpoint, {last}; to continue: python -m udon_fast.train " in line
    assert line.endswith(" --resume") and str(out) in line
    monkeypatch.undo()
    assert train_cli.main([*argv, "--resume"]) == 0
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == list(range(6))


def test_a_run_without_a_val_split_writes_best_pt(tmp_path, capsys):
    root = write_tiny_uned(
        tmp_path / "uned",
        {"shops": {"train": 6, "test": 3, "index": 3}, "birds": {"train": 10, "test": 4}},
        per_class=3,
    )
    out = tmp_path / "run"
    assert train_cli.main(["--data-root", str(root), "--out", str(out), *TINY, "--steps", "4"]) == 0
    best, last = read_checkpoint(out / "checkpoints" / "best.pt"), read_checkpoint(out / "checkpoints" / "last.pt")
    assert best["extra"]["progress"]["step"] == last["extra"]["progress"]["step"] == 4
    assert all((best["model"][k] == v).all() for k, v in last["model"].items())


def test_yaml_values_reach_resume_typed(finished, tmp_path, capsys):
    """A YAML `lr: 1e-3` (a string to YAML 1.1) is the number 0.001, so it matches the run's --lr."""
    out, argv = finished
    options = tmp_path / "options.yaml"
    options.write_text("lr: 1e-3\n")
    config = parse_args([*argv, "--resume", "--config", str(options)])
    assert config.lr == 0.001 and config.differences(json.loads((out / "config.json").read_text())) == []
