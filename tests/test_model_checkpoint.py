"""Atomic checkpoints: save, rebuild from the file alone, clear errors."""

import os

import pytest
import torch

from udon_fast.model import CheckpointError, UDONModel, load_model, save_checkpoint
from udon_fast.sampler import DomainSampler

TINY = dict(backbone_name="vit_tiny_patch16_224", image_size=32, backbone_kwargs={"depth": 2})


@pytest.fixture(scope="module")
def trained():
    """A model and optimizer after one AdamW step with the two parameter groups of docs/method.md."""
    torch.manual_seed(0)
    model = UDONModel(domains={"cars": 5, "sop": 9}, teacher_dim=[32, 16], **TINY)
    opt = torch.optim.AdamW(
        [
            {"params": list(model.head_parameters()), "lr": 1e-3},
            {"params": list(model.backbone_parameters()), "lr": 1e-5},
        ],
        weight_decay=1e-6,
    )
    student, teacher = model(torch.randn(2, 3, 32, 32), "sop")
    (student.sum() + teacher.sum()).backward()
    opt.step()
    return model.eval(), opt


def test_round_trip_rebuilds_identical_model(tmp_path, trained):
    model, opt = trained
    sampler = DomainSampler({"cars": 5, "sop": 9}, total_steps=10)
    path = save_checkpoint(
        tmp_path / "ckpt" / "last.pt", model, opt, extra={"step": 7, "sampler": sampler.state_dict()}
    )
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    loaded, ckpt = load_model(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.embed(x), model.embed(x))
        assert torch.equal(loaded.embed(x, domain="cars", teacher=True), model.embed(x, domain="cars", teacher=True))
    assert ckpt["extra"]["step"] == 7 and ckpt["config"] == model.config
    assert ckpt["config"]["mean"] == list(model.mean)
    restored = torch.optim.AdamW(
        [{"params": list(loaded.head_parameters())}, {"params": list(loaded.backbone_parameters())}]
    )
    restored.load_state_dict(ckpt["optimizer"])
    assert restored.param_groups[1]["lr"] == 1e-5
    DomainSampler({"cars": 5, "sop": 9}, total_steps=10).load_state_dict(ckpt["extra"]["sampler"])


def test_failed_save_keeps_previous_file(tmp_path, trained, monkeypatch):
    model, _ = trained
    path = save_checkpoint(tmp_path / "last.pt", model, extra={"step": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, extra={"step": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_model(path)[1]["extra"]["step"] == 1


def test_bad_checkpoints_name_the_file(tmp_path, trained):
    model, _ = trained
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    good = save_checkpoint(tmp_path / "good.pt", model)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*truncated.pt"):
        load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt is not a udon_fast checkpoint"):
        load_model(foreign)
    ckpt = torch.load(good, weights_only=True)
    del ckpt["model"]["student_projection.0.bias"]
    torch.save(ckpt, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"(?s)partial.pt does not rebuild.*student_projection.0.bias"):
        load_model(tmp_path / "partial.pt")
