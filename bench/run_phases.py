"""Where a short training run's wall time goes: one `udon_fast.train` run with its phases timed.

    python -m bench.run_phases [--out FILE.json] [train flags...]     (default: --steps 12, the built-in data)

The run is the trainer's own `train(config)`; its phases are timed by wrapping the functions that do
them (seconds, summed over calls, with the number of calls): the model and loader setup (`Run()`, which
includes the image check), the image check alone, the off-the-shelf backbone's evaluation, the test
and validation evaluations, the training steps (the first one separately: it includes torch.compile),
the checkpoints, and the end (`Run.finish`, which holds the final test evaluation and the plots).
"""

import argparse
import functools
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.suite import emit_json
from udon_fast.commands.train import parse_args
from udon_fast.evaluation import protocol as evaluation
from udon_fast.trainer import loop
from udon_fast.trainer import step as step_module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_phases", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the phases as JSON here")
    args, train_args = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        config = parse_args(["--steps", "12", "--no-progress", *train_args, "--out", str(Path(folder) / "run")])
        seconds: dict[str, float] = defaultdict(float)
        calls: dict[str, int] = defaultdict(int)

        def timed(label, function, label_of=None):
            @functools.wraps(function)
            def call(*a, **k):
                name = label_of(*a, **k) if label_of else label
                start = time.perf_counter()
                try:
                    return function(*a, **k)
                finally:
                    seconds[name] += time.perf_counter() - start
                    calls[name] += 1

            return call

        first_step = {"done": False}
        real_call = step_module.UDONStep.__call__

        def step_call(step, *a, **k):
            label = "train step" if first_step["done"] else "first train step (compile)"
            first_step["done"] = True
            return timed(label, real_call)(step, *a, **k)

        patches = [
            (loop.Run, "__init__", timed("setup (Run(), incl. image check)", loop.Run.__init__)),
            (step_module.UDONStep, "__call__", step_call),
            (evaluation, "check_eval_images", timed("image check", evaluation.check_eval_images)),
            (loop.Run, "evaluate_baseline", timed("off-the-shelf backbone evaluation", loop.Run.evaluate_baseline)),
            (
                loop.Run,
                "evaluate",
                timed("", loop.Run.evaluate, lambda run, split, model=None, **k: f"evaluation {split}"),
            ),
            (loop.Run, "save", timed("checkpoint writes", loop.Run.save)),
            (loop.Run, "finish", timed("finish (final test evaluation, outputs)", loop.Run.finish)),
        ]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        for owner, name, value in patches:
            setattr(owner, name, value)
        start = time.perf_counter()
        try:
            loop.train(config)
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)
        total = time.perf_counter() - start
    report = {
        "argv": train_args,
        "steps": config.steps,
        "compile": config.compile,
        "total_s": round(total, 1),
        "phases": {
            k: {"seconds": round(v, 1), "calls": calls[k]} for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])
        },
    }
    emit_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
