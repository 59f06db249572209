"""Test hook: SIGKILL the process at a named point of a run, to test resume after `kill -9`.

Set `UDON_FAST_KILL_AT=EVENT:N` in a run's environment and the N-th time (1-based, counted in that
process) the run reaches `EVENT`, the process sends itself SIGKILL: no cleanup, no `finally`, exactly
like `kill -9` from outside, but at a chosen point instead of after a timer.  Unset (the normal case)
every point is a no-op.  Events:

- `step`: a training step is done (its metrics row written when the step is a log point, else still
  pending), before any checkpoint of that step
  (`step:N` dies with N steps done in this process: mid-epoch, or before the first checkpoint);
- `evaluation`: inside an evaluation, every image embedded, no metric computed yet (in a fresh run
  the 1st is the untrained model's, the 2nd the first validation; a resumed run has no initial one);
- `checkpoint_write`: inside a checkpoint write, the temporary file written, before it replaces the
  previous checkpoint (leaves a stale temporary file, as a kill during the write does);
- `checkpoint`: right after the run's `last.pt` is in place.

A run that ends before the point is reached simply finishes.
"""

import os
import signal
from collections import Counter

from .errors import InputError

ENV = "UDON_FAST_KILL_AT"
EVENTS = ("step", "evaluation", "checkpoint_write", "checkpoint")
_reached: Counter = Counter()


def kill_point(event: str) -> None:
    """Count one occurrence of `event`; SIGKILL this process if it is the one `UDON_FAST_KILL_AT` names."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name not in EVENTS or not count.isdigit():
        raise InputError(f"{ENV}={spec!r}: expected EVENT:N with EVENT one of {', '.join(EVENTS)} and N >= 1")
    if name != event:
        return
    _reached[event] += 1
    if _reached[event] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
