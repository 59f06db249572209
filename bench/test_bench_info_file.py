"""The cost of the info-file entry checks (`uned.check_entry_paths`: no absolute, '..' or NUL path;
`uned.report_duplicates`) against reading the info file (`uned.read_info_file`: JSON parse and
field checks, which includes them), on a 3M-entry info file (`UDON_BENCH_QUICK=1`: 300k) with
UnED-like paths ("<domain>/train/<class>/<image>.jpg", one '..'-free name per entry).

Run: `pytest bench/test_bench_info_file.py`.  The variants are interleaved, round by round, in one
run; `extra_info` stores the medians (read_s, path_check_s, duplicates_s) and the shares of the read
time: path_check_share and duplicates_share (e.g. 0.01 = the check adds 1% to reading the file).
"""

import json
import statistics
import time

import pytest

from bench.suite import quick
from udon_fast.data.uned import check_entry_paths, read_info_file, report_duplicates

ROUNDS = 3


@pytest.fixture(scope="module")
def info_file(tmp_path_factory):
    n = 300_000 if quick() else 3_000_000
    entries = [
        {"path": f"landmarks/train/{i // 12:07d}/{i:09d}_{i * 7919 % 100_003:05d}.jpg", "class_id": i // 12}
        for i in range(n)
    ]
    path = tmp_path_factory.mktemp("info") / "train.json"
    path.write_text(json.dumps(entries))
    return path, n


def test_entry_checks_against_reading_the_info_file(benchmark, info_file):
    path, n = info_file
    times: dict[str, list[float]] = {"read": [], "path_check": [], "duplicates": []}
    paths = read_info_file(path)[0]
    for _ in range(ROUNDS):
        for name, call in (
            ("read", lambda: read_info_file(path)),
            ("path_check", lambda: check_entry_paths(path, paths)),
            ("duplicates", lambda: report_duplicates(path, paths)),
        ):
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    benchmark.extra_info.update(
        {
            "entries": n,
            **{f"{name}_s": round(t, 4) for name, t in medians.items()},
            "path_check_share": round(medians["path_check"] / medians["read"], 4),
            "duplicates_share": round(medians["duplicates"] / medians["read"], 4),
        }
    )
    benchmark.pedantic(check_entry_paths, args=(path, paths), rounds=ROUNDS, iterations=1)
