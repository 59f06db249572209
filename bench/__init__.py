"""udon_fast benchmarks: pytest-benchmark suites (`test_bench_*.py`), each timing a fast path against
its reference in the same run, and the tools around them.

- `python -m bench --out DIR [--quick]` (`__main__.py`): run the CPU suite, write DIR/bench.json,
  DIR/bench.md and PNG charts (`render.py`).
- `bench/gpu_check.sh [--dry-run]` (`gpu_check.py`): the one-call GPU check (tests, loss and
  training-step benchmarks, achieved TFLOP/s and GB/s) writing gpu_report.json.
- `suite.py`: shared helpers (quick mode, peak-RSS measurement, CPU time with child processes,
  machine facts).
"""
