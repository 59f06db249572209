"""DomainSampler: strategies, dynamic update math, resume, errors."""

import json
import math
from collections import Counter
from fractions import Fraction

import pytest

from udon_fast.sampler import STRATEGIES, DomainSampler, allocate

SIZES = {"cars": 10, "sop": 30, "met": 60}


def ce_of(step: int, domain: str) -> float:
    """A deterministic fake teacher CE that differs per domain and step."""
    return 1.0 + list(SIZES).index(domain) + 0.1 * (step % 7)


def run(sampler: DomainSampler, start: int, stop: int) -> list[str]:
    """Draw and record steps [start, stop); the domains drawn."""
    drawn = []
    for step in range(start, stop):
        domain = sampler.domain_at(step)
        sampler.record(step, domain, ce_of(step, domain))
        drawn.append(domain)
    return drawn


def schedule(sampler: DomainSampler) -> list[str]:
    return [sampler.domain_at(t) for t in range(sampler.total_steps)]


def test_allocate_floors_and_last_takes_rest():
    assert allocate(10, [Fraction(1, 3)] * 3) == [3, 3, 4]
    assert allocate(100, [0.1, 0.3, 0.6]) == [10, 30, 60]
    assert allocate(7, [0.5, 0.25, 0.25]) == [3, 1, 3]


def test_round_robin_cycles_in_order():
    s = DomainSampler(SIZES, total_steps=10, strategy="round_robin")
    assert schedule(s) == ["cars", "sop", "met"] * 3 + ["cars"]
    assert s.weights == pytest.approx({d: 1 / 3 for d in SIZES})


def test_balanced_counts_shuffled_and_seeded():
    s = DomainSampler(SIZES, total_steps=100, strategy="balanced", seed=3)
    drawn = schedule(s)
    assert Counter(drawn) == {"cars": 33, "sop": 33, "met": 34}
    assert drawn != sorted(drawn, key=list(SIZES).index)
    assert drawn == schedule(DomainSampler(SIZES, total_steps=100, strategy="balanced", seed=3))
    assert drawn != schedule(DomainSampler(SIZES, total_steps=100, strategy="balanced", seed=4))
    assert sum(s.weights.values()) == pytest.approx(1.0)


def test_dataset_size_counts_proportional():
    s = DomainSampler(SIZES, total_steps=200, strategy="dataset_size", seed=0)
    assert Counter(schedule(s)) == {"cars": 20, "sop": 60, "met": 120}
    assert s.weights == pytest.approx({"cars": 0.1, "sop": 0.3, "met": 0.6})
    assert schedule(s) == schedule(DomainSampler(SIZES, total_steps=200, strategy="dataset_size", seed=0))


@pytest.mark.parametrize("strategy", ["round_robin", "balanced", "dataset_size"])
def test_static_strategies_ignore_recorded_ce(strategy):
    s = DomainSampler(SIZES, total_steps=50, strategy=strategy, update_every=5)
    before = schedule(s)
    run(s, 0, 50)
    assert schedule(s) == before


def test_dynamic_update_matches_hand_computation():
    s = DomainSampler(SIZES, total_steps=30, strategy="dynamic", update_every=6, seed=0)
    assert schedule(s)[:6] == ["cars", "sop", "met"] * 2  # starts round-robin
    ces = {"cars": [1.0, 3.0], "sop": [4.0, 4.0], "met": [2.0, 2.0]}
    for step in range(6):
        d = s.domain_at(step)
        s.record(step, d, ces[d][step // 3])
    # means 2, 4, 2 -> weights 0.25, 0.5, 0.25; 24 remaining steps -> 6, 12, 6
    assert s.weights == pytest.approx({"cars": 0.25, "sop": 0.5, "met": 0.25})
    assert Counter(schedule(s)[6:]) == {"cars": 6, "sop": 12, "met": 6}
    assert s.updates == [(6, s.weights)]


def test_dynamic_unseen_domain_keeps_old_weight_then_renormalised():
    s = DomainSampler(SIZES, total_steps=12, strategy="dynamic", update_every=2)
    s.record(0, "cars", 1.0)
    s.record(1, "sop", 2 / 3)  # met not seen in this window: raw = [1, 2/3, 1/3]
    assert s.weights == pytest.approx({"cars": 0.5, "sop": 1 / 3, "met": 1 / 6})
    assert Counter(schedule(s)[2:]) == {"cars": 5, "sop": 3, "met": 2}


def test_dynamic_is_deterministic_and_seeded():
    a = DomainSampler(SIZES, total_steps=400, update_every=50, seed=1)
    b = DomainSampler(SIZES, total_steps=400, update_every=50, seed=1)
    c = DomainSampler(SIZES, total_steps=400, update_every=50, seed=2)
    assert run(a, 0, 400) == run(b, 0, 400)
    assert run(c, 0, 400) != schedule(a)
    assert a.weights == b.weights and math.isclose(sum(a.weights.values()), 1.0)


def test_stable_until_marks_the_next_update():
    s = DomainSampler(SIZES, total_steps=25, update_every=10)
    run(s, 0, 13)
    assert s.stable_until == 20
    assert DomainSampler(SIZES, total_steps=25, strategy="balanced").stable_until == 25


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_resume_mid_window_gives_the_same_future(strategy):
    total, every, stop = 1000, 64, 419  # 419 is mid-window
    straight = DomainSampler(SIZES, total_steps=total, strategy=strategy, update_every=every, seed=5)
    drawn = run(straight, 0, total)

    first = DomainSampler(SIZES, total_steps=total, strategy=strategy, update_every=every, seed=5)
    head = run(first, 0, stop)
    state = json.loads(json.dumps(first.state_dict()))  # plain data, exact floats
    resumed = DomainSampler(SIZES, total_steps=total, strategy=strategy, update_every=every, seed=5)
    resumed.load_state_dict(state)
    assert schedule(resumed)[:stop] == head
    assert head + run(resumed, stop, total) == drawn
    assert resumed.weights == straight.weights
    assert resumed.state_dict() == straight.state_dict()


def test_argument_errors():
    with pytest.raises(ValueError, match="valid strategies: dynamic, round_robin, balanced, dataset_size"):
        DomainSampler(SIZES, total_steps=10, strategy="uniform")
    with pytest.raises(ValueError, match=r"domain_sizes\['sop'\]"):
        DomainSampler({"cars": 3, "sop": 0}, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        DomainSampler(SIZES, total_steps=0)
    with pytest.raises(ValueError, match="update_every"):
        DomainSampler(SIZES, total_steps=10, update_every=-1)
    with pytest.raises(ValueError, match="non-empty"):
        DomainSampler({}, total_steps=10)


def test_record_errors():
    s = DomainSampler(SIZES, total_steps=6, strategy="round_robin")
    with pytest.raises(ValueError, match="scheduled for domain 'cars'.*'sop'"):
        s.record(0, "sop", 1.0)
    with pytest.raises(ValueError, match="unknown domain 'inat'"):
        s.record(0, "inat", 1.0)
    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(ValueError, match="finite and >= 0"):
            s.record(0, "cars", bad)
    with pytest.raises(ValueError, match="expected step 0, got 1"):
        s.record(1, "sop", 1.0)
    run(s, 0, 6)
    with pytest.raises(ValueError, match="expected step 6"):
        s.record(5, "met", 1.0)
    with pytest.raises(IndexError, match=r"\[0, 6\)"):
        s.domain_at(6)


def test_load_state_dict_rejects_other_arguments():
    state = DomainSampler(SIZES, total_steps=10, seed=0).state_dict()
    with pytest.raises(ValueError, match="different arguments: seed"):
        DomainSampler(SIZES, total_steps=10, seed=1).load_state_dict(state)
    reordered = dict(reversed(list(SIZES.items())))
    with pytest.raises(ValueError, match="domains"):
        DomainSampler(reordered, total_steps=10, seed=0).load_state_dict(state)
