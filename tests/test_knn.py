"""knn_metrics / knn_metrics_by_domain against a brute-force statement of the UnED definitions.

Every comparison names its rule for queries without a relevant index item (`no_positive`):
"miss" (the official UnED metric: they score 0 and stay in the means) or "exclude" (left out).
"""

import math

import numpy as np
import pytest
import torch

from udon_fast.retrieval.knn import knn_metrics, knn_metrics_by_domain

# ---- oracle: plain loops over queries, float64 dot products -------------------------------------


def label_sets(labels: np.ndarray) -> list[set[int]]:
    labels = np.asarray(labels)
    rows = labels[:, None] if labels.ndim == 1 else labels
    return [{int(v) for v in row if v >= 0} for row in rows]


def oracle_per_query(query, q_labels, index, x_labels, q_domains, x_domains, k, self_rows):
    """Per query: (first neighbour relevant, precision in the first min(n_q, k)) or None when n_q == 0.
    self_rows[i]: the index row that is query i itself (never a neighbour, not counted), or -1."""
    q_sets, x_sets = label_sets(q_labels), label_sets(x_labels)
    results = []
    for i in range(len(query)):
        scores = index.astype(np.float64) @ query[i].astype(np.float64)
        order = [int(j) for j in np.argsort(-scores, kind="stable") if j != self_rows[i]]

        def relevant(j, i=i):
            return q_domains[i] == x_domains[j] and bool(q_sets[i] & x_sets[j])

        n_q = sum(relevant(j) for j in range(len(index)) if j != self_rows[i])
        if n_q == 0:
            results.append(None)
            continue
        cutoff = min(n_q, k)
        results.append((relevant(order[0]), sum(relevant(j) for j in order[:cutoff]) / cutoff))
    return results


def oracle_summary(results, k, no_positive):
    """Means over the queries: under "miss" a query without a positive (None) scores (False, 0), under
    "exclude" it is dropped."""
    if no_positive == "miss":
        counted = [(False, 0.0) if r is None else r for r in results]
    else:
        counted = [r for r in results if r is not None]
    return {
        "p_at_1": float(np.mean([r[0] for r in counted])) if counted else math.nan,
        f"mmp_at_{k}": float(np.mean([r[1] for r in counted])) if counted else math.nan,
        "num_queries": len(results),
        "num_queries_without_positives": sum(r is None for r in results),
    }


def oracle(
    query,
    q_labels,
    index,
    x_labels,
    q_domains=None,
    x_domains=None,
    *,
    no_positive,
    k=5,
    query_is_index=False,
    self_rows=None,
):
    """knn_metrics's answer by the definitions, under the given no_positive rule."""
    q_dom = np.zeros(len(query), int) if q_domains is None else np.asarray(q_domains)
    x_dom = np.zeros(len(index), int) if x_domains is None else np.asarray(x_domains)
    if self_rows is None:
        self_rows = np.arange(len(query)) if query_is_index else np.full(len(query), -1)
    results = oracle_per_query(query, q_labels, index, x_labels, q_dom, x_dom, k, self_rows)
    expected = oracle_summary(results, k, no_positive)
    expected["no_positive"] = no_positive
    if q_domains is not None:
        expected["per_domain"] = {
            int(d): oracle_summary([r for r, qd in zip(results, q_dom) if qd == d], k, no_positive)
            for d in np.unique(q_dom)
        }
    return expected


def without_rule(metrics):
    """knn_metrics's dict without its "no_positive" key (to compare with a per-domain entry)."""
    return {key: value for key, value in metrics.items() if key != "no_positive"}


def assert_metrics_equal(got, expected):
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_metrics_equal(got[key], value)
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
        else:
            assert got[key] == value, key


# ---- random cases -------------------------------------------------------------------------------


def embeddings(rng, n, dim=8):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def multi_labels(rng, n, num_classes, width):
    """(n, width) labels, 1..width distinct-or-repeated ids per row, padded with -1."""
    labels = rng.integers(0, num_classes, size=(n, width))
    labels[np.arange(width)[None, :] >= rng.integers(1, width + 1, size=n)[:, None]] = -1
    return labels


@pytest.fixture
def rng():
    return np.random.default_rng(0)


RULES = ("miss", "exclude")


@pytest.mark.parametrize("no_positive", RULES)
@pytest.mark.parametrize("k", [1, 5])
def test_single_domain_matches_oracle(rng, k, no_positive):
    query, index = embeddings(rng, 60), embeddings(rng, 200)
    q_labels, x_labels = rng.integers(0, 12, 60), rng.integers(0, 10, 200)  # classes 10, 11: no positives
    got = knn_metrics(query, q_labels, index, x_labels, k=k, no_positive=no_positive)
    expected = oracle(query, q_labels, index, x_labels, k=k, no_positive=no_positive)
    assert expected["num_queries_without_positives"] > 0
    assert_metrics_equal(got, expected)


def test_miss_is_the_default(rng):
    query, index = embeddings(rng, 60), embeddings(rng, 200)
    q_labels, x_labels = rng.integers(0, 12, 60), rng.integers(0, 10, 200)
    assert knn_metrics(query, q_labels, index, x_labels) == knn_metrics(
        query, q_labels, index, x_labels, no_positive="miss"
    )
    kwargs = {"query_domains": np.zeros(60, int), "index_domains": np.zeros(200, int)}
    by_domain = knn_metrics_by_domain(query, q_labels, index, x_labels, **kwargs)
    assert by_domain["no_positive"] == "miss"
    assert by_domain == knn_metrics_by_domain(query, q_labels, index, x_labels, no_positive="miss", **kwargs)


@pytest.mark.parametrize("no_positive", RULES)
@pytest.mark.parametrize("k", [1, 5])
def test_merged_domains_match_oracle(rng, k, no_positive):
    query, index = embeddings(rng, 80), embeddings(rng, 240)
    q_labels, x_labels = rng.integers(0, 6, 80), rng.integers(0, 6, 240)
    q_domains, x_domains = rng.integers(0, 3, 80) * 7 - 2, rng.integers(0, 3, 240) * 7 - 2  # ids -2, 5, 12
    got = knn_metrics(
        query, q_labels, index, x_labels, query_domains=q_domains, index_domains=x_domains, k=k, no_positive=no_positive
    )
    assert_metrics_equal(
        got, oracle(query, q_labels, index, x_labels, q_domains, x_domains, k=k, no_positive=no_positive)
    )
    # the same label in another domain is not relevant: domain-blind scores differ
    blind = knn_metrics(query, q_labels, index, x_labels, k=k, no_positive=no_positive)
    assert blind["p_at_1"] != got["p_at_1"]


@pytest.mark.parametrize("no_positive", RULES)
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("index_multi", [False, True])
def test_multi_label_matches_oracle(rng, k, index_multi, no_positive):
    query, index = embeddings(rng, 70), embeddings(rng, 220)
    q_labels = multi_labels(rng, 70, 40, 4)  # small classes: n_q < k is common
    q_labels[:4] = [[60, 61, -1, -1], [62, -1, -1, -1], [60, 60, 63, -1], [64, 65, 66, 67]]  # absent everywhere
    x_labels = multi_labels(rng, 220, 40, 3) if index_multi else rng.integers(0, 40, 220)
    q_domains, x_domains = rng.integers(0, 2, 70), rng.integers(0, 2, 220)
    got = knn_metrics(
        query, q_labels, index, x_labels, query_domains=q_domains, index_domains=x_domains, k=k, no_positive=no_positive
    )
    expected = oracle(query, q_labels, index, x_labels, q_domains, x_domains, k=k, no_positive=no_positive)
    assert expected["num_queries_without_positives"] >= 4
    assert_metrics_equal(got, expected)


@pytest.mark.parametrize("no_positive", RULES)
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("multi", [False, True])
def test_query_is_index_matches_oracle(rng, k, multi, no_positive):
    n = 150
    emb = embeddings(rng, n)
    labels = multi_labels(rng, n, 40, 2) if multi else rng.integers(0, 40, n)
    if not multi:
        labels[:5] = 100 + np.arange(5)  # singleton classes: no positives once the query is removed
    domains = rng.integers(0, 2, n)
    got = knn_metrics(
        emb,
        labels,
        emb,
        labels,
        query_domains=domains,
        index_domains=domains,
        k=k,
        query_is_index=True,
        no_positive=no_positive,
    )
    expected = oracle(emb, labels, emb, labels, domains, domains, k=k, query_is_index=True, no_positive=no_positive)
    if not multi:
        assert expected["num_queries_without_positives"] >= 5
    assert_metrics_equal(got, expected)


def mixed_sets(rng, multi):
    """Domain 3's 60 queries are their own index (leave-one-out); domain 8's 40 queries search a
    separate 100-item index split.  The union index is [domain 3's queries, domain 8's split]."""
    own, split_query, split_index = embeddings(rng, 60), embeddings(rng, 40), embeddings(rng, 100)
    own_labels = multi_labels(rng, 60, 25, 2) if multi else rng.integers(0, 25, 60)
    if not multi:
        own_labels[:3] = 50 + np.arange(3)  # singletons
    pad = (lambda a: a) if not multi else (lambda a: np.stack([a, np.full(len(a), -1)], axis=1))
    query_labels = np.concatenate([own_labels, pad(rng.integers(0, 25, 40))])
    index_labels = np.concatenate([own_labels, pad(rng.integers(0, 25, 100))])
    return {
        "query": np.concatenate([own, split_query]),
        "q_labels": query_labels,
        "index": np.concatenate([own, split_index]),
        "x_labels": index_labels,
        "q_domains": np.r_[np.full(60, 3), np.full(40, 8)],
        "x_domains": np.r_[np.full(60, 3), np.full(100, 8)],
        "self_rows": np.r_[np.arange(60), np.full(40, -1)],
    }


@pytest.mark.parametrize("no_positive", RULES)
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("multi", [False, True])
def test_self_rows_mixed_domains_match_oracle(rng, k, multi, no_positive):
    c = mixed_sets(rng, multi)
    args = (c["query"], c["q_labels"], c["index"], c["x_labels"])
    kwargs = {
        "query_domains": c["q_domains"],
        "index_domains": c["x_domains"],
        "k": k,
        "query_self_rows": c["self_rows"],
        "no_positive": no_positive,
    }
    expected = oracle(*args, c["q_domains"], c["x_domains"], k=k, self_rows=c["self_rows"], no_positive=no_positive)
    assert_metrics_equal(knn_metrics(*args, **kwargs), expected)
    assert_metrics_equal(knn_metrics_by_domain(*args, index="merged", **kwargs)["per_domain"], expected["per_domain"])

    separate = knn_metrics_by_domain(*args, index="separate", **kwargs)["per_domain"]
    own = oracle(
        c["query"][:60],
        c["q_labels"][:60],
        c["index"][:60],
        c["x_labels"][:60],
        k=k,
        query_is_index=True,
        no_positive=no_positive,
    )
    split = oracle(
        c["query"][60:], c["q_labels"][60:], c["index"][60:], c["x_labels"][60:], k=k, no_positive=no_positive
    )
    assert_metrics_equal(separate[3], without_rule(own))
    assert_metrics_equal(separate[8], without_rule(split))


@pytest.mark.parametrize("no_positive", RULES)
def test_self_rows_of_every_query_equal_query_is_index(rng, no_positive):
    emb, labels = embeddings(rng, 50), rng.integers(0, 10, 50)
    assert knn_metrics(emb, labels, emb, labels, query_self_rows=np.arange(50), no_positive=no_positive) == knn_metrics(
        emb, labels, emb, labels, query_is_index=True, no_positive=no_positive
    )


@pytest.mark.parametrize("no_positive", RULES)
def test_hand_computed_example(no_positive):
    # query at 0 degrees: neighbours 0, 1, 2, 3; query at 180 degrees: 3, 2, 1, 0
    index, query = unit_circle([10, 40, 100, 170]), unit_circle([0, 180])
    x_labels, q_labels = np.array([1, 0, 0, 1]), np.array([0, 1])
    # query 0 (class 0, n_q = 2): neighbours 0, 1, 2, 3 -> relevant F, T: P@1 0, precision 1/2
    # query 1 (class 1, n_q = 2): neighbours 3, 2, 1, 0 -> relevant T, F: P@1 1, precision 1/2
    # every query has a positive, so both rules agree
    got = knn_metrics(query, q_labels, index, x_labels, k=5 - 2, no_positive=no_positive)
    assert got == {
        "p_at_1": 0.5,
        "mmp_at_3": 0.5,
        "num_queries": 2,
        "num_queries_without_positives": 0,
        "no_positive": no_positive,
    }


# Hand-computed cases with queries that have no positive: (no_positive rule, P@1, mMP@k).


@pytest.mark.parametrize("no_positive, p_at_1, mmp", [("miss", 1 / 3, 1 / 3), ("exclude", 1 / 2, 1 / 2)])
def test_hand_computed_label_absent_from_index(no_positive, p_at_1, mmp):
    index, query = unit_circle([10, 40, 100, 170]), unit_circle([0, 180, 90])
    x_labels, q_labels = np.array([1, 0, 0, 1]), np.array([0, 1, 7])
    # queries 0 and 1 as in test_hand_computed_example: P@1 0 and 1, precision 1/2 and 1/2;
    # query 2 (class 7, in no index item): n_q = 0.  miss: (0 + 1 + 0) / 3 and (1/2 + 1/2 + 0) / 3;
    # exclude: (0 + 1) / 2 and (1/2 + 1/2) / 2
    got = knn_metrics(query, q_labels, index, x_labels, k=3, no_positive=no_positive)
    assert got == pytest.approx(
        {
            "p_at_1": p_at_1,
            "mmp_at_3": mmp,
            "num_queries": 3,
            "num_queries_without_positives": 1,
            "no_positive": no_positive,
        },
        abs=1e-15,
    )


@pytest.mark.parametrize("no_positive, p_at_1, mmp", [("miss", 2 / 5, 3 / 10), ("exclude", 2 / 3, 1 / 2)])
def test_hand_computed_singletons_query_is_index(no_positive, p_at_1, mmp):
    emb, labels = unit_circle([0, 10, 50, 60, 200]), np.array([0, 1, 0, 0, 2])
    # row 0 (class 0, n_q = 2): neighbours 1, 2 -> F, T: P@1 0, precision 1/2
    # row 1 (class 1): a singleton once it is removed from its own neighbours: n_q = 0
    # row 2 (class 0, n_q = 2): neighbours 3, 1 -> T, F: P@1 1, precision 1/2
    # row 3 (class 0, n_q = 2): neighbours 2, 1 -> T, F: P@1 1, precision 1/2
    # row 4 (class 2): singleton, n_q = 0
    # miss: P@1 2/5, mMP@2 (3/2)/5; exclude: P@1 2/3, mMP@2 (3/2)/3
    got = knn_metrics(emb, labels, emb, labels, k=2, query_is_index=True, no_positive=no_positive)
    assert got == pytest.approx(
        {
            "p_at_1": p_at_1,
            "mmp_at_2": mmp,
            "num_queries": 5,
            "num_queries_without_positives": 2,
            "no_positive": no_positive,
        },
        abs=1e-15,
    )


@pytest.mark.parametrize("no_positive, p_at_1, mmp", [("miss", 1 / 3, 1 / 2), ("exclude", 1 / 2, 3 / 4)])
def test_hand_computed_multi_label_queries(no_positive, p_at_1, mmp):
    index, query = unit_circle([10, 40, 100, 170]), unit_circle([0, 180, 90])
    x_labels = np.array([1, 0, 0, 1])
    q_labels = np.array([[0, 5], [1, 0], [5, 6]])
    # query 0 (classes 0, 5; 5 is in no index item): n_q = 2, neighbours 0, 1 -> F, T: P@1 0, precision 1/2
    # query 1 (classes 1, 0): every index item is relevant, n_q = 4, cutoff 3: neighbours 3, 2, 1 -> T, T, T
    # query 2 (classes 5, 6, both absent from the index): n_q = 0
    # miss: P@1 (0 + 1 + 0) / 3, mMP@3 (1/2 + 1 + 0) / 3; exclude: P@1 1/2, mMP@3 (1/2 + 1) / 2
    got = knn_metrics(query, q_labels, index, x_labels, k=3, no_positive=no_positive)
    assert got == pytest.approx(
        {
            "p_at_1": p_at_1,
            "mmp_at_3": mmp,
            "num_queries": 3,
            "num_queries_without_positives": 1,
            "no_positive": no_positive,
        },
        abs=1e-15,
    )


@pytest.mark.parametrize("index", ["merged", "separate"])
def test_official_example_121_of_500_without_positive(rng, index):
    # The official metric on a domain where 121 of 500 queries have no positive is the
    # exclude-rule value times 379 / 500, for P@1 and mMP@5 alike.  Domain 1 is a second, complete domain.
    query, index_emb = embeddings(rng, 600), embeddings(rng, 900)
    q_labels = np.r_[rng.integers(0, 20, 379), rng.integers(20, 30, 121), rng.integers(0, 20, 100)]
    x_labels = rng.integers(0, 20, 900)
    q_domains, x_domains = np.r_[np.zeros(500, int), np.ones(100, int)], np.r_[np.zeros(600, int), np.ones(300, int)]
    args = (query, q_labels, index_emb, x_labels)
    kwargs = {"query_domains": q_domains, "index_domains": x_domains, "index": index}
    miss = knn_metrics_by_domain(*args, no_positive="miss", **kwargs)
    exclude = knn_metrics_by_domain(*args, no_positive="exclude", **kwargs)
    domain, complete = miss["per_domain"][0], miss["per_domain"][1]
    assert domain["num_queries"] == 500 and domain["num_queries_without_positives"] == 121
    assert exclude["per_domain"][0]["num_queries_without_positives"] == 121
    for key in ("p_at_1", "mmp_at_5"):
        assert exclude["per_domain"][0][key] > 0
        assert domain[key] == pytest.approx(exclude["per_domain"][0][key] * 379 / 500, rel=1e-12)
        assert complete[key] == exclude["per_domain"][1][key]
        assert miss["mean"][key] == pytest.approx((domain[key] + complete[key]) / 2, rel=1e-12)


@pytest.mark.parametrize("no_positive, p_at_1", [("miss", (1 / 3 + 0) / 2), ("exclude", 1 / 2)])
def test_domain_without_any_positive_in_the_mean(no_positive, p_at_1):
    # domain 0: test_hand_computed_label_absent_from_index (P@1 1/3 under miss, 1/2 under exclude);
    # domain 4: one query whose class is in no index item of domain 4 (class 0 exists only in domain 0)
    index, query = unit_circle([10, 40, 100, 170, 5]), unit_circle([0, 180, 90, 3])
    x_labels, q_labels = np.array([1, 0, 0, 1, 9]), np.array([0, 1, 7, 0])
    q_domains, x_domains = np.array([0, 0, 0, 4]), np.array([0, 0, 0, 0, 4])
    got = knn_metrics_by_domain(
        query, q_labels, index, x_labels, query_domains=q_domains, index_domains=x_domains, k=1, no_positive=no_positive
    )
    lonely = got["per_domain"][4]
    assert lonely["num_queries"] == 1 and lonely["num_queries_without_positives"] == 1
    if no_positive == "miss":
        assert lonely["p_at_1"] == 0.0 and lonely["mmp_at_1"] == 0.0
    else:
        assert math.isnan(lonely["p_at_1"]) and math.isnan(lonely["mmp_at_1"])
    assert got["mean"]["p_at_1"] == pytest.approx(p_at_1, abs=1e-15)


def unit_circle(degrees):
    angles = np.deg2rad(degrees)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


@pytest.mark.parametrize("index_labels", [[5, 5, 6], [[5, -1], [5, 5], [6, 6]]], ids=["1-D", "2-D"])
def test_repeated_labels_count_once(index_labels):
    # neighbours of the query at 0 degrees: 2, 0, 1; n_q = 2 (not 3 or 4), so 1 of the first 2 is relevant
    got = knn_metrics(unit_circle([0]), np.array([[5, 5, -1]]), unit_circle([20, 30, 10]), np.array(index_labels), k=3)
    assert got["p_at_1"] == 0.0 and got["mmp_at_3"] == 0.5


def test_exact_ties_resolve_in_index_order():
    index = np.ones((3, 2), np.float32) / np.sqrt(2)
    got = knn_metrics(index[:1], np.array([0]), index, np.array([1, 0, 0]), k=3)
    # neighbours 0, 1, 2: first irrelevant; n_q = 2 and one of the first two is relevant
    assert got["p_at_1"] == 0.0 and got["mmp_at_3"] == 0.5


@pytest.mark.parametrize("no_positive, score", [("miss", 1 / 3), ("exclude", 1 / 2)])
def test_query_is_index_exact_ties_drop_last(no_positive, score):
    # all embeddings equal: every row's 2 neighbours are rows 0, 1, so row 2 does not see itself
    emb = np.ones((3, 3), np.float32) / np.sqrt(3)
    labels = np.array([0, 1, 0])
    got = knn_metrics(emb, labels, emb, labels, k=1, query_is_index=True, no_positive=no_positive)
    # row 0 drops itself and keeps row 1 (irrelevant); row 1 is a singleton (no positive);
    # row 2 drops the last neighbour, row 1, and keeps row 0 (relevant)
    assert got == {
        "p_at_1": score,
        "mmp_at_1": score,
        "num_queries": 3,
        "num_queries_without_positives": 1,
        "no_positive": no_positive,
    }


def test_batching_torch_and_float64_inputs_agree(rng):
    query, index = embeddings(rng, 50), embeddings(rng, 120)
    q_labels, x_labels = rng.integers(0, 5, 50), rng.integers(0, 5, 120)
    q_domains, x_domains = rng.integers(0, 2, 50), rng.integers(0, 2, 120)
    kwargs = {"query_domains": q_domains, "index_domains": x_domains}
    reference = knn_metrics(query, q_labels, index, x_labels, **kwargs)
    assert knn_metrics(query, q_labels, index, x_labels, query_batch_size=7, **kwargs) == reference
    assert knn_metrics(query.astype(np.float64), q_labels, index.astype(np.float64), x_labels, **kwargs) == reference
    as_torch = [torch.from_numpy(a) for a in (query, q_labels, index, x_labels, q_domains, x_domains)]
    got = knn_metrics(*as_torch[:4], query_domains=as_torch[4], index_domains=as_torch[5])
    assert got == reference


@pytest.mark.parametrize("no_positive", RULES)
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("query_is_index", [False, True])
def test_by_domain_merged_and_separate(rng, k, query_is_index, no_positive):
    n = 120
    query, index = embeddings(rng, n), embeddings(rng, 2 * n)
    q_labels, x_labels = rng.integers(0, 8, n), rng.integers(0, 8, 2 * n)
    q_labels[:6] = 20 + np.arange(6)  # no positive: absent from the index, or singletons
    q_domains, x_domains = rng.integers(0, 3, n), rng.integers(0, 3, 2 * n)
    if query_is_index:
        index, x_labels, x_domains = query, q_labels, q_domains
    args = (query, q_labels, index, x_labels)
    kwargs = {
        "query_domains": q_domains,
        "index_domains": x_domains,
        "k": k,
        "query_is_index": query_is_index,
        "no_positive": no_positive,
    }

    merged = knn_metrics_by_domain(*args, index="merged", **kwargs)
    expected_merged = oracle(*args, q_domains, x_domains, k=k, query_is_index=query_is_index, no_positive=no_positive)[
        "per_domain"
    ]
    assert sum(m["num_queries_without_positives"] for m in expected_merged.values()) >= 6
    assert_metrics_equal(merged["per_domain"], expected_merged)
    assert merged["per_domain"] == knn_metrics(*args, **kwargs)["per_domain"]
    assert merged["no_positive"] == no_positive

    separate = knn_metrics_by_domain(*args, index="separate", **kwargs)
    for d, got in separate["per_domain"].items():
        q_rows, x_rows = q_domains == d, x_domains == d
        expected = oracle(
            query[q_rows],
            q_labels[q_rows],
            index[x_rows],
            x_labels[x_rows],
            k=k,
            query_is_index=query_is_index,
            no_positive=no_positive,
        )
        assert_metrics_equal(got, without_rule(expected))
    assert separate["per_domain"].keys() == {0, 1, 2}

    for result in (merged, separate):
        for key in ("p_at_1", f"mmp_at_{k}"):
            assert result["mean"][key] == pytest.approx(np.mean([m[key] for m in result["per_domain"].values()]))


def test_no_query_with_a_positive_gives_zero_under_miss_and_nan_under_exclude(rng):
    emb = embeddings(rng, 6)
    labels = np.arange(6)  # all singletons
    miss = knn_metrics(emb, labels, emb, labels, k=1, query_is_index=True, no_positive="miss")
    assert miss["p_at_1"] == 0.0 and miss["mmp_at_1"] == 0.0
    exclude = knn_metrics(emb, labels, emb, labels, k=1, query_is_index=True, no_positive="exclude")
    assert math.isnan(exclude["p_at_1"]) and math.isnan(exclude["mmp_at_1"])
    assert miss["num_queries_without_positives"] == exclude["num_queries_without_positives"] == 6


@pytest.mark.gpu
def test_gpu_index_matches_cpu(rng):
    """faiss's GPU index against its CPU index, up to rounding and the ties it can reorder.

    Both compute fp32 GEMMs (faiss keeps cuBLAS from reducing precision), so each score is within
    D 2^-24 of the exact one; TOL allows 4 times that.  Where the exact top-(k+1) scores of a query
    are more than 2 TOL apart, both must return exactly the exact order; elsewhere the k-th scores
    agree within 2 TOL.  The metrics (per-query values in [0, 1]) then differ by at most
    (queries with such near-ties) / (scored queries).
    """
    from udon_fast.retrieval.knn import _search_batches

    k, dim = 5, 64
    query, index = embeddings(rng, 300, dim), embeddings(rng, 2000, dim)
    q_labels, x_labels = rng.integers(0, 20, 300), rng.integers(0, 20, 2000)
    tol = 4 * dim * 2.0**-24
    exact = query.astype(np.float64) @ index.astype(np.float64).T
    top = -np.sort(-exact, axis=1)[:, : k + 1]
    tied = (np.diff(-top, axis=1) <= 2 * tol).any(axis=1)
    ids = {gpu: next(_search_batches(query, index, k, len(query), use_gpu=gpu))[1] for gpu in (False, True)}
    exact_order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    for gpu, found in ids.items():
        scores = np.take_along_axis(exact, found, axis=1)
        np.testing.assert_allclose(scores, top[:, :k], rtol=0, atol=2 * tol, err_msg=f"use_gpu={gpu}")
        assert (found[~tied] == exact_order[~tied]).all(), f"use_gpu={gpu}: order differs away from ties"
    cpu = knn_metrics(query, q_labels, index, x_labels, k=k, use_gpu=False)
    gpu = knn_metrics(
        torch.from_numpy(query).cuda(), q_labels, torch.from_numpy(index).cuda(), x_labels, k=k, use_gpu=True
    )
    assert {key: v for key, v in gpu.items() if key not in ("p_at_1", f"mmp_at_{k}")} == {
        key: v for key, v in cpu.items() if key not in ("p_at_1", f"mmp_at_{k}")
    }
    scored = cpu["num_queries"] - cpu["num_queries_without_positives"]
    for key in ("p_at_1", f"mmp_at_{k}"):
        assert abs(gpu[key] - cpu[key]) <= tied.sum() / scored + 1e-12, key


# ---- bad input ----------------------------------------------------------------------------------


def good_args(rng):
    return {
        "query_emb": embeddings(rng, 10),
        "query_labels": rng.integers(0, 3, 10),
        "index_emb": embeddings(rng, 20),
        "index_labels": rng.integers(0, 3, 20),
    }


def call(args):
    args = dict(args)
    positional = [args.pop(name) for name in ("query_emb", "query_labels", "index_emb", "index_labels")]
    return knn_metrics(*positional, **args)


def with_value(array, index, value):
    array = np.array(array, dtype=np.float32)
    array[index] = value
    return array


BAD_INPUTS = [
    # (name, change to the good arguments, error type, text the message must contain)
    ("nan query", lambda a: {"query_emb": with_value(a["query_emb"], (0, 0), np.nan)}, ValueError, "query_emb"),
    ("inf index", lambda a: {"index_emb": with_value(a["index_emb"], (3, 1), np.inf)}, ValueError, "index_emb"),
    (
        "overflow to inf",
        lambda a: {"index_emb": with_value(a["index_emb"], (3, 1), 1.0).astype(np.float64) * 1e300},
        ValueError,
        "index_emb",
    ),
    ("dimension mismatch", lambda a: {"index_emb": a["index_emb"][:, :4]}, ValueError, "dimension"),
    (
        "empty index",
        lambda a: {"index_emb": a["index_emb"][:0], "index_labels": a["index_labels"][:0]},
        ValueError,
        "index_emb",
    ),
    (
        "empty query",
        lambda a: {"query_emb": a["query_emb"][:0], "query_labels": a["query_labels"][:0]},
        ValueError,
        "query_emb",
    ),
    ("1-D embeddings", lambda a: {"query_emb": a["query_emb"][0]}, ValueError, "query_emb"),
    ("3-D embeddings", lambda a: {"index_emb": a["index_emb"][None]}, ValueError, "index_emb"),
    ("integer embeddings", lambda a: {"query_emb": np.ones((10, 8), np.int64)}, TypeError, "query_emb"),
    ("k > index", lambda a: {"k": 21}, ValueError, "k=21"),
    ("k = 0", lambda a: {"k": 0}, ValueError, "k"),
    ("query labels too short", lambda a: {"query_labels": a["query_labels"][:9]}, ValueError, "query_labels"),
    ("index labels too long", lambda a: {"index_labels": np.zeros(21, int)}, ValueError, "index_labels"),
    ("float labels", lambda a: {"index_labels": a["index_labels"].astype(np.float32)}, TypeError, "index_labels"),
    ("bool labels", lambda a: {"query_labels": a["query_labels"] > 0}, TypeError, "query_labels"),
    (
        "negative 1-D label",
        lambda a: {"query_labels": with_value(a["query_labels"], 2, -1).astype(int)},
        ValueError,
        "query_labels",
    ),
    (
        "all-padding row",
        lambda a: {"query_labels": np.stack([a["query_labels"], a["query_labels"]], 1) * 0 - 1},
        ValueError,
        "query_labels",
    ),
    ("3-D labels", lambda a: {"index_labels": a["index_labels"][:, None, None]}, ValueError, "index_labels"),
    ("domains one-sided", lambda a: {"query_domains": np.zeros(10, int)}, ValueError, "index_domains"),
    (
        "domains wrong length",
        lambda a: {"query_domains": np.zeros(9, int), "index_domains": np.zeros(20, int)},
        ValueError,
        "query_domains",
    ),
    (
        "float domains",
        lambda a: {"query_domains": np.zeros(10), "index_domains": np.zeros(20, int)},
        TypeError,
        "query_domains",
    ),
    ("query_is_index with different N", lambda a: {"query_is_index": True}, ValueError, "query_is_index"),
    (
        "query_is_index, k = N",
        lambda a: {"index_emb": a["query_emb"], "index_labels": a["query_labels"], "query_is_index": True, "k": 10},
        ValueError,
        "k=10",
    ),
    (
        "query_is_index, other labels",
        lambda a: {"index_emb": a["query_emb"], "index_labels": a["query_labels"] + 1, "query_is_index": True},
        ValueError,
        "labels",
    ),
    ("batch size", lambda a: {"query_batch_size": 0}, ValueError, "query_batch_size"),
    (
        "self rows and query_is_index",
        lambda a: {"query_self_rows": np.full(10, -1), "query_is_index": True},
        ValueError,
        "not both",
    ),
    ("self row out of range", lambda a: {"query_self_rows": np.r_[20, np.full(9, -1)]}, ValueError, "query_self_rows"),
    (
        "self rows shared",
        lambda a: {
            "index_emb": a["query_emb"],
            "index_labels": a["query_labels"],
            "query_self_rows": np.r_[0, 0, np.full(8, -1)],
        },
        ValueError,
        "share",
    ),
    ("self row other embedding", lambda a: {"query_self_rows": np.r_[3, np.full(9, -1)]}, ValueError, "embeddings"),
    (
        "self row other labels",
        lambda a: {
            "index_emb": a["query_emb"],
            "index_labels": a["query_labels"] + 1,
            "query_self_rows": np.arange(10),
        },
        ValueError,
        "labels",
    ),
    (
        "self row other domain",
        lambda a: {
            "index_emb": a["query_emb"],
            "index_labels": a["query_labels"],
            "query_domains": np.zeros(10, int),
            "index_domains": np.ones(10, int),
            "query_self_rows": np.arange(10),
        },
        ValueError,
        "domains",
    ),
    ("float self rows", lambda a: {"query_self_rows": np.zeros(10)}, TypeError, "query_self_rows"),
    ("unknown no_positive rule", lambda a: {"no_positive": "drop"}, ValueError, "no_positive"),
    ("no_positive not a string", lambda a: {"no_positive": None}, ValueError, "no_positive"),
]


@pytest.mark.parametrize("change, error, text", [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises(rng, change, error, text):
    args = good_args(rng)
    args.update(change(args))
    with pytest.raises(error, match=text):
        call(args)


def test_by_domain_bad_input(rng):
    args = good_args(rng)
    positional = [args[name] for name in ("query_emb", "query_labels", "index_emb", "index_labels")]
    domains = {"query_domains": np.zeros(10, int), "index_domains": np.r_[np.zeros(2, int), np.ones(18, int)]}
    with pytest.raises(ValueError, match="index must be one of"):
        knn_metrics_by_domain(*positional, index="union", **domains)
    with pytest.raises(ValueError, match="needs both"):
        knn_metrics_by_domain(*positional, query_domains=None, index_domains=None)
    with pytest.raises(ValueError, match="domain 0 has 2 index items"):
        knn_metrics_by_domain(*positional, index="separate", **domains)
    with pytest.raises(ValueError, match="no_positive must be one of"):
        knn_metrics_by_domain(*positional, no_positive="skip", **domains)
