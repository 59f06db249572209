"""`python -m bench --out DIR [--quick] [-- PYTEST_ARGS...]`: run the bench suite (pytest on bench/
with pytest-benchmark), then write DIR/bench.json (pytest-benchmark's JSON plus `udon_suite`: quick
flag and pytest's exit status; machine facts in `machine_info["udon"]`), DIR/bench.md (tables, see
render.py) and DIR/<group>.png charts.  `--quick` sets UDON_BENCH_QUICK=1 (under 5 minutes on 2
cores).  Exits with pytest's status."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.render import render
from bench.suite import QUICK_ENV

BENCH_DIR = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help=f"smaller shapes and rounds ({QUICK_ENV}=1)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -k knn")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "bench.json"
    env = dict(os.environ, **({QUICK_ENV: "1"} if args.quick else {}))
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(BENCH_DIR),
        "-p",
        "no:cacheprovider",
        "-q",
        f"--benchmark-json={json_path}",
        *args.pytest_args,
    ]
    status = subprocess.run(command, cwd=BENCH_DIR.parent, env=env).returncode
    if not json_path.exists():
        print(f"pytest exited with {status} and wrote no {json_path}", file=sys.stderr)
        return status or 1
    data = json.loads(json_path.read_text())
    data["udon_suite"] = {"quick": args.quick, "pytest_exit": status, "command": command}
    json_path.write_text(json.dumps(data, indent=2))
    report = render(data, args.out)
    (args.out / "bench.md").write_text(report)
    print(report)
    return status


if __name__ == "__main__":
    sys.exit(main())
