"""The official UDON release's starting weights: the CLIP `vit_b16.npy` (pickled dict of torch tensors,
OpenAI key names) and the AugReg `.npz`, on small files of the same structure written here."""

import numpy as np
import pytest
import torch
from test_model_weights import assert_same_features, tiny_vit, to_augreg_npz, to_openclip, udon

from udon_fast.model import WeightsError


def save_like_the_release(state_dict: dict, path) -> None:
    """`np.save` of a dict of torch tensors: a 0-d object array whose pickle holds the tensors."""
    np.save(path, state_dict, allow_pickle=True)


def openai_clip_state_dict(source: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The OpenAI CLIP layout of a timm pre-norm ViT: visual tower, `visual.proj`, a text tower."""
    state = to_openclip(source.state_dict())
    state.update(
        {
            "text_projection": torch.randn(8, 16),
            "positional_embedding": torch.randn(7, 8),
            "ln_final.weight": torch.ones(8),
            "transformer.resblocks.0.attn.in_proj_weight": torch.randn(24, 8),
        }
    )
    return state


def test_clip_npy_loads_the_visual_tower_without_the_projection(tmp_path):
    source = tiny_vit(32, pre_norm=True)
    state = openai_clip_state_dict(source)
    assert "visual.proj" in state and "visual.conv1.weight" in state
    path = tmp_path / "vit_b16.npy"
    save_like_the_release(state, path)
    stored = np.load(path, allow_pickle=True).item()
    assert isinstance(stored["visual.conv1.weight"], torch.Tensor)
    model = udon(32, path, pre_norm=True)
    assert_same_features(source, model, 32)
    assert not any("head" in k for k in model.backbone.state_dict())
    resized = udon(48, path, pre_norm=True)
    assert resized.backbone.pos_embed.shape == (1, 10, 192)


def test_clip_npy_with_numpy_values_loads_too(tmp_path):
    source = tiny_vit(32, pre_norm=True)
    state = {k: v.numpy() for k, v in openai_clip_state_dict(source).items()}
    path = tmp_path / "vit_b16.npy"
    save_like_the_release(state, path)
    assert_same_features(source, udon(32, path, pre_norm=True), 32)


def test_bad_npy_files_name_the_file(tmp_path):
    plain = tmp_path / "features.npy"
    np.save(plain, np.zeros((3, 4), np.float32))
    with pytest.raises(WeightsError, match=r"features\.npy: expected a \.npy holding a pickled dict.*float32 \(3, 4\)"):
        udon(32, plain, pre_norm=True)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"no numpy header")
    with pytest.raises(WeightsError, match=r"cannot read weights file .*garbage\.npy"):
        udon(32, garbage, pre_norm=True)
    wrong = tmp_path / "wrong.npy"
    save_like_the_release({"visual.conv1.weight": "not a tensor"}, wrong)
    with pytest.raises(WeightsError, match=r"wrong\.npy: entry 'visual\.conv1\.weight' is str"):
        udon(32, wrong, pre_norm=True)
    other_vit = tmp_path / "other.npy"
    save_like_the_release(openai_clip_state_dict(tiny_vit(32, pre_norm=True, embed_dim=96)), other_vit)
    with pytest.raises(WeightsError, match=r"other\.npy does not fit backbone"):
        udon(32, other_vit, pre_norm=True)


def test_augreg_npz_with_an_imagenet_head_still_loads(tmp_path):
    """The release's AugReg start is fine-tuned on ImageNet (1000-class head): the head is ignored."""
    torch.manual_seed(3)
    source = tiny_vit(32)
    state = dict(source.state_dict())
    state["head.weight"], state["head.bias"] = torch.randn(1000, 192), torch.randn(1000)
    path = tmp_path / "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-res_224.npz"
    to_augreg_npz(state, path)
    assert np.load(path)["head/kernel"].shape == (192, 1000)
    assert_same_features(source, udon(32, path), 32)
