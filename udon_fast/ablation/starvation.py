"""Replay the dynamic sampler on measured loss curves: which `update_every` starves a domain?

The replay feeds `DomainSampler` (the real rule) with the CE a domain had at its k-th batch in a measured
run, for k = the number of batches it has drawn so far in the replay (the last value repeats), over the
run's number of steps, for several seeds.  A domain is *starved* at a step when its weight is below
1 / (10 x domains) there; the dynamic rule keeps a domain that goes unsampled for a whole window at its
old weight, which then competes with mean CEs of a few nats, so a domain that misses one window tends to
stay near zero for the rest of the run.  `python -m udon_fast.ablation.replay RUN` prints the comparison
(`udon_fast.commands.replay`).
"""

from collections.abc import Mapping, Sequence

import numpy as np

from ..sampler import DomainSampler


def loss_curves(metrics: Sequence[Mapping]) -> dict[str, list[float]]:
    """{domain: teacher CE of its 1st, 2nd, ... batch} from a run's metrics.jsonl records."""
    curves: dict[str, list[float]] = {}
    for record in sorted(metrics, key=lambda r: r["step"]):
        curves.setdefault(record["domain"], []).append(float(record["teacher_ce"]))
    return dict(sorted(curves.items()))


def replay(
    curves: Mapping[str, Sequence[float]], total_steps: int, update_every: int, seed: int
) -> dict[str, np.ndarray]:
    """Run the dynamic rule on `curves`; returns {"domains": (S,) int32 domain index per step,
    "weights": (S, K) float64 weight of each domain when the step was drawn}."""
    names = list(curves)
    sampler = DomainSampler(
        {n: 1 for n in names}, total_steps, strategy="dynamic", update_every=update_every, seed=seed
    )
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


def starvation(
    curves: Mapping[str, Sequence[float]], total_steps: int, update_every: int, seeds: int
) -> dict[str, dict[str, float]]:
    """Per domain over `seeds` replays: mean share of the steps, mean number of windows (of the
    total_steps // update_every full ones) in which it drew no batch, and in how many replays that
    happened at least once."""
    names = list(curves)
    windows = total_steps // update_every
    share, missed, replays = np.zeros(len(names)), np.zeros(len(names)), np.zeros(len(names), dtype=int)
    for seed in range(seeds):
        drawn = replay(curves, total_steps, update_every, seed)["domains"]
        share += np.bincount(drawn, minlength=len(names)) / total_steps
        per_window = (
            np.stack(
                [
                    np.bincount(drawn[w * update_every : (w + 1) * update_every], minlength=len(names))
                    for w in range(windows)
                ]
            )
            if windows
            else np.ones((1, len(names)))
        )
        misses = (per_window == 0).sum(axis=0)
        missed += misses
        replays += misses > 0
    return {
        n: {"share": share[i] / seeds, "missed_windows": missed[i] / seeds, "replays_with_a_miss": int(replays[i])}
        for i, n in enumerate(names)
    }
