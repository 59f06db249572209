"""UDONModel: shapes, unit norms, teacher/student paths, parameter groups, init, backbone factory."""

import math

import pytest
import torch

from udon_fast.model import UDONModel, create_backbone

DOMAINS = {"cars": 7, "sop": 11}
TINY = dict(backbone_name="vit_tiny_patch16_224", image_size=32, backbone_kwargs={"depth": 2})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UDONModel(domains=DOMAINS, **TINY).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_forward_shapes_dtypes_and_unit_norms(model, images):
    student, teacher = model(images, "sop")
    assert student.shape == (4, 64) and teacher.shape == (4, 256)
    assert student.dtype == teacher.dtype == torch.float32
    torch.testing.assert_close(student.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(teacher.norm(dim=1), torch.ones(4))


def test_embed_paths_agree_with_forward(model, images):
    with torch.no_grad():
        student, teacher = model(images, "cars")
        torch.testing.assert_close(model.embed(images), student)
        torch.testing.assert_close(model.embed(images, domain="cars", teacher=True), teacher)
        assert not torch.allclose(model.embed(images, domain="sop", teacher=True), teacher)
        features = model.features(images)
    assert features.shape == (4, model.num_features) == (4, 192)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(4))


def test_domain_errors(model, images):
    with pytest.raises(KeyError, match="unknown domain 'met'.*cars"):
        model(images, "met")
    with pytest.raises(ValueError, match="needs the domain"):
        model.embed(images, teacher=True)
    with pytest.raises(KeyError, match="unknown domain"):
        model.teacher_classifier("met")


def test_classifiers_are_raw_lecun_uniform_parameters(model):
    for domain, classes in DOMAINS.items():
        w_t, w_s = model.teacher_classifier(domain), model.student_classifier(domain)
        assert isinstance(w_t, torch.nn.Parameter) and w_t.shape == (classes, 256)
        assert isinstance(w_s, torch.nn.Parameter) and w_s.shape == (classes, 64)
        for w, dim in ((w_t, 256), (w_s, 64)):
            assert w.abs().max() <= math.sqrt(3 / dim)
    big = UDONModel(domains={"met": 4000}, **TINY).student_classifier("met")
    bound = math.sqrt(3 / 64)
    assert big.abs().max() > 0.95 * bound  # spans the range: uniform, not normal
    assert abs(big.var().item() - bound**2 / 3) < 0.05 * bound**2 / 3


def test_parameter_groups_partition_the_model(model):
    heads = {id(p) for p in model.head_parameters()}
    backbone = {id(p) for p in model.backbone_parameters()}
    assert heads.isdisjoint(backbone)
    assert heads | backbone == {id(p) for p in model.parameters()}
    assert id(model.teacher_classifier("cars")) in heads
    assert id(model.student_projection[0].weight) in heads


def test_gradients_reach_the_right_parts(model, images):
    model.zero_grad()
    student, teacher = model.train()(images, "cars")
    teacher.sum().backward()
    assert model.teacher_projections["cars"][0].weight.grad is not None
    assert model.teacher_projections["sop"][0].weight.grad is None
    assert model.student_projection[0].weight.grad is None
    assert model.backbone.patch_embed.proj.weight.grad is not None
    model.zero_grad()
    model.eval()


def test_mlp_projection_dims():
    m = UDONModel(domains={"a": 3}, teacher_dim=[128, 32], student_dim=16, **TINY)
    kinds = [type(layer).__name__ for layer in m.teacher_projections["a"]]
    assert kinds == ["Linear", "LayerNorm", "GELU", "Linear"]
    student, teacher = m(torch.randn(2, 3, 32, 32), "a")
    assert student.shape == (2, 16) and teacher.shape == (2, 32)
    assert m.teacher_classifier("a").shape == (3, 32)


def test_normalisation_comes_from_timm_config():
    m = UDONModel("vit_base_patch16_clip_224.openai", {"a": 2}, image_size=32, backbone_kwargs={"depth": 1})
    assert m.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert m.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))


def test_argument_errors():
    with pytest.raises(ValueError, match="unknown backbone 'vit_tiny_patch_16'.*vit_tiny_patch16_224"):
        create_backbone("vit_tiny_patch_16")
    with pytest.raises(ValueError, match="number of classes"):
        UDONModel(domains={"a": 0}, **TINY)
    with pytest.raises(ValueError, match="domain name 'a.b'"):
        UDONModel(domains={"a.b": 3}, **TINY)
    with pytest.raises(ValueError, match="teacher_dim"):
        UDONModel(domains={"a": 3}, teacher_dim=[], **TINY)


def test_cnn_backbones_take_any_image_size():
    m = UDONModel("tf_efficientnet_lite0", {"a": 3}, image_size=64)
    assert m.num_features == 1280 and m.mean == (0.5, 0.5, 0.5)
    assert m.embed(torch.randn(1, 3, 64, 64)).shape == (1, 64)
