"""Which domain each training step draws its batch from (docs/method.md, section 3).

Strategies:
- "round_robin": domains in the order of `domain_sizes`, cyclically.
- "balanced": every domain equally often over the run, shuffled (seeded).
- "dataset_size": domains in proportion to `domain_sizes`, shuffled (seeded).
- "dynamic" (UDON): round-robin until the first update; then, after recording step t with
  (t + 1) % update_every == 0, the weights become
      raw_d = mean teacher CE of domain d over the steps recorded since the last update
              (a domain not seen in that window keeps its old weight as raw_d),
      w_d   = raw_d / sum(raw),
  and the schedule of the REMAINING steps t+1 .. total_steps-1 is rebuilt from w.  (raw_d mixes
  scales as the official release does: an unseen domain's old weight, <= 1, competes with mean
  CEs of a few nats, so it is sampled less after the update.)

Schedule rule (shared by balanced, dataset_size and dynamic): for n steps and weights w,
domain d gets floor(n * w_d) steps, the last domain takes the rest, and the resulting list is
shuffled by a NumPy generator seeded with (seed, first step of the list).  The release's
description writes floor(total_steps * w_d); the schedule it rebuilds covers only the remaining
steps, so n is the number of remaining steps here (n = total_steps for the static strategies),
so the steps left are split in the proportions w (up to the floor).  docs/method.md, section 6,
lists this among the deliberate differences.

The teacher CE of a step may be a 0-d tensor on the training device: the window sums then stay on
that device (float64, added in step order, so they equal the host sums of today's floats exactly) and
are read once per window, when the update needs them; `record` reads nothing else.

Steps must be recorded in order, once each.  A step's domain is final once every update before
it has happened: `domain_at(step)` is final for step < `stable_until`; for later steps it is the
currently planned domain, which the next update may change.  A resumed sampler (`load_state_dict`) replays the recorded updates and
so gives exactly the schedule of an uninterrupted one.
"""

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from .checks import positive_int

STRATEGIES = ("dynamic", "round_robin", "balanced", "dataset_size")
_STATE_VERSION = 1


def allocate(num_steps: int, weights: Sequence[float | Fraction]) -> list[int]:
    """Steps per domain for weights summing to 1: floor(num_steps * w_d) for all but the last domain,
    which takes the rest.  `Fraction` weights (static strategies) give exact counts; float weights
    (dynamic) are multiplied in float64.
    """
    counts = [math.floor(num_steps * w) for w in weights[:-1]]
    return counts + [num_steps - sum(counts)]


def shuffled_schedule(num_steps: int, weights: Sequence[float], seed: int, start: int) -> np.ndarray:
    """(num_steps,) int32 domain indices allocated by `allocate`, shuffled by a generator seeded (seed, start)."""
    schedule = np.repeat(np.arange(len(weights), dtype=np.int32), allocate(num_steps, weights))
    np.random.default_rng([seed, start]).shuffle(schedule)
    return schedule


class DomainSampler:
    """Per-step domain schedule; see the module docstring for the rules.

    Args:
        domain_sizes: domain name -> number of training images (positive ints; order is kept).
        total_steps: number of training steps; `domain_at` answers for steps in [0, total_steps).
        strategy: one of `STRATEGIES`.
        update_every: steps between dynamic weight updates.
        seed: non-negative int; with it every schedule is deterministic.
    """

    def __init__(
        self,
        domain_sizes: Mapping[str, int],
        total_steps: int,
        strategy: str = "dynamic",
        update_every: int = 1000,
        seed: int = 0,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
        if not isinstance(domain_sizes, Mapping) or not domain_sizes:
            raise ValueError(f"domain_sizes must be a non-empty mapping name -> size, got {domain_sizes!r}")
        self.names = list(domain_sizes)
        self.sizes = [positive_int(size, f"domain_sizes[{name!r}]") for name, size in domain_sizes.items()]
        self.total_steps = positive_int(total_steps, "total_steps")
        self.update_every = positive_int(update_every, "update_every")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.strategy = strategy
        self.seed = int(seed)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._reset()

    def _reset(self) -> None:
        k = len(self.names)
        if self.strategy == "dataset_size":
            self._weights = [size / sum(self.sizes) for size in self.sizes]
        else:
            self._weights = [1.0 / k] * k
        if self.strategy == "balanced":
            self._schedule = shuffled_schedule(self.total_steps, [Fraction(1, k)] * k, self.seed, 0)
        elif self.strategy == "dataset_size":
            self._schedule = shuffled_schedule(
                self.total_steps, [Fraction(n, sum(self.sizes)) for n in self.sizes], self.seed, 0
            )
        else:
            self._schedule = (np.arange(self.total_steps) % k).astype(np.int32)
        self._next_step = 0
        self._window_sum = torch.zeros(k, dtype=torch.float64)  # moves to the device of the first tensor CE
        self._window_count = [0] * k
        self._updates: list[tuple[int, list[float]]] = []

    @property
    def weights(self) -> dict[str, float]:
        """Current sampling weights {name: w}, summing to 1."""
        return dict(zip(self.names, self._weights))

    @property
    def stable_until(self) -> int:
        """First step whose domain may still change (the next dynamic update point); total_steps if none."""
        if self.strategy != "dynamic":
            return self.total_steps
        next_update = (self._next_step // self.update_every + 1) * self.update_every
        return min(next_update, self.total_steps)

    @property
    def next_step(self) -> int:
        """The step `record` expects next."""
        return self._next_step

    @property
    def updates(self) -> list[tuple[int, dict[str, float]]]:
        """Dynamic updates so far: (first step of the rebuilt schedule, weights), oldest first."""
        return [(step, dict(zip(self.names, w))) for step, w in self._updates]

    def domain_at(self, step: int) -> str:
        """Domain name of `step` (0-based) under the current schedule; O(1)."""
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or not 0 <= step < self.total_steps:
            raise IndexError(f"step must be an int in [0, {self.total_steps}), got {step!r}")
        return self.names[self._schedule[step]]

    def update_due(self, step: int) -> bool:
        """Whether recording `step` updates the dynamic weights (and so reads the window sums)."""
        return self.strategy == "dynamic" and (step + 1) % self.update_every == 0

    def record(self, step: int, domain: str, teacher_ce: float | torch.Tensor) -> None:
        """Record the teacher CE (a float, or a 0-d tensor on any device; >= 0) of `step`, which drew from
        `domain`.

        Steps are recorded in order, once each.  For "dynamic", recording step t with
        (t + 1) % update_every == 0 (`update_due`) updates the weights and rebuilds the schedule of steps
        t+1 onwards.  A float is checked (finite, >= 0) at once; a tensor is not read here: the window's
        sums are checked when the update reads them.
        """
        if step != self._next_step:
            raise ValueError(
                f"record() takes the steps in order, once each: expected step {self._next_step}, got {step!r}"
            )
        if step >= self.total_steps:
            raise ValueError(f"step {step} is past the last step {self.total_steps - 1}")
        if domain not in self._index:
            raise ValueError(f"unknown domain {domain!r}; domains: {self.names}")
        scheduled = self.domain_at(step)
        if domain != scheduled:
            raise ValueError(f"step {step} is scheduled for domain {scheduled!r}, but record() got {domain!r}")
        if isinstance(teacher_ce, torch.Tensor):
            ce = teacher_ce.detach()
            if self._window_sum.device != ce.device:
                self._window_sum = self._window_sum.to(ce.device, non_blocking=True)
        else:
            ce = float(teacher_ce)
            if not math.isfinite(ce) or ce < 0:
                raise ValueError(f"teacher CE of step {step} ({domain!r}) must be finite and >= 0, got {ce}")
        self._next_step = step + 1
        if self.strategy == "dynamic":
            self._window_sum[self._index[domain]] += ce
            self._window_count[self._index[domain]] += 1
            if self._next_step % self.update_every == 0:
                self._update(self._next_step)

    def _window_sums(self) -> list[float]:
        """The window's per-domain sums, read from their device (one transfer); ValueError when one is
        not finite or negative (a CE recorded as a tensor was)."""
        sums = self._window_sum.tolist()
        for name, total in zip(self.names, sums):
            if not math.isfinite(total) or total < 0:
                raise ValueError(
                    f"the teacher CEs of domain {name!r} in the window up to step {self._next_step - 1} "
                    f"must be finite and >= 0; their sum is {total}"
                )
        return sums

    def _update(self, start: int) -> None:
        sums = self._window_sums()
        raw = [s / c if c else w for s, c, w in zip(sums, self._window_count, self._weights)]
        total = sum(raw)
        if total > 0:
            self._weights = [r / total for r in raw]
        self._window_sum.zero_()
        self._window_count = [0] * len(self.names)
        self._updates.append((start, list(self._weights)))
        self._rebuild(start, self._weights)

    def _rebuild(self, start: int, weights: Sequence[float]) -> None:
        if start < self.total_steps:
            self._schedule[start:] = shuffled_schedule(self.total_steps - start, weights, self.seed, start)

    def _config(self) -> dict[str, Any]:
        return {
            "domains": list(self.names),
            "sizes": list(self.sizes),
            "total_steps": self.total_steps,
            "strategy": self.strategy,
            "update_every": self.update_every,
            "seed": self.seed,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain Python state (ints, floats, strings, lists, dicts): safe for `torch.load(weights_only=True)` and JSON."""
        return {
            "version": _STATE_VERSION,
            "config": self._config(),
            "next_step": self._next_step,
            "weights": list(self._weights),
            "window_sum": self._window_sum.tolist(),
            "window_count": list(self._window_count),
            "updates": [[step, list(w)] for step, w in self._updates],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict()` of a sampler built with the same arguments; the schedule is replayed."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"sampler state version {state.get('version')!r} is not {_STATE_VERSION}")
        config = self._config()
        differing = sorted(k for k in config if state["config"].get(k) != config[k])
        if differing:
            raise ValueError(
                f"sampler state was saved with different arguments: {', '.join(differing)} "
                f"(saved {[state['config'].get(k) for k in differing]}, now {[config[k] for k in differing]})"
            )
        self._reset()
        for start, weights in state["updates"]:
            self._rebuild(int(start), weights)
            self._updates.append((int(start), [float(w) for w in weights]))
        self._next_step = int(state["next_step"])
        self._weights = [float(w) for w in state["weights"]]
        self._window_sum = torch.tensor(
            [float(s) for s in state["window_sum"]], dtype=torch.float64, device=self._window_sum.device
        )
        self._window_count = [int(c) for c in state["window_count"]]
