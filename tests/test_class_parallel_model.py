"""Sharded classifiers in the model (`DomainClassifier`): slices drawn equal to the unsharded initialisation,
torch.chunk's rank partition, the shard metadata in the state dict, logits and loss, argument errors
(single process; the distributed runs are in test_class_parallel_train.py)."""

import pytest
import torch
import torch.nn.functional as F

from udon_fast.losses import udon_loss
from udon_fast.model import UDONModel
from udon_fast.model.heads import ROWS_PER_DRAW, lecun_uniform_classifier
from udon_fast.model.sharded_classifier import HEADS, DomainClassifier, class_slice

TINY = dict(backbone_name="vit_tiny_patch16_224", image_size=32, backbone_kwargs={"depth": 2})


@pytest.mark.parametrize(
    "classes,rows",
    [(10, (0, 10)), (10, (3, 7)), (10, (10, 10)), (2 * ROWS_PER_DRAW + 5, (ROWS_PER_DRAW - 3, 2 * ROWS_PER_DRAW + 1))],
)
def test_slice_is_the_rows_of_the_full_initialisation(classes, rows):
    torch.manual_seed(4)
    full = lecun_uniform_classifier(classes, 7)
    after_full = torch.rand(3)
    torch.manual_seed(4)
    part = lecun_uniform_classifier(classes, 7, rows)
    assert torch.equal(part, full[rows[0] : rows[1]])
    assert torch.equal(torch.rand(3), after_full)


@pytest.mark.parametrize("world", [2, 3])
def test_model_with_a_classifier_shard_matches_the_unsharded_model(world):
    domains = {"cars": 7, "sop": 2}
    torch.manual_seed(0)
    full = UDONModel(domains=domains, **TINY)
    for rank in range(world):
        torch.manual_seed(0)
        part = UDONModel(domains=domains, classifier_shard=(rank, world), **TINY)
        assert part.config == full.config and part.sharded
        for name, value in part.state_dict().items():
            want = full.state_dict()[name]
            if name.startswith("classifiers.") and not name.endswith("layout"):
                start, stop = class_slice(domains[name.split(".")[1]], rank, world)
                want = want[start:stop]
            if name.endswith("layout"):
                want = torch.tensor(
                    [domains[name.split(".")[1]], rank, world, *class_slice(domains[name.split(".")[1]], rank, world)]
                )
            assert torch.equal(value, want), name
    assert not full.sharded and not list(full.sharded_parameters())
    assert sorted(n for n, _ in part.sharded_parameters()) == [
        "classifiers.cars.student",
        "classifiers.cars.teacher",
        "classifiers.sop.student",
        "classifiers.sop.teacher",
    ]


def test_a_slice_refuses_the_rows_of_another_slice():
    first, second = DomainClassifier(4, 8, 4, 0, 2), DomainClassifier(4, 8, 4, 1, 2)
    with pytest.raises(ValueError, match=r"classifier rows .*'start': 0.* do not match this module's slice"):
        second.load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\), got 2"):
        DomainClassifier(4, 8, 4, 2, 2)


def test_logits_and_loss_of_an_unsharded_classifier():
    torch.manual_seed(1)
    classifier = DomainClassifier(5, 8, 4)
    for head in HEADS:
        classifier.reset_parameters(head)
    student = F.normalize(torch.randn(3, 4), dim=1)
    teacher = F.normalize(torch.randn(3, 8), dim=1)
    labels = torch.tensor([0, 4, 2])
    want = 16.0 * student @ F.normalize(classifier.student, dim=1).T
    torch.testing.assert_close(classifier.logits(student, "student", scale=16.0), want)
    assert classifier.shard is None
    got = classifier.loss(student_emb=student, teacher_emb=teacher, labels=labels, backend="chunked")
    expected = udon_loss(student, teacher, classifier.student, classifier.teacher, labels, backend="chunked")
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    with pytest.raises(ValueError, match="head must be one of"):
        classifier.logits(student, "both")


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_rank_slices_tile_every_domain_like_torch_chunk(world):
    for classes in (1, 7, 224408):
        bounds = [class_slice(classes, rank, world) for rank in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == classes
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        chunks = torch.arange(classes).chunk(world)
        sizes = [stop - start for start, stop in bounds]
        assert [len(c) for c in chunks] == [s for s in sizes if s > 0]
