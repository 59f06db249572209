"""Training-step throughput of the trainer's own loop (`Run.train`), evaluation left out.

    python -m bench.loop_throughput [--warmup K] [--out FILE.json] [train flags...]

Builds the run from the train flags (default: the default run, `--steps 40`), skips `start()` (the
off-the-shelf, initial evaluations) and runs `Run.train` with checkpoints only at the end of an epoch
(`--checkpoint-every` large, unless given).  Every batch request is timestamped; steps/s is measured
from the batch request of step K (default 10: the first steps hold torch.compile) to that of the last
step, less the time spent in checkpoints (validation) in between: (steps - 1 - K) / that time.
Written so that it runs against older checkouts of the trainer too (only `Run`, `Run.train` and
`Progress` are used): compare two versions by running this module with each on PYTHONPATH,
alternately, on the same machine.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from udon_fast.commands.train import parse_args
from udon_fast.trainer.loop import Run
from udon_fast.trainer.state import Progress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loop_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args, train_args = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        config = parse_args(
            [
                "--steps",
                "40",
                "--checkpoint-every",
                "100000",
                "--no-progress",
                *train_args,
                "--out",
                str(Path(folder) / "run"),
            ]
        )
        run = Run(config)
        stamps = []
        next_batch = run.loader.next_batch

        def stamped(domain):
            stamps.append(time.perf_counter())
            return next_batch(domain)

        run.loader.next_batch = stamped
        checkpoint, paused = run.checkpoint, []

        def timed_checkpoint(*a, **k):  # validation and checkpoint writes are not steps
            start = time.perf_counter()
            checkpoint(*a, **k)
            paused.append((start, time.perf_counter() - start))

        run.checkpoint = timed_checkpoint
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "metrics.jsonl").write_text("")
        run.train(Progress())
        run.loader.close()
    k = args.warmup
    excluded = sum(seconds for start, seconds in paused if stamps[k] <= start < stamps[-1])
    rate = (len(stamps) - 1 - k) / (stamps[-1] - stamps[k] - excluded)
    report = {
        "argv": train_args,
        "steps": len(stamps),
        "warmup": k,
        "steps_per_s": round(rate, 3),
        "images_per_s": round(rate * config.batch_size, 1),
        "threads": torch.get_num_threads(),
        "compile": config.compile,
        "backbone": config.backbone,
    }
    text = json.dumps(report)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
