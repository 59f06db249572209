"""The trainer's --sample-rate (Partial FC): the flag, the step on the sampled rows of both classifiers
(the others and their AdamW state untouched), and the compiled step still one graph without breaks."""
import functools

import pytest
import torch

from test_train_sync import LOSS, _batch
from udon_fast.config import TrainConfig, parse_args
from udon_fast.losses.partial_fc import sample_classes
from udon_fast.model import UDONModel
from udon_fast.trainer.optimizer import build_optimizer
from udon_fast.trainer.step import UDONStep


def _sampled_step(compile=False, sample_rate=0.5):
    torch.manual_seed(0)
    model = UDONModel("vit_tiny_patch16_224", {"a": 50, "b": 70, "c": 3}, image_size=32, backbone_kwargs={"depth": 1})
    optimizer = build_optimizer(model, lr=1e-2, backbone_lr_mult=1.0, weight_decay=1e-4)
    return model, optimizer, UDONStep(model, optimizer, LOSS, compile=compile, grad_clip=1.0, world_size=1,
                                      sample_rate=sample_rate)


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


def test_compiled_sampled_step_is_one_graph_for_every_domain(monkeypatch):
    """Domains of 50, 70 and 3 classes sample 25, 35 and 3 rows: one forward graph for all."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model, optimizer, step = _sampled_step(compile=True)
    counter = CompileCounter()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    step.forward_loss = step._compiled(step._forward_loss)
    for _ in range(2):
        for domain, classes in model.domains.items():
            step.apply(torch.stack(list(step(*_batch(classes, len(domain)), domain))))
    assert counter.frame_count == 1


def test_compiled_sampled_region_has_no_graph_break():
    torch._dynamo.reset()
    model, _, step = _sampled_step(compile=True)
    images, labels = _batch(70, 0)
    index, sampled = sample_classes(labels, 70, 0.5)
    rows = [model.classifiers["b"].student.detach()[index].requires_grad_(),
            model.classifiers["b"].teacher.detach()[index].requires_grad_()]
    explanation = torch._dynamo.explain(step._forward_loss)(images, sampled, step.teacher_params["b"], *rows)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
