"""AdamW with two parameter groups and the frozen-backbone epochs (LR 0); docs/method.md, section 4."""

import torch

from ..model import UDONModel


def build_optimizer(model: UDONModel, lr: float, backbone_lr_mult: float, weight_decay: float) -> torch.optim.AdamW:
    """Heads (projections, classifiers) at `lr`; the backbone at `lr * backbone_lr_mult`; betas (0.9, 0.999).

    The fused (single-kernel) AdamW: on CPU ~10x faster over large classifiers than the for-each one.
    """
    groups = [
        {"params": list(model.head_parameters()), "lr": lr, "base_lr": lr, "name": "heads"},
        {
            "params": list(model.backbone_parameters()),
            "lr": lr * backbone_lr_mult,
            "base_lr": lr * backbone_lr_mult,
            "name": "backbone",
        },
    ]
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=weight_decay, fused=True)


def set_backbone_frozen(model: UDONModel, optimizer: torch.optim.Optimizer, frozen: bool) -> None:
    """Backbone LR 0 for the first epochs, its base LR after; a constant LR schedule.

    While frozen the backbone also gets no gradient (requires_grad off), which skips its backward
    pass: the parameters are exactly those of LR 0, and AdamW leaves the backbone's moments untouched
    until it unfreezes (the release's zero LR may still accumulate them).
    """
    for parameter in model.backbone_parameters():
        parameter.requires_grad_(not frozen)
    for group in optimizer.param_groups:
        if group["name"] == "backbone":
            group["lr"] = 0.0 if frozen else group["base_lr"]


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {group["name"]: group["lr"] for group in optimizer.param_groups}
