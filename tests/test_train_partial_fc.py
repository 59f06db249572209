"""The trainer's --sample-rate (Partial FC): the flag, the step on the sampled rows of both classifiers
(the others and their AdamW state untouched), and the compiled step without graph breaks (one graph for
every domain: test_train_sync.py)."""

import pytest
import torch
from test_train_sync import _batch, _tiny_step

from udon_fast.commands.train import parse_args
from udon_fast.config import TrainConfig
from udon_fast.losses.partial_fc import sample_classes


def _sampled_step(compile=False):
    return _tiny_step(compile=compile, sample_rate=0.5, domains={"a": 50, "b": 70, "c": 3})


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_sample_rate_is_validated(value):
    with pytest.raises(ValueError, match="--sample-rate must be in \\(0, 1\\]"):
        parse_args(["--sample-rate", value])


def test_sample_rate_is_compared_on_resume():
    assert TrainConfig().sample_rate == 1.0
    assert TrainConfig(sample_rate=0.1).differences({"sample_rate": 1.0}) == ["--sample-rate 1.0 -> 0.1"]
    assert TrainConfig(sample_rate=0.1).differences({}) == ["--sample-rate 1.0 -> 0.1"]  # before the option


def test_step_updates_the_sampled_rows_of_both_classifiers_only():
    model, optimizer, step = _sampled_step()
    classifier = model.classifiers["b"]
    before = {head: getattr(classifier, head).detach().clone() for head in ("teacher", "student")}
    images, labels = _batch(70, 3)
    torch.manual_seed(11)
    index = sample_classes(labels, 70, 0.5)[0]
    torch.manual_seed(11)
    step.apply(torch.stack(list(step(images, labels, "b"))))
    assert index.shape == (35,) and torch.isin(labels, index).all()
    outside = torch.ones(70, dtype=torch.bool)
    outside[index] = False
    for head in ("teacher", "student"):
        weight = getattr(classifier, head)
        state = optimizer.state[weight]
        assert torch.equal(weight[outside], before[head][outside])
        assert (weight[index] != before[head][index]).any(dim=1).all()
        assert torch.equal(state["step"], (~outside).float())
        assert not state["exp_avg"][outside].any() and not state["exp_avg_sq"][outside].any()
    untouched = model.classifiers["a"].teacher
    assert untouched not in optimizer.state


def test_compiled_sampled_region_has_no_graph_break():
    torch._dynamo.reset()
    model, _, step = _sampled_step(compile=True)
    images, labels = _batch(70, 0)
    index, sampled = sample_classes(labels, 70, 0.5)
    rows = [
        model.classifiers["b"].student.detach()[index].requires_grad_(),
        model.classifiers["b"].teacher.detach()[index].requires_grad_(),
    ]
    explanation = torch._dynamo.explain(step._forward_loss)(
        images, sampled, step.teacher_params["b"], student_weight=rows[0], teacher_weight=rows[1]
    )
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
