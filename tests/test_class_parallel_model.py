"""Sharded classifiers in the model: slices drawn equal to the unsharded initialisation, the rank partition,
and argument errors (single process; the distributed runs are in test_class_parallel_train.py)."""
import pytest
import torch

from udon_fast.model import UDONModel
from udon_fast.model.heads import ROWS_PER_DRAW, lecun_uniform_classifier
from udon_fast.trainer.class_parallel import class_slices

TINY = dict(backbone_name="vit_tiny_patch16_224", image_size=32, backbone_kwargs={"depth": 2})


@pytest.mark.parametrize("classes,rows", [(10, (0, 10)), (10, (3, 7)), (10, (10, 10)),
                                          (2 * ROWS_PER_DRAW + 5, (ROWS_PER_DRAW - 3, 2 * ROWS_PER_DRAW + 1))])
def test_slice_is_the_rows_of_the_full_initialisation(classes, rows):
    torch.manual_seed(4)
    full = lecun_uniform_classifier(classes, 7)
    after_full = torch.rand(3)
    torch.manual_seed(4)
    part = lecun_uniform_classifier(classes, 7, rows)
    assert torch.equal(part, full[rows[0]:rows[1]])
    assert torch.equal(torch.rand(3), after_full)


def test_model_with_slices_matches_the_unsharded_model():
    domains = {"cars": 7, "sop": 12}
    torch.manual_seed(0)
    full = UDONModel(domains=domains, **TINY)
    torch.manual_seed(0)
    part = UDONModel(domains=domains, class_slices={"cars": (2, 5), "sop": (0, 0)}, **TINY)
    assert part.config["class_slices"] == {"cars": [2, 5], "sop": [0, 0]}
    for name, value in part.state_dict().items():
        want = full.state_dict()[name]
        if name.endswith("classifiers.cars"):
            want = want[2:5]
        elif name.endswith("classifiers.sop"):
            want = want[:0]
        assert torch.equal(value, want), name
    rebuilt = UDONModel.from_config(part.config)
    assert rebuilt.teacher_classifier("cars").shape == (3, 256) and rebuilt.student_classifier("sop").shape == (0, 64)


@pytest.mark.parametrize("slices,match", [
    ({"cars": (0, 7)}, "class_slices must map every domain"),
    ({"cars": (0, 8), "sop": (0, 12)}, r"class_slices\['cars'\] must be \(start, stop\) with 0 <= start <= stop <= 7"),
    ({"cars": (5, 2), "sop": (0, 12)}, r"class_slices\['cars'\]"),
    ({"cars": "ab", "sop": (0, 12)}, r"class_slices\['cars'\]"),
])
def test_bad_slices_name_the_domain(slices, match):
    with pytest.raises(ValueError, match=match):
        UDONModel(domains={"cars": 7, "sop": 12}, class_slices=slices, **TINY)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_rank_slices_tile_every_domain(world):
    domains = {"a": 1, "b": 7, "c": 224408}
    parts = [class_slices(domains, rank, world) for rank in range(world)]
    for name, classes in domains.items():
        bounds = [part[name] for part in parts]
        assert bounds[0][0] == 0 and bounds[-1][1] == classes
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1
