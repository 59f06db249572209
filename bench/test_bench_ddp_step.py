"""DDP against the hand-rolled flat all-reduce, the trainer's step on 2 gloo ranks (bench/ddp_step.py).

Run: `pytest bench/test_bench_ddp_step.py -p no:cacheprovider` (about a minute on 2 shared cores);
`UDON_BENCH_QUICK=1`: 4 timed steps instead of 30.  pytest-benchmark's time is the whole job; read
extra_info: ddp_s and hand_rolled_s (median seconds per step, interleaved in one job) and their ratio.
"""

from bench import ddp_step
from bench.suite import quick


def test_bench_ddp_against_hand_rolled_all_reduce(benchmark):
    result = {}
    benchmark.pedantic(lambda: result.update(ddp_step.measure(steps=4 if quick() else 30)), rounds=1, iterations=1)
    benchmark.extra_info.update(ranks=ddp_step.RANKS, backbone="tf_efficientnet_lite0", image_size=64, **result)
