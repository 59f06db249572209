"""Cosine kNN retrieval metrics under the UnED protocol (docs/method.md, "Evaluation").

Dataflow: embeddings -> exact inner-product search (faiss `IndexFlatIP`, a GPU index when faiss
sees a GPU, batched over queries) -> (Q, k) neighbour ids -> relevance -> P@1 and mMP@k, overall
and per domain.  No Python loop runs per query.

Definitions (Q queries, N index items, k neighbours):
- Embeddings are L2-normalised by the caller, so the inner product is the cosine similarity.
- Labels are 1-D (N,) non-negative class ids, or 2-D (N, L) padded with -1 for multi-label items
  (every row needs at least one label).  Index item j is relevant to query i iff they have the same
  domain and their label sets intersect.  Without domains, everything is one domain.
- n_q: the number of index items relevant to query q, not counting the query itself where it is
  in the index (its "self row").
- P@1 of a query: 1 if its first neighbour is relevant, else 0.
- Precision of a query: (#relevant among the first min(n_q, k)) / min(n_q, k); mMP@k is its mean.
- Queries without a positive (n_q == 0: no index item of their domain carries any of their labels;
  with a self row, also the only item of their class) can never retrieve a relevant item, and
  their precision is 0 / 0.  `no_positive` says what they count for:
  - "miss" (the default; what the official UnED evaluation computes): P@1 = 0 and precision 0,
    and they stay in every mean: both means are over all queries.
  - "exclude": they are left out of both means (the means are over the queries with n_q > 0),
    which measures the embedding only where a right answer exists; a mean over no such query is NaN.
  Either way they are counted in "num_queries_without_positives".  With the same neighbours,
  miss-mean = exclude-mean * (queries with a positive) / (all queries), per domain.
- Self rows: `query_is_index` (the query set is the index set: query i is index row i), or
  `query_self_rows` (query i is index row r_i, or -1 for none; e.g. a merged index where some
  domains' queries are their own index and others have a separate index split).  When any query
  has one, k + 1 neighbours are searched; each query drops its self row, or, where it has none or
  exact ties pushed it out of the k + 1, its last neighbour.
- Ties and duplicates (duplicated embeddings are ordinary ties): the returned neighbours are put
  in order of decreasing score, equal scores by increasing index id (faiss's CPU index returns
  them by decreasing id).  Which of the items tied at the k-th place are returned is faiss's
  choice; its CPU index keeps the lowest ids, so on CPU ties resolve in index order throughout.
- "merged" evaluation (the headline): every query searches the union index and is scored in its
  own domain.  "separate": each domain's queries search only that domain's index items.
- The mean over domains is unweighted.  Under "miss" it is the plain mean over every domain (a
  domain's metrics cannot be NaN: domains are those of the queries, so each has at least one
  query).  Under "exclude" a domain whose queries all lack a positive has NaN metrics and is
  skipped; the mean is NaN if every domain is.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..checks import positive_int

DEFAULT_QUERY_BATCH_SIZE = 16384
INDEX_MODES = ("merged", "separate")
NO_POSITIVE_MODES = ("miss", "exclude")


@dataclass(frozen=True)
class _Inputs:
    """Validated inputs: float32 C-contiguous embeddings, (N, L) int64 labels padded with -1, (N,) int64 domains."""

    query_emb: np.ndarray
    query_labels: np.ndarray
    query_domains: np.ndarray
    index_emb: np.ndarray
    index_labels: np.ndarray
    index_domains: np.ndarray
    has_domains: bool
    self_rows: np.ndarray  # (Q,) int64 index row of each query itself, -1 for none

    def subset(self, query_rows: np.ndarray, index_rows: np.ndarray) -> "_Inputs":
        """The given queries against the given index rows, which must hold those queries' self rows."""
        position = np.full(len(self.index_emb) + 1, -1)  # position[-1] == -1 keeps "none"
        position[index_rows] = np.arange(len(index_rows))
        return _Inputs(
            np.ascontiguousarray(self.query_emb[query_rows]),
            self.query_labels[query_rows],
            self.query_domains[query_rows],
            np.ascontiguousarray(self.index_emb[index_rows]),
            self.index_labels[index_rows],
            self.index_domains[index_rows],
            self.has_domains,
            position[self.self_rows[query_rows]],
        )


def knn_metrics(
    query_emb: Any,
    query_labels: Any,
    index_emb: Any,
    index_labels: Any,
    *,
    query_domains: Any = None,
    index_domains: Any = None,
    k: int = 5,
    query_is_index: bool = False,
    query_self_rows: Any = None,
    query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE,
    use_gpu: bool | None = None,
    no_positive: str = "miss",
) -> dict[str, Any]:
    """P@1 and mMP@k of a cosine kNN search of `query_emb` in `index_emb` (module docstring: definitions).

    Args:
        query_emb: (Q, D) float numpy array or torch tensor (any device), L2-normalised rows.
        query_labels: (Q,) int class ids, or (Q, L) int padded with -1 for multi-label queries.
        index_emb: (N, D) float, L2-normalised rows.
        index_labels: (N,) int, or (N, M) int padded with -1.
        query_domains, index_domains: (Q,) and (N,) int domain ids; both or neither.
        k: neighbours per query; at most N (N - 1 with self rows).
        query_is_index: the query set is the index set (same embeddings, labels and domains).
        query_self_rows: (Q,) int, the index row that is query i itself, or -1; exclusive with
            `query_is_index`.  A self row must hold the query's embedding, label set and domain.
        query_batch_size: queries searched per faiss call; bounds the memory of the search.
        use_gpu: search with a faiss GPU index; None: when `faiss.get_num_gpus() > 0`.
        no_positive: "miss" (default, the official UnED rule: a query without a relevant index item
            scores 0 and stays in the means) or "exclude" (it is left out of the means).

    Returns:
        {"p_at_1": float, f"mmp_at_{k}": float, "num_queries": int (all Q queries),
         "num_queries_without_positives": int, "no_positive": the rule used}, plus, when domains
        are given, "per_domain": {domain id: the first four keys for that domain's queries}.
    """
    mode = no_positive_mode(no_positive)
    inputs = _validate(
        query_emb,
        query_labels,
        index_emb,
        index_labels,
        query_domains,
        index_domains,
        k,
        query_is_index,
        query_self_rows,
    )
    first_hit, precision, scored = _score_queries(
        inputs, k, positive_int(query_batch_size, "query_batch_size"), _resolve_gpu(use_gpu)
    )
    metrics = _summary(first_hit, precision, scored, k, mode)
    metrics["no_positive"] = mode
    if inputs.has_domains:
        metrics["per_domain"] = _per_domain(inputs.query_domains, first_hit, precision, scored, k, mode)
    return metrics


def knn_metrics_by_domain(
    query_emb: Any,
    query_labels: Any,
    index_emb: Any,
    index_labels: Any,
    *,
    query_domains: Any,
    index_domains: Any,
    index: str = "merged",
    k: int = 5,
    query_is_index: bool = False,
    query_self_rows: Any = None,
    query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE,
    use_gpu: bool | None = None,
    no_positive: str = "miss",
) -> dict[str, Any]:
    """Per-domain P@1 and mMP@k and their unweighted mean over domains (docs/method.md, "Evaluation").

    Arguments as `knn_metrics` (domains required), plus `index`: "merged" (every query searches the
    union index) or "separate" (each domain's queries search only that domain's index items, which
    must then hold at least k of them, k + 1 if any of its queries has a self row).  Domains come
    from the queries.

    Returns:
        {"index": the mode, "no_positive": the rule, "per_domain": {domain id: {"p_at_1",
         f"mmp_at_{k}", "num_queries", "num_queries_without_positives"}}, "mean": {"p_at_1",
         f"mmp_at_{k}"}}.  "miss": the mean is over every domain (none can be NaN); "exclude": it
        skips domains whose metric is NaN (no query with a positive) and is NaN if every domain's is.
    """
    mode = no_positive_mode(no_positive)
    if index not in INDEX_MODES:
        raise ValueError(f"index must be one of {INDEX_MODES}, got {index!r}")
    if query_domains is None or index_domains is None:
        raise ValueError("knn_metrics_by_domain needs both query_domains and index_domains")
    inputs = _validate(
        query_emb,
        query_labels,
        index_emb,
        index_labels,
        query_domains,
        index_domains,
        k,
        query_is_index,
        query_self_rows,
    )
    batch_size = positive_int(query_batch_size, "query_batch_size")
    gpu = _resolve_gpu(use_gpu)
    if index == "merged":
        per_domain = _per_domain(inputs.query_domains, *_score_queries(inputs, k, batch_size, gpu), k, mode)
    else:
        per_domain = {}
        for d, rows in _rows_by_domain(inputs.query_domains):
            index_rows = np.flatnonzero(inputs.index_domains == d)
            needed = k + 1 if (inputs.self_rows[rows] >= 0).any() else k
            if len(index_rows) < needed:
                raise ValueError(
                    f"index_domains: domain {int(d)} has {len(index_rows)} index items; "
                    f"separate evaluation with k={k} needs at least {needed}"
                )
            domain_inputs = inputs.subset(rows, index_rows)
            per_domain[int(d)] = _summary(*_score_queries(domain_inputs, k, batch_size, gpu), k, mode)
    return {"index": index, "no_positive": mode, "per_domain": per_domain, "mean": _domain_mean(per_domain, k, mode)}


def _domain_mean(per_domain: dict[int, dict[str, Any]], k: int, mode: str) -> dict[str, float]:
    """Unweighted mean of each metric over the domains: all of them under "miss" (every domain has
    queries, all of which are scored, so none is NaN); under "exclude" those whose metric is not NaN."""
    mean = {}
    for key in ("p_at_1", f"mmp_at_{k}"):
        values = np.array([m[key] for m in per_domain.values()])
        if mode == "exclude":
            values = values[~np.isnan(values)]
        mean[key] = float(values.mean()) if len(values) else float("nan")
    return mean


# ---- scoring -------------------------------------------------------------------------------------


def _score_queries(
    inputs: _Inputs, k: int, batch_size: int, use_gpu: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: (Q,) bool first neighbour relevant, (Q,) float64 precision in the first min(n_q, k),
    (Q,) bool scored (n_q > 0)."""
    query_keys, index_keys, num_classes = _class_keys(inputs)
    has_self = inputs.self_rows >= 0
    positives = _count_positives(query_keys, index_keys, num_classes) - has_self
    relevant = np.empty((len(query_keys), k), dtype=bool)
    searched = k + 1 if has_self.any() else k
    for start, ids in _search_batches(inputs.query_emb, inputs.index_emb, searched, batch_size, use_gpu):
        rows = np.arange(start, start + len(ids))
        if searched > k:
            ids = _drop_self(ids, inputs.self_rows[rows])
        relevant[rows] = _labels_match(query_keys[rows], index_keys[ids])
    scored = positives > 0
    cutoff = np.clip(positives, 1, k)
    hits = np.cumsum(relevant, axis=1)[np.arange(len(relevant)), cutoff - 1]
    return relevant[:, 0], hits / cutoff, scored


def _summary(first_hit: np.ndarray, precision: np.ndarray, scored: np.ndarray, k: int, mode: str) -> dict[str, Any]:
    """Means and query counts of some queries' (first_hit, precision, scored) arrays.

    "miss": means over all queries, a query without a positive counting 0 in both; "exclude": means
    over the scored queries only (NaN if there is none).
    """
    if mode == "miss":
        first_hit, precision = first_hit & scored, np.where(scored, precision, 0.0)
    else:
        first_hit, precision = first_hit[scored], precision[scored]
    nan = float("nan")
    return {
        "p_at_1": float(first_hit.mean()) if len(first_hit) else nan,
        f"mmp_at_{k}": float(precision.mean()) if len(precision) else nan,
        "num_queries": len(scored),
        "num_queries_without_positives": len(scored) - int(scored.sum()),
    }


def _per_domain(
    domains: np.ndarray, first_hit: np.ndarray, precision: np.ndarray, scored: np.ndarray, k: int, mode: str
) -> dict[int, dict[str, Any]]:
    """`_summary` of each domain's queries, keyed by domain id."""
    return {
        int(d): _summary(first_hit[rows], precision[rows], scored[rows], k, mode)
        for d, rows in _rows_by_domain(domains)
    }


def _rows_by_domain(domains: np.ndarray) -> Iterator[tuple[np.int64, np.ndarray]]:
    """(domain id, its row indices) for each distinct domain, ascending; one sort, no per-query loop."""
    order = np.argsort(domains, kind="stable")
    values, starts = np.unique(domains[order], return_index=True)
    yield from zip(values, np.split(order, starts[1:]))


def _faiss():
    """faiss, imported on first search, so that `import udon_fast` works where faiss is not installed."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "udon_fast.retrieval.knn needs faiss, which `pip install udon_fast` installs (faiss-cpu); "
            "for GPU indexes, faiss-gpu-cu12 in its place"
        ) from exc
    return faiss


def _search_batches(
    query: np.ndarray, index_emb: np.ndarray, k: int, batch_size: int, use_gpu: bool
) -> Iterator[tuple[int, np.ndarray]]:
    """Exact inner-product search: (first query row, (B, k) int64 neighbour ids by decreasing score,
    equal scores by increasing id)."""
    dim = index_emb.shape[1]
    faiss = _faiss()
    if use_gpu:
        resources = faiss.StandardGpuResources()  # lives as long as the generator
        index = faiss.GpuIndexFlatIP(resources, dim)
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(index_emb)
    for start in range(0, len(query), batch_size):
        scores, ids = index.search(query[start : start + batch_size], k)
        order = np.lexsort((ids, -scores), axis=-1)
        yield start, np.take_along_axis(ids, order, axis=-1)


def _drop_self(ids: np.ndarray, self_rows: np.ndarray) -> np.ndarray:
    """(B, k + 1) ids, (B,) self rows (-1: none) -> (B, k): drop the self row, or the last neighbour
    where it is absent."""
    is_self = ids == self_rows[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return ids[~is_self].reshape(len(ids), -1)


def _labels_match(query_keys: np.ndarray, neighbour_keys: np.ndarray) -> np.ndarray:
    """(B, L) and (B, k, M) class ids (-1 padding) -> (B, k) bool: the class sets intersect."""
    equal = query_keys[:, None, :, None] == neighbour_keys[:, :, None, :]
    return (equal & (query_keys >= 0)[:, None, :, None]).any(axis=(2, 3))


def _class_keys(inputs: _Inputs) -> tuple[np.ndarray, np.ndarray, int]:
    """Number every (domain, label) pair: (Q, L) and (N, M) int64 class ids in [0, C), -1 padding,
    duplicates within a row replaced by -1; and C.  A class id match is a domain and label match."""
    q_valid, x_valid = inputs.query_labels >= 0, inputs.index_labels >= 0
    _, domain_code = np.unique(np.concatenate([inputs.query_domains, inputs.index_domains]), return_inverse=True)
    q_domain, x_domain = np.split(domain_code.reshape(-1), [len(inputs.query_domains)])
    labels = np.concatenate([inputs.query_labels[q_valid], inputs.index_labels[x_valid]])
    label_values, label_code = np.unique(labels, return_inverse=True)
    domains = np.concatenate(
        [
            np.broadcast_to(q_domain[:, None], q_valid.shape)[q_valid],
            np.broadcast_to(x_domain[:, None], x_valid.shape)[x_valid],
        ]
    )
    classes, class_code = np.unique(domains * len(label_values) + label_code.reshape(-1), return_inverse=True)
    q_code, x_code = np.split(class_code.reshape(-1), [int(q_valid.sum())])
    query_keys = np.full(q_valid.shape, -1, dtype=np.int64)
    index_keys = np.full(x_valid.shape, -1, dtype=np.int64)
    query_keys[q_valid], index_keys[x_valid] = q_code, x_code
    return _dedupe_rows(query_keys), _dedupe_rows(index_keys), len(classes)


def _dedupe_rows(keys: np.ndarray) -> np.ndarray:
    """(N, L) int64 -> each row sorted, repeated ids replaced by -1."""
    keys = np.sort(keys, axis=1)
    keys[:, 1:][keys[:, 1:] == keys[:, :-1]] = -1
    return keys


def _count_positives(query_keys: np.ndarray, index_keys: np.ndarray, num_classes: int) -> np.ndarray:
    """(Q,) int64: index items sharing at least one class id with each query (rows deduplicated).

    Index items with one class each: a sum of per-class counts.  Multi-label index items: the size of
    the union, computed once per distinct query class set by gathering each class's item list
    (CSR by class) and counting distinct (set, item) pairs; memory grows with the summed class sizes
    of the distinct query sets.
    """
    index_valid = index_keys >= 0
    per_class = np.bincount(index_keys[index_valid], minlength=num_classes)
    if index_valid.sum(axis=1).max() <= 1:
        return np.where(query_keys >= 0, per_class[query_keys.clip(min=0)], 0).sum(axis=1)
    class_sets, set_of_query = np.unique(query_keys, axis=0, return_inverse=True)
    item_rows = np.nonzero(index_valid)[0]
    items_by_class = item_rows[np.argsort(index_keys[index_valid], kind="stable")]
    class_start = np.concatenate([[0], np.cumsum(per_class)])
    set_ids, cols = np.nonzero(class_sets >= 0)
    set_classes = class_sets[set_ids, cols]
    lengths = per_class[set_classes]
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    members = items_by_class[np.repeat(class_start[set_classes], lengths) + offsets]
    pairs = np.unique(np.repeat(set_ids, lengths) * len(index_keys) + members)
    per_set = np.bincount(pairs // len(index_keys), minlength=len(class_sets))
    return per_set[set_of_query.reshape(-1)]


# ---- input validation ----------------------------------------------------------------------------


def _validate(
    query_emb: Any,
    query_labels: Any,
    index_emb: Any,
    index_labels: Any,
    query_domains: Any,
    index_domains: Any,
    k: int,
    query_is_index: bool,
    query_self_rows: Any,
) -> _Inputs:
    query = _embeddings(query_emb, "query_emb")
    index = _embeddings(index_emb, "index_emb")
    if query.shape[1] != index.shape[1]:
        raise ValueError(f"query_emb has dimension {query.shape[1]} but index_emb has {index.shape[1]}")
    if (query_domains is None) != (index_domains is None):
        raise ValueError("pass both query_domains and index_domains, or neither")
    q_labels, x_labels = (
        _labels(query_labels, "query_labels", len(query)),
        _labels(index_labels, "index_labels", len(index)),
    )
    q_domains = _domains(query_domains, "query_domains", len(query))
    x_domains = _domains(index_domains, "index_domains", len(index))
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not isinstance(query_is_index, bool):
        raise TypeError(f"query_is_index must be a bool, got {query_is_index!r}")
    if query_is_index and query_self_rows is not None:
        raise ValueError("pass query_is_index or query_self_rows, not both")
    if query_is_index:
        if len(query) != len(index):
            raise ValueError(
                f"query_is_index needs the same set: query_emb has {len(query)} rows, index_emb {len(index)}"
            )
        self_rows, name = np.arange(len(query)), "query_is_index"
    elif query_self_rows is not None:
        self_rows, name = _integers(query_self_rows, "query_self_rows", len(query), (1,)), "query_self_rows"
    else:
        self_rows, name = np.full(len(query), -1), None
    inputs = _Inputs(query, q_labels, q_domains, index, x_labels, x_domains, query_domains is not None, self_rows)
    if name is None:
        if k > len(index):
            raise ValueError(f"k={k} exceeds the index size ({len(index)})")
        return inputs
    _check_self_rows(inputs, name)
    if k > len(index) - 1:
        raise ValueError(f"k={k} exceeds the index size minus the query itself ({len(index) - 1})")
    return inputs


def _check_self_rows(inputs: _Inputs, name: str) -> None:
    """Self rows lie in [-1, N), are distinct, and hold their query's embedding, label set and domain."""
    rows = inputs.self_rows
    if ((rows < -1) | (rows >= len(inputs.index_emb))).any():
        raise ValueError(f"{name}: self rows must be -1 or index rows in [0, {len(inputs.index_emb)})")
    queries = np.flatnonzero(rows >= 0)
    rows = rows[queries]
    if len(np.unique(rows)) != len(rows):
        raise ValueError(f"{name}: two queries share a self row")
    width = max(inputs.query_labels.shape[1], inputs.index_labels.shape[1])
    q_sets = _label_sets(inputs.query_labels[queries], width)
    x_sets = _label_sets(inputs.index_labels[rows], width)
    for what, equal in (
        ("embeddings", np.array_equal(inputs.query_emb[queries], inputs.index_emb[rows])),
        ("labels", np.array_equal(q_sets, x_sets)),
        ("domains", np.array_equal(inputs.query_domains[queries], inputs.index_domains[rows])),
    ):
        if not equal:
            raise ValueError(f"{name}: queries and their self rows in the index differ in {what}")


def _label_sets(labels: np.ndarray, width: int) -> np.ndarray:
    """(N, L) int64 padded with -1 -> (N, width >= L): each row's distinct labels sorted after -1 padding."""
    sets = np.sort(_dedupe_rows(labels), axis=1)
    return np.pad(sets, ((0, 0), (width - sets.shape[1], 0)), constant_values=-1)


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.is_floating_point():
            value = value.to(torch.float32)
        return value.cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}") from error


def _embeddings(value: Any, name: str) -> np.ndarray:
    """(N, D) float -> float32 C-contiguous, checked non-empty and finite."""
    array = _to_numpy(value, name)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must be floating point, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    with np.errstate(over="ignore"):  # float64 beyond the float32 range becomes inf, reported below
        array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf (after conversion to float32)")
    return array


def _integers(value: Any, name: str, length: int, ndims: tuple[int, ...]) -> np.ndarray:
    array = _to_numpy(value, name)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.ndim not in ndims:
        raise ValueError(f"{name} must be {' or '.join(f'{n}-D' for n in ndims)}, got shape {array.shape}")
    if len(array) != length:
        raise ValueError(f"{name} has {len(array)} rows but its embeddings have {length}")
    return array.astype(np.int64)


def _labels(value: Any, name: str, length: int) -> np.ndarray:
    """(N,) or (N, L) int -> (N, L) int64; 1-D ids non-negative, 2-D rows padded with -1 and non-empty."""
    labels = _integers(value, name, length, (1, 2))
    if labels.ndim == 1:
        if (labels < 0).any():
            raise ValueError(f"{name} must be non-negative class ids (-1 padding only in 2-D labels)")
        return labels[:, None]
    if (labels < -1).any():
        raise ValueError(f"{name} must be class ids >= 0 padded with -1")
    if not (labels >= 0).any(axis=1).all():
        raise ValueError(f"{name}: every row needs at least one label (a row is all -1 padding)")
    return labels


def _domains(value: Any, name: str, length: int) -> np.ndarray:
    """(N,) int -> (N,) int64; None -> all zeros (one domain)."""
    if value is None:
        return np.zeros(length, dtype=np.int64)
    return _integers(value, name, length, (1,))


def no_positive_mode(value: Any) -> str:
    """`value` when it is one of NO_POSITIVE_MODES, else ValueError naming the argument `no_positive`."""
    if not isinstance(value, str) or value not in NO_POSITIVE_MODES:
        raise ValueError(f"no_positive must be one of {NO_POSITIVE_MODES}, got {value!r}")
    return value


def _resolve_gpu(use_gpu: bool | None) -> bool:
    available = _faiss().get_num_gpus() > 0
    if use_gpu is None:
        return available
    if use_gpu and not available:
        raise ValueError("use_gpu=True but faiss sees no GPU")
    return bool(use_gpu)
