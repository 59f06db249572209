"""The bench tooling cannot rot: `bench/gpu_check.sh --dry-run` (CPU, tiny shapes, < 60 s) writes a
well-formed gpu_report.json, and `python -m bench`'s CLI and renderer turn a small synthetic
pytest-benchmark JSON into bench.json / bench.md / PNG charts (the suite itself is not run: too slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import __main__ as bench_cli  # noqa: E402
from bench.render import group_name, ratio_figures, render  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench(fullname, mean, extra, group=None):
    name = fullname.split("::")[-1]
    return {
        "group": group,
        "name": name,
        "fullname": fullname,
        "params": None,
        "extra_info": extra,
        "stats": {"mean": mean, "min": mean, "max": mean, "rounds": 2},
    }


SYNTHETIC = {
    "machine_info": {"udon": {"cpu_model": "Test CPU", "cores": 2, "torch": "2.x", "date": "2026-01-01"}},
    "datetime": "2026-01-01T00:00:00",
    "benchmarks": [
        _bench("bench/test_bench_data.py::test_bench_train_pipeline[pil]", 4.0, {"images_per_s": 250.0}),
        _bench(
            "bench/test_bench_data.py::test_bench_train_pipeline[dali]",
            1.0,
            {"images_per_s": 1000.0, "dali_vs_pil": 4.0},
        ),
        _bench(
            "bench/test_bench_losses_cpu.py::test_native[B64-C4096]",
            0.1,
            {"speedup_vs_chunked": 14.5, "speedup_vs_reference": 6.2, "peak_extra_mib_native": 1.5},
        ),
        _bench("bench/test_bench_knn.py::test_knn", 1.4, {"end_to_end_ratio": 1.1, "search_s": 1.3}),
        _bench("bench/test_bench_x.py::test_plain", 0.002, {"note": "a|b"}, group="custom"),
    ],
}


def test_group_and_ratio_rules():
    benches = SYNTHETIC["benchmarks"]
    assert [group_name(b) for b in benches] == ["data", "data", "losses_cpu", "knn", "custom"]
    assert list(ratio_figures(benches[2]["extra_info"])) == ["speedup_vs_reference", "speedup_vs_chunked"]
    assert ratio_figures(benches[0]["extra_info"]) == {}


def test_render_tables_and_charts(tmp_path):
    report = render(SYNTHETIC, tmp_path)
    assert "- cpu_model: Test CPU" in report and "- cores: 2" in report
    for group in ("data", "losses_cpu", "knn", "custom"):
        assert f"## {group}" in report
    assert "| test_native[B64-C4096] | 100.00 ms | 6.2 (speedup_vs_reference) | peak_extra_mib_native=1.5 |" in report
    assert "| test_bench_train_pipeline[pil] | 4.000 s | — |" in report
    assert "note=a/b" in report  # a "|" would break the table
    for group in ("data", "losses_cpu", "knn"):
        assert f"![{group} ratios]({group}.png)" in report
        assert (tmp_path / f"{group}.png").read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "custom.png").exists()


def test_cli_runs_pytest_then_writes_json_markdown_and_charts(tmp_path, monkeypatch):
    calls = []

    def fake_run(command, cwd, env):
        calls.append((command, env))
        json_arg = next(a for a in command if a.startswith("--benchmark-json="))
        Path(json_arg.split("=", 1)[1]).write_text(json.dumps(SYNTHETIC))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(bench_cli.subprocess, "run", fake_run)
    assert bench_cli.main(["--out", str(tmp_path), "--quick", "--", "-k", "knn"]) == 0
    ((command, env),) = calls
    assert env["UDON_BENCH_QUICK"] == "1" and command[-2:] == ["-k", "knn"]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["udon_suite"]["quick"] is True and data["udon_suite"]["pytest_exit"] == 0
    assert "## knn" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "data.png").exists()


@pytest.mark.timeout(380)
def test_gpu_check_dry_run_writes_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    result = subprocess.run(
        [str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=370,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    parts = report["parts"]
    assert report["dry_run"] is True and report["ok"], [p["errors"] for p in parts.values()]
    assert set(parts) == {"tests", "losses", "train", "sync", "peers"} and all(p["exit"] == 0 for p in parts.values())

    env_info = parts["tests"]["env"]
    assert not env_info["imported_dali"] and not env_info["imported_faiss"]
    assert not env_info["backends"]["native"]["usable"]  # the staged copy has no native library
    (tests,) = parts["tests"]["cases"]
    assert tests["exit"] == 0 and tests["failures"] == 0 and tests["errors"] == 0

    losses = parts["losses"]["cases"]
    assert {c["impl"] for c in losses} == {"triton", "reference", "reference_compiled"}
    for case in losses:
        assert case["ms"] > 0 and case["peak_mib"] is not None
        assert {"tflops", "gbs", "tflops_fraction", "gbs_fraction"} <= set(case)

    train = parts["train"]
    assert [c["mode"] for c in train["cases"]] == ["eager_reference", "compiled_fused"]
    assert all(c["images_per_s"] > 0 for c in train["cases"]) and train["cases"][1]["compiled"]
    assert train["speedup_compiled_fused_vs_eager_reference"] > 0
    assert "losses (float32" in result.stdout and "train step (vit_tiny_patch16_224" in result.stdout
    (sync,) = parts["sync"]["cases"]
    assert sync["ok"] and sync["steps"] == 13 and sync["log_points"] == 5  # steps 5, 6, 10, 12, 13
    assert "sync check (debug mode None): 13 steps, 5 log points" in result.stdout
    peers = {c["impl"]: c for c in parts["peers"]["cases"]}
    assert set(peers) == {"udon_fast", "linear_ce", "linear_ce_chunked", "liger_kernel", "cut_cross_entropy"}
    assert all(peers[n]["ms"] > 0 for n in ("udon_fast", "linear_ce", "linear_ce_chunked"))
    assert all(peers[n]["diff_vs_udon_fast"]["d_weight"] < 1e-4 for n in ("linear_ce", "linear_ce_chunked"))
    assert "CUDA only" in peers["liger_kernel"]["skipped"] and "CUDA only" in peers["cut_cross_entropy"]["skipped"]
    assert "peers (normface CE" in result.stdout


def test_gpu_report_keeps_partial_results_of_failed_parts(tmp_path, capsys):
    from bench import gpu_check

    losses = {
        "part": "losses",
        "dry_run": False,
        "dtype": "bfloat16",
        "errors": [],
        "cases": [
            {
                "impl": "triton",
                "batch": 128,
                "classes": 73182,
                "ms": 0.1,
                "peak_mib": 12.0,
                **gpu_check.throughput(128, 73182, 2, 0.1),
            },
            {
                "impl": "reference",
                "batch": 4096,
                "classes": 1_000_000,
                "skipped": "projected peak 300 GiB > 0.7 x free",
            },
            {"impl": "reference_compiled", "batch": 128, "classes": 73182, "error": "OutOfMemoryError: ..."},
        ],
    }
    (tmp_path / "part_losses.json").write_text(json.dumps(losses))
    for part, status in (("tests", "0 (limit 110 s)"), ("losses", "0 (limit 170 s)"), ("train", "124 (limit 160 s)")):
        (tmp_path / f"status_{part}").write_text(status)
    (tmp_path / "part_tests.json").write_text(
        json.dumps(
            {
                "part": "tests",
                "dry_run": False,
                "errors": [],
                "cases": [{"exit": 0, "seconds": 30.0, "passed": 90, "failures": 0, "errors": 0, "skipped": 2}],
            }
        )
    )
    assert gpu_check.report(tmp_path) is False
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert not report["ok"]
    assert [e["error"] for e in report["parts"]["train"]["errors"]] == [
        "timed out (124 (limit 160 s))",
        "the part wrote no results",
    ]
    printed = capsys.readouterr().out
    assert "projected peak 300 GiB" in printed and "OutOfMemoryError" in printed and "passed 90" in printed
    case = losses["cases"][0]
    assert case["tflops"] == round(8 * 128 * 73182 * 320 / 1e-4 / 1e12, 2)


def test_gpu_reference_skip_rule(monkeypatch):
    import torch

    from bench import gpu_check

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (100 * 2**30, 140 * 2**30))
    per_logit = {"bytes": 40.0, "ms": 1e-7}
    assert gpu_check.reference_skip(per_logit, 128 * 224408) is None
    assert "projected peak" in gpu_check.reference_skip(per_logit, 4096 * 1_000_000)
    assert "ms a call" in gpu_check.reference_skip({"bytes": 0.0, "ms": 1e-6}, 4096 * 1_000_000)
