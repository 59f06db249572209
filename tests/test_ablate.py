"""`python -m udon_fast.ablate`: the grid on a tiny dataset, its resume, its report and its errors."""

import json

import pytest

from udon_fast.ablation import VARIANTS, make_cells
from udon_fast.ablation.summary import summarize, write_outputs
from udon_fast.commands import ablate
from udon_fast.data.synthetic import write_tiny_uned

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
    "--eval-batch-size",
    "16",
    "--no-compile",
    "--data-threads",
    "1",
    "--steps",
    "2",
    "--no-progress",
]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("udon_fast.ablate: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_grid_runs_every_variant_and_resumes(data_root, tmp_path, capsys):
    out = tmp_path / "grid"
    argv = ["--out", str(out), "--seeds", "1", "--data-root", str(data_root), *TINY]
    assert ablate.main(argv) == 0
    cells = make_cells(out, 1)
    for cell in cells:
        config = json.loads((cell.out / "config.json").read_text())
        assert (config["sampler"], config["distill"], config["seed"]) == (cell.variant.sampler, cell.variant.distill, 0)
        assert config["steps"] == 2 and config["backbone"] == "vit_tiny_patch16_224"
    data = json.loads((out / "ablation.json").read_text())
    assert sorted(data["summary"]) == sorted(v.name for v in VARIANTS)
    assert data["domains"] == ["birds", "shops", "mean"]
    for variant in VARIANTS:
        run = data["runs"][variant.name]["0"]
        results = json.loads((out / "runs" / variant.name / "seed0" / "results.json").read_text())
        assert run["final"] == results["final"]["student"]["merged"]
        assert [v["step"] for v in run["validation"]] == [2]
        assert set(run["validation"][0]["p_at_1"]) == {"birds", "shops"}
        assert sum(run["steps"].values()) == 2
        stat = data["summary"][variant.name]["final"]["mean"]["p_at_1"]
        assert stat == {"mean": results["final"]["student"]["merged"]["mean"]["p_at_1"], "std": None, "n": 1}
    assert "| baseline (round-robin, no distillation) | final | 1 |" in (out / "ablation.md").read_text()
    # The off-the-shelf backbone is evaluated once for the grid, by its first run.
    evaluated = ["baseline" in json.loads((c.out / "results.json").read_text()) for c in cells]
    assert evaluated == [True, False, False, False]
    first = json.loads((cells[0].out / "results.json").read_text())
    assert data["off_the_shelf"] == first["baseline"]["student"]["merged"]
    assert "evaluated once for the grid" in (out / "ablation.md").read_text()
    assert (out / "ablation.png").stat().st_size > 0
    # Resume: a run without results.json continues from its checkpoint; complete runs are not redone.
    interrupted = cells[1]
    (interrupted.out / "results.json").unlink()
    before = {c.name: (c.out / "results.json").stat().st_mtime_ns for c in cells if c is not interrupted}
    assert ablate.main(argv) == 0
    assert {c.name: (c.out / "results.json").stat().st_mtime_ns for c in cells if c is not interrupted} == before
    assert (interrupted.out / "train.log").read_text().count("$ python -m udon_fast.train") == 2
    assert [json.loads(line)["step"] for line in (interrupted.out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert ablate.main(["--out", str(out), "--seeds", "1", "--data-root", str(data_root), *TINY, "--lr", "0.1"]) == 2
    assert "holds a grid run with the train flags" in _error(capsys)


def test_a_failing_run_stops_the_grid_with_one_line(tmp_path, capsys):
    small = write_tiny_uned(tmp_path / "small", {"a": {"train": 3, "test": 2}, "b": {"train": 2, "test": 2}})
    out = tmp_path / "grid"
    assert ablate.main(["--out", str(out), "--seeds", "1", "--data-root", str(small), *TINY]) == 1
    err = _error(capsys)
    assert "run udon/seed0 failed (exit code 2): udon_fast.train: error: " in err
    assert f"(log: {out / 'runs' / 'udon' / 'seed0' / 'train.log'})" in err
    assert not (out / "runs" / "dynamic_only").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sampler", "balanced"], "--sampler cannot be passed through"),
        (["--no-distill"], "--distill cannot be passed through"),
        (["--seed", "3"], "--seed cannot be passed through"),
        (["--resume"], "--resume cannot be passed through"),
        (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--seeds", "0"], "--seeds must be >= 1"),
    ],
)
def test_bad_flags_are_one_line_errors(argv, message, tmp_path, capsys):
    assert ablate.main(["--out", str(tmp_path / "grid"), *argv]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "grid").exists()


def test_grid_options_in_a_config_file_are_refused(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 2\nsampler: balanced\nseed: 4\n")
    assert ablate.main(["--out", str(tmp_path / "grid"), "--config", str(config)]) == 2
    assert f"{config}: sets sampler, seed, which the grid sets" in _error(capsys)
    assert ablate.main(["--seeds", "2"]) == 2
    assert "the following arguments are required: --out" in _error(capsys)


def _fake_run(cell, p_at_1: dict[str, float], steps: dict[str, int] | None = None) -> None:
    def leaf(scale):
        return {
            **{d: {"p_at_1": scale * v, "mmp_at_5": scale * v / 2} for d, v in p_at_1.items()},
            "mean": {
                "p_at_1": scale * sum(p_at_1.values()) / len(p_at_1),
                "mmp_at_5": scale * sum(p_at_1.values()) / len(p_at_1) / 2,
            },
        }

    cell.out.mkdir(parents=True)
    results = {stage: {"student": {"merged": leaf(scale)}} for stage, scale in (("initial", 0.5), ("final", 1.0))}
    (cell.out / "results.json").write_text(json.dumps(results))
    domains = [d for d, n in (steps or {}).items() for _ in range(n)]
    (cell.out / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i, "domain": d}) + "\n" for i, d in enumerate(domains))
    )


def test_summary_is_mean_and_sample_std_over_seeds(tmp_path):
    cells = make_cells(tmp_path, 2)
    udon = [c for c in cells if c.variant.name == "udon"]
    _fake_run(udon[0], {"cars": 0.5, "sop": 0.2}, {"cars": 4})
    _fake_run(udon[1], {"cars": 0.7, "sop": 0.2}, {"sop": 2, "cars": 2})
    baseline = [c for c in cells if c.variant.name == "baseline"]
    _fake_run(baseline[0], {"cars": 0.4, "sop": 0.3})
    data = summarize(cells, VARIANTS)
    assert list(data["summary"]) == ["udon", "baseline"]  # variants with no finished run are left out
    final = data["summary"]["udon"]["final"]
    assert final["cars"]["p_at_1"] == pytest.approx({"mean": 0.6, "std": 0.1414213562, "n": 2})
    assert final["sop"]["p_at_1"] == pytest.approx({"mean": 0.2, "std": 0.0, "n": 2})
    assert final["mean"]["mmp_at_5"] == pytest.approx({"mean": 0.2, "std": 0.0353553391, "n": 2})
    initial = data["summary"]["udon"]["initial"]
    assert initial["cars"]["p_at_1"] == pytest.approx({"mean": 0.3, "std": 0.0707106781, "n": 2})
    assert data["summary"]["baseline"]["final"]["cars"]["p_at_1"] == {"mean": 0.4, "std": None, "n": 1}
    write_outputs(tmp_path, cells, VARIANTS, "header line")
    md = (tmp_path / "ablation.md").read_text()
    assert "| UDON (dynamic sampler + distillation) | final | 2 | 60.0 ± 14.1 | 20.0 ± 0.0 | 40.0 ± 7.1 |" in md
    assert "| baseline (round-robin, no distillation) | initial | 1 | 20.0 | 15.0 | 17.5 |" in md
    assert "| UDON (dynamic sampler + distillation) | 3 | 1 |" in md  # training steps per domain
    assert data["runs"]["udon"]["1"]["steps"] == {"cars": 2, "sop": 2}
    assert (tmp_path / "ablation.png").is_file()


def test_replay_feeds_each_domain_its_own_loss_curve():
    from udon_fast.ablation.starvation import loss_curves, replay, starvation

    records = [
        {"step": 2, "domain": "a", "teacher_ce": 2.0},
        {"step": 0, "domain": "a", "teacher_ce": 3.0},
        {"step": 1, "domain": "b", "teacher_ce": 1.0},
        {"step": 3, "domain": "b", "teacher_ce": 1.0},
    ]
    curves = loss_curves(records)
    assert curves == {"a": [3.0, 2.0], "b": [1.0, 1.0]}
    run = replay(curves, total_steps=4, update_every=2, seed=0)
    assert run["domains"][:2].tolist() == [0, 1]  # round-robin until the first update
    assert run["weights"][1].tolist() == [0.5, 0.5] and run["weights"][2].tolist() == [0.75, 0.25]  # CEs 3, 1
    # A domain whose loss is far below the others' misses a short window and stays starved; long windows keep it.
    lopsided = {"hard": [5.0] * 400, "easy": [0.05] * 400, "mid": [2.0] * 400}
    short = starvation(lopsided, 400, update_every=4, seeds=4)
    assert short["easy"]["missed_windows"] > 80 and short["easy"]["replays_with_a_miss"] == 4
    assert short["easy"]["share"] < 0.05 and short["hard"]["missed_windows"] == 0
    assert starvation(lopsided, 400, update_every=400, seeds=2)["easy"] == {
        "share": pytest.approx(1 / 3, abs=0.01),
        "missed_windows": 0.0,
        "replays_with_a_miss": 0,
    }


def test_planned_steps_of_folder_domains_count_their_train_split(tmp_path, monkeypatch):
    """With --folder only, the grid's step count comes from the folders' class-disjoint train split (the
    trainer's rule), and the built-in dataset is not touched."""
    from udon_fast.ablation import grid
    from udon_fast.data import builtin
    from udon_fast.data.synthetic import write_image

    for c in range(10):
        for k in range(4):
            write_image(tmp_path / "shoes" / f"class{c}" / f"{k}.jpg", (20 * c, 10 * k, 0), size=(8, 8))
    monkeypatch.setattr(builtin, "ensure_builtin", lambda: pytest.fail("the built-in dataset was loaded"))
    config = ablate.check_train_args(["--folder", f"shoes={tmp_path / 'shoes'}", "--epochs", "3", "--batch-size", "4"])
    # 10 classes: 2 test (max(2, round(2.5))), 2 val, 6 train classes of 4 images -> 24 images, 6 steps an epoch
    assert grid.planned_steps(config) == 3 * 6
