"""`evaluate_model` against the brute-force kNN oracle of test_knn.py, run on the embeddings that
`evaluate_model` itself computed (captured by wrapping `evaluation.embed_split`).

The tiny UnED layout mixes every pairing of the protocol: "shops" searches its index split
("test" -> "index", "val" -> "small_index"), "birds" and the multi-label "tags" are their own index
(leave-one-out), so the merged index holds self rows of two domains next to a separate index split,
and the merged labels pad "tags"' (N, 2) label sets and the other domains' single labels with -1.
The expected values are stated independently: pairs from the split names, the merged index built
in the reverse domain order, each query's self row located by position.  Some queries have no
positive in their index ("shops" test class 121 is missing from its index split, "tags" has a
singleton label set); they are scored by the rule the results state ("no_positive" in each
leaf's mean; without that key, the library's earlier fixed rule: excluded from the means).
"""

import inspect
import json

import numpy as np
import pytest
import torch
from test_knn import oracle

from udon_fast.data import load_domains
from udon_fast.data.synthetic import colour_of, write_image, write_tiny_uned
from udon_fast.evaluation import protocol as evaluation
from udon_fast.model import UDONModel
from udon_fast.model.packaged import packaged_weights

K = 5
INDEX_SPLIT = {"test": "index", "val": "small_index"}
# tags: multi-label entries (class ids, possibly several per image); every test/val label set but
# the test split's [15] shares a class with another entry of its split.
TAGS = {
    "train": [[10], [11], [12], [13], [14, 10]],
    "test": [[10, 11], [11], [10, 12], [12, 13], [13], [14, 10], [14], [11, 14], [15]],
    "val": [[12], [12, 10], [10], [11, 13], [13, 11], [14], [14, 12]],
}


def _write_tags(root, first_colour):
    """The multi-label domain "tags" in the UnED layout, colours continuing after `first_colour`."""
    colour = first_colour
    for split, entries in TAGS.items():
        info = []
        for i, class_ids in enumerate(entries):
            rel = f"tags/{split}/{i}.jpg"
            write_image(root / "images" / rel, colour_of(colour))
            info.append({"path": rel, "class_id": class_ids})
            colour += 1
        (root / "info_files" / "tags").mkdir(parents=True, exist_ok=True)
        (root / "info_files" / "tags" / f"{split}.json").write_text(json.dumps(info), encoding="utf-8")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("uned")
    write_tiny_uned(
        root,
        {
            "shops": {"train": 4, "val": 3, "small_index": 3, "test": 4, "index": 3},
            "birds": {"train": 5, "val": 3, "test": 4},
        },
        per_class=3,
    )
    _write_tags(root, first_colour=1000)  # write_tiny_uned used colours 0..86: no two images alike
    domains = load_domains(root)
    assert domains["tags"].splits["test"].labels.shape == (9, 2)
    torch.manual_seed(0)
    model = UDONModel(
        "tf_efficientnet_lite0",
        {n: d.num_classes for n, d in domains.items()},
        image_size=32,
        pretrained=packaged_weights("tf_efficientnet_lite0"),
    )
    captured = {}

    def capture(model, split, domain, **kwargs):
        embedded = real(model, split, domain, **kwargs)
        captured[domain, split.name] = embedded
        return embedded

    real = evaluation.embed_split
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "embed_split", capture)
        results = {
            split: evaluation.evaluate_model(model, domains, split, batch_size=16, progress=False)
            for split in ("test", "val")
        }
    return domains, captured, results


def _rule(results) -> str:
    """The no-positive rule the results state (the library's fixed rule before they stated one)."""
    return results["student"]["separate"]["mean"].get("no_positive", "exclude")


def _oracle(*args, rule, **kwargs):
    """test_knn's oracle under `rule` (an oracle without a no_positive argument states "exclude")."""
    if "no_positive" in inspect.signature(oracle).parameters:
        kwargs["no_positive"] = rule
    else:
        assert rule == "exclude", f"this oracle only knows the exclusion rule, the library states {rule!r}"
    return oracle(*args, **kwargs)


def _pairs(domains, split, captured):
    """{domain: (query Embedded, index Embedded or None for leave-one-out)} by the protocol's split names."""
    pairs = {}
    for name, domain in domains.items():
        index_name = INDEX_SPLIT[split]
        index = captured[name, index_name] if index_name in domain.splits else None
        pairs[name] = (captured[name, split], index)
    return pairs


def _expected_separate(pairs, kind, rule):
    expected = {}
    for name, (query, index) in pairs.items():
        own = query if index is None else index
        expected[name] = _oracle(
            getattr(query, kind),
            query.labels,
            getattr(own, kind),
            own.labels,
            k=K,
            query_is_index=index is None,
            rule=rule,
        )
    return expected


def _padded(labels, width):
    """(N,) or (N, L) labels -> (N, width), -1 padding."""
    labels = labels.reshape(len(labels), -1)
    return np.pad(labels, ((0, 0), (0, width - labels.shape[1])), constant_values=-1)


def _expected_merged(pairs, kind, rule):
    """Every query against the union of all domains' index sets (built in reverse domain order),
    skipping its own row where its domain is leave-one-out."""
    names = list(pairs)
    width = max(
        1 if e.labels.ndim == 1 else e.labels.shape[1]
        for query, index in pairs.values()
        for e in (query, index)
        if e is not None
    )
    index_emb, index_labels, index_domains, start = [], [], [], {}
    offset = 0
    for d in reversed(range(len(names))):
        query, index = pairs[names[d]]
        own = query if index is None else index
        start[d] = offset
        index_emb.append(getattr(own, kind))
        index_labels.append(_padded(own.labels, width))
        index_domains.append(np.full(len(own.labels), d))
        offset += len(own.labels)
    query_emb, query_labels, query_domains, self_rows = [], [], [], []
    for d, name in enumerate(names):
        query, index = pairs[name]
        query_emb.append(getattr(query, kind))
        query_labels.append(_padded(query.labels, width))
        query_domains.append(np.full(len(query.labels), d))
        rows = start[d] + np.arange(len(query.labels)) if index is None else np.full(len(query.labels), -1)
        self_rows.append(rows)
    result = _oracle(
        np.concatenate(query_emb),
        np.concatenate(query_labels),
        np.concatenate(index_emb),
        np.concatenate(index_labels),
        np.concatenate(query_domains),
        np.concatenate(index_domains),
        k=K,
        self_rows=np.concatenate(self_rows),
        rule=rule,
    )
    return {names[d]: metrics for d, metrics in result["per_domain"].items()}


def _assert_leaf(leaf, expected):
    """A results leaf against the oracle's per-domain answers: metrics, counts where the leaf has
    them, and the mean over domains (of those with a value)."""
    assert set(leaf) == set(expected) | {"mean"}
    for name, metrics in expected.items():
        for key in ("p_at_1", f"mmp_at_{K}"):
            assert leaf[name][key] == pytest.approx(metrics[key], abs=1e-12), (name, key)
        for key in set(leaf[name]) - {"p_at_1", f"mmp_at_{K}"}:
            assert leaf[name][key] == metrics[key], (name, key)
    for key in ("p_at_1", f"mmp_at_{K}"):
        assert leaf["mean"][key] == pytest.approx(np.nanmean([m[key] for m in expected.values()]), abs=1e-12), key


@pytest.mark.parametrize("split", ["test", "val"])
def test_evaluate_model_matches_the_oracle(evaluated, split):
    domains, captured, results = evaluated
    pairs = _pairs(domains, split, captured)
    assert {name: index is None for name, (_, index) in pairs.items()} == {"shops": False, "birds": True, "tags": True}
    assert set(results[split]) == {"student", "teacher"}
    rule = _rule(results[split])
    merged = _expected_merged(pairs, "student", rule)
    _assert_leaf(results[split]["student"]["separate"], _expected_separate(pairs, "student", rule))
    _assert_leaf(results[split]["teacher"]["separate"], _expected_separate(pairs, "teacher", rule))
    _assert_leaf(results[split]["student"]["merged"], merged)
    if split == "test":  # the rule matters here: shops' class 121 and tags' [15] have no positive
        without = {name: m["num_queries_without_positives"] for name, m in merged.items()}
        assert without == {"shops": 3, "birds": 0, "tags": 1}


def test_merged_and_separate_differ_on_these_embeddings(evaluated):
    """The merged search must be a different problem here (else the test above could not tell the
    two index modes apart): some domain's scores change when the other domains' items compete."""
    _, _, results = evaluated
    student = results["test"]["student"]
    assert any(student["merged"][name] != student["separate"][name] for name in ("shops", "birds", "tags"))
