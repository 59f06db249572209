"""The BatchNorm contract of the default backbone (EfficientNet-Lite0 from its packaged ImageNet weights).

Every UDON batch comes from one domain, so the running statistics must stay frozen while the
affine weights train; and that state must hold from construction on, not only after an evaluation
has called `train()` again (a resumed run skips the initial evaluation).
"""

import pytest
import torch
import torch.nn as nn

from udon_fast.model import UDONModel
from udon_fast.model.packaged import packaged_weights
from udon_fast.trainer.optimizer import build_optimizer, set_backbone_frozen
from udon_fast.trainer.step import LossOptions, UDONStep

LOSS = LossOptions(
    margin_type="normface",
    margin=0.0,
    scale=16.0,
    temperature=0.1,
    kl_weight=1.0,
    similarity_weight=1.0,
    backend="chunked",
    n_devices=1,
)


@pytest.fixture()
def model():
    return UDONModel(
        "tf_efficientnet_lite0", {"a": 5, "b": 3}, pretrained=packaged_weights("tf_efficientnet_lite0"), image_size=32
    )


def _batchnorms(model: UDONModel) -> list[nn.modules.batchnorm._BatchNorm]:
    layers = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(layers) > 40  # the real EfficientNet-Lite0
    return layers


def _stats(model: UDONModel) -> list[torch.Tensor]:
    return [t.clone() for m in _batchnorms(model) for t in (m.running_mean, m.running_var, m.num_batches_tracked)]


def _affine(model: UDONModel) -> list[torch.Tensor]:
    return [t.detach().clone() for m in _batchnorms(model) for t in (m.weight, m.bias)]


def _step(model: UDONModel, frozen_backbone: bool) -> None:
    optimizer = build_optimizer(model, lr=1e-2, backbone_lr_mult=1.0, weight_decay=0.0)
    set_backbone_frozen(model, optimizer, frozen=frozen_backbone)
    step = UDONStep(model, optimizer, LOSS, compile=False, grad_clip=None, world_size=1)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    out = step(images, torch.tensor([0, 1, 2, 4]), "a")
    assert torch.isfinite(out.total)
    step.apply(torch.stack(list(out)))


def test_new_model_is_in_its_training_state_with_batchnorm_frozen(model):
    assert model.training and model.backbone.training
    assert not any(m.training for m in _batchnorms(model))
    stats = _stats(model)
    _step(model, frozen_backbone=True)  # the first (frozen-backbone) epoch of a run
    assert all(torch.equal(a, b) for a, b in zip(stats, _stats(model)))


def test_after_train_and_a_step_statistics_are_unchanged_and_affine_weights_moved(model):
    model.eval()
    model.train()
    stats, affine = _stats(model), _affine(model)
    _step(model, frozen_backbone=False)
    assert all(torch.equal(a, b) for a, b in zip(stats, _stats(model)))
    moved = [not torch.equal(a, b) for a, b in zip(affine, _affine(model))]
    assert sum(moved) > 0.9 * len(moved)
