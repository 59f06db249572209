"""What a gallery page shows: every query's top-k in the merged index, marked correct or wrong.

The merged index is the one of the headline metric (`evaluation`, "merged"): every query searches
the union of all domains' index sets, skipping its own image when the query set is the index.  A
neighbour is correct when it is from the query's domain and shares one of its classes (the `knn`
rule).  Pages show a seeded sample of the queries (`sample_rows`); `compare` finds the queries one
model gets right at rank 1 and another gets wrong.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..data import Domain, Split, knn_pairs
from ..data.image_bytes import read_encoded
from ..evaluation.protocol import Embedded, K, _pad_labels
from ..retrieval.knn import _drop_self, _labels_match, _search_batches

SEARCH_BATCH = 4096


@dataclass
class Hit:
    """One neighbour (or search hit): image path, domain and class name(s) ("" when unknown), cosine
    score, and whether it is relevant to the query (None when unknown, as for `search --html`)."""

    path: str
    domain: str
    label: str
    score: float
    correct: bool | None = None


@dataclass
class QueryResult:
    """A query image with its hits in rank order."""

    path: str
    domain: str
    label: str
    hits: list[Hit]


@dataclass
class MergedSearch:
    """The top-k of every query of every domain in the merged index.

    names: domain names; query_paths / query_labels (class names) / query_domain ((Q,) int64 index
    into names); index_paths / index_labels / index_domain ((N,) int64) likewise for the index rows;
    ids (Q, k) int64 index rows by decreasing score; scores (Q, k) float32; correct (Q, k) bool;
    members: {name: (split, i)} of the images that are tar shard members, not files (`read`).
    """

    names: list[str]
    query_paths: list[str]
    query_labels: list[str]
    query_domain: np.ndarray
    index_paths: list[str]
    index_labels: list[str]
    index_domain: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    correct: np.ndarray
    members: dict[str, tuple[Split, int]] = field(default_factory=dict)

    def read(self, path: str) -> np.ndarray:
        """The encoded bytes (uint8 (n,)) of the query or index image named `path`: a file, or a tar
        shard member (`<tar>:<member>`, read from its shard)."""
        member = self.members.get(path)
        return read_encoded(path) if member is None else member[0].read(member[1])

    def rows_of(self, domain: str) -> np.ndarray:
        """(n,) int64 query rows of `domain`, ascending."""
        return np.flatnonzero(self.query_domain == self.names.index(domain))

    def result(self, row: int) -> QueryResult:
        """Query `row` with its hits."""
        hits = [
            Hit(self.index_paths[i], self.names[self.index_domain[i]], self.index_labels[i], float(s), bool(c))
            for i, s, c in zip(self.ids[row], self.scores[row], self.correct[row])
        ]
        return QueryResult(self.query_paths[row], self.names[self.query_domain[row]], self.query_labels[row], hits)


def _class_names(domain: Domain, labels: np.ndarray) -> list[str]:
    """Original class ids of (N,) or (N, L) contiguous labels (-1 padding), as text ("a+b" if several)."""
    original = {new: str(old) for old, new in domain.class_map.items()}
    rows = labels.reshape(len(labels), -1)
    return ["+".join(original.get(int(c), str(int(c))) for c in row if c >= 0) for row in rows]


def merged_search(
    domains: Mapping[str, Domain], split: str, sets: Mapping[str, tuple[Embedded, Embedded | None]], k: int = K
) -> MergedSearch:
    """Search every query of `split` in the merged index of student embeddings `sets` (as
    `evaluation.protocol.evaluate_model(..., embeddings=sets)` fills them, in the order of `domains`)."""
    names = list(domains)
    q_emb, q_lab, q_dom, q_paths, q_names = [], [], [], [], []
    x_emb, x_lab, x_dom, x_paths, x_names, self_rows = [], [], [], [], [], []
    members: dict[str, tuple[Split, int]] = {}
    offset = 0
    for d, name in enumerate(names):
        query, index = knn_pairs(domains[name], split)
        own = query if index is None else index
        for part in {id(query): query, id(own): own}.values():
            if part.members is not None:
                members.update((path, (part, i)) for i, path in enumerate(part.paths))
        query_emb, index_emb = sets[name]
        own_emb = query_emb if index_emb is None else index_emb
        q_emb.append(query_emb.student)
        q_lab.append(query.labels)
        q_dom.append(np.full(len(query), d))
        q_paths += query.paths
        q_names += _class_names(domains[name], query.labels)
        x_emb.append(own_emb.student)
        x_lab.append(own.labels)
        x_dom.append(np.full(len(own), d))
        x_paths += own.paths
        x_names += _class_names(domains[name], own.labels)
        self_rows.append(np.arange(offset, offset + len(own)) if index is None else np.full(len(query), -1))
        offset += len(own)
    queries = np.ascontiguousarray(np.concatenate(q_emb), dtype=np.float32)
    index_emb = np.ascontiguousarray(np.concatenate(x_emb), dtype=np.float32)
    query_labels, index_labels = _pad_labels(q_lab), _pad_labels(x_lab)
    query_labels = query_labels.reshape(len(query_labels), -1)
    index_labels = index_labels.reshape(len(index_labels), -1)
    query_domain, index_domain, self_rows = np.concatenate(q_dom), np.concatenate(x_dom), np.concatenate(self_rows)
    k = min(k, len(index_emb) - 1)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start, batch in _search_batches(queries, index_emb, k + 1, SEARCH_BATCH, use_gpu=False):
        ids[start : start + len(batch)] = _drop_self(batch, self_rows[start : start + len(batch)])
    scores = np.einsum("qd,qkd->qk", queries, index_emb[ids]).astype(np.float32)
    same_domain = index_domain[ids] == query_domain[:, None]
    correct = same_domain & _labels_match(query_labels, index_labels[ids])
    return MergedSearch(
        names, q_paths, q_names, query_domain, x_paths, x_names, index_domain, ids, scores, correct, members
    )


def sample_rows(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A seeded sample of at most `count` of `rows`, in ascending order (all of them when fewer)."""
    if len(rows) <= count:
        return np.sort(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, size=count, replace=False))


def compare(trained: MergedSearch, baseline: MergedSearch, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows `trained` gets right at rank 1 and `baseline` wrong, rows the other way round) of
    `domain`'s queries; both searches must hold the same queries."""
    if trained.query_paths != baseline.query_paths:
        raise ValueError("the two searches hold different queries; compare needs the same split and domains")
    rows = trained.rows_of(domain)
    mine, theirs = trained.correct[rows, 0], baseline.correct[rows, 0]
    return rows[mine & ~theirs], rows[~mine & theirs]
