"""Replay the dynamic sampler on measured loss curves: which `update_every` starves a domain?

`python -m udon_fast.ablation.replay RUN [--update-every 20 50 100] [--seeds 20]`

RUN is a finished run, best one with `--sampler round_robin` (every domain's teacher CE is then
measured all along).  The replay feeds `DomainSampler` (the real rule) with the CE a domain had
at its k-th batch in RUN, for k = the number of batches it has drawn so far in the replay (the
last value repeats), over RUN's number of steps, for several seeds.  A domain is *starved* at a
step when its weight is below 1 / (10 x domains) there; the dynamic rule keeps a domain that
goes unsampled for a whole window at its old weight, which then competes with mean CEs of a few
nats, so a domain that misses one window tends to stay near zero for the rest of the run.
Prints, per `update_every`: each domain's mean share of the steps, the mean number of steps it
is starved, and in how many seeds it is starved for more than half the run.
"""
import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..sampler import DomainSampler


def loss_curves(metrics: Sequence[Mapping]) -> dict[str, list[float]]:
    """{domain: teacher CE of its 1st, 2nd, ... batch} from a run's metrics.jsonl records."""
    curves: dict[str, list[float]] = {}
    for record in sorted(metrics, key=lambda r: r["step"]):
        curves.setdefault(record["domain"], []).append(float(record["teacher_ce"]))
    return dict(sorted(curves.items()))


def replay(curves: Mapping[str, Sequence[float]], total_steps: int, update_every: int, seed: int
           ) -> dict[str, np.ndarray]:
    """Run the dynamic rule on `curves`; returns {"domains": (S,) int32 domain index per step,
    "weights": (S, K) float64 weight of each domain when the step was drawn}."""
    names = list(curves)
    sampler = DomainSampler({n: 1 for n in names}, total_steps, strategy="dynamic", update_every=update_every,
                            seed=seed)
    drawn = dict.fromkeys(names, 0)
    domains = np.empty(total_steps, dtype=np.int32)
    weights = np.empty((total_steps, len(names)))
    for step in range(total_steps):
        name = sampler.domain_at(step)
        domains[step] = names.index(name)
        weights[step] = [sampler.weights[n] for n in names]
        curve = curves[name]
        sampler.record(step, name, curve[min(drawn[name], len(curve) - 1)])
        drawn[name] += 1
    return {"domains": domains, "weights": weights}


def starvation(curves: Mapping[str, Sequence[float]], total_steps: int, update_every: int, seeds: int
               ) -> dict[str, dict[str, float]]:
    """Per domain over `seeds` replays: mean share of steps, mean starved steps, runs starved > half the time."""
    names = list(curves)
    threshold = 1 / (10 * len(names))
    share, starved, long = np.zeros(len(names)), np.zeros(len(names)), np.zeros(len(names))
    for seed in range(seeds):
        run = replay(curves, total_steps, update_every, seed)
        share += np.bincount(run["domains"], minlength=len(names)) / total_steps
        below = (run["weights"] < threshold).sum(axis=0)
        starved += below
        long += below > total_steps / 2
    return {n: {"share": share[i] / seeds, "starved_steps": starved[i] / seeds, "runs_starved_most": int(long[i])}
            for i, n in enumerate(names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m udon_fast.ablation.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder with metrics.jsonl (best: --sampler round_robin)")
    parser.add_argument("--update-every", type=int, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args(argv)
    path = Path(args.run) / "metrics.jsonl"
    if not path.is_file():
        print(f"udon_fast.ablation.replay: error: {path} not found", file=sys.stderr)
        return 2
    if args.seeds < 1 or min(args.update_every) < 1:
        print("udon_fast.ablation.replay: error: --seeds and --update-every must be >= 1", file=sys.stderr)
        return 2
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    curves = loss_curves(records)
    print(f"{path}: {len(records)} steps, domains {', '.join(curves)}; {args.seeds} seeds per setting; "
          f"starved = weight < 1/(10 x {len(curves)})")
    print("| update_every | " + " | ".join(f"{n}: share / starved steps / runs starved > half" for n in curves) + " |")
    print("|---|" + "---|" * len(curves))
    for every in args.update_every:
        stats = starvation(curves, len(records), every, args.seeds)
        cells = [f"{100 * s['share']:.0f}% / {s['starved_steps']:.0f} / {s['runs_starved_most']}" for s in stats.values()]
        print(f"| {every} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
