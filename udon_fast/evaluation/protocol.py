"""The UnED evaluation protocol for a model: embed every kNN set, search, score per domain.

images -> `data.EvalLoader` (DALI or torchvision decoder) -> `UDONModel` embeddings -> `knn` (faiss) ->
{"student": {"merged": ..., "separate": ...}, "teacher": {"separate": ...}} where each leaf is
{domain: {"p_at_1", "mmp_at_5", "num_queries", "num_queries_without_positives"},
 "mean": {"p_at_1", "mmp_at_5", "num_queries", "num_queries_without_positives", "no_positive"}};
the mean's counts are sums over the domains and "no_positive" names the rule the metrics follow.

"separate": each domain's queries search that domain's index (its index split, else the query set
itself, leave-one-out).  "merged" (the headline): every query searches the union of all domains'
index sets; a query whose own image is in that union (query set == index set) skips itself.
Teacher embeddings are evaluated per domain only (own-domain oracle).  Queries without a relevant
index item count as misses by default (`no_positive="miss"`, the official UnED metric); see
`knn` and docs/method.md, "Evaluation".

`distributed=True` (every rank of a torch.distributed job calls): each rank embeds a share of whole
batches of every set, rank 0 gathers them, searches and scores, and every rank returns its results;
identical to single-rank evaluation (`evaluation.distributed`).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..extras import needs_extra

with needs_extra("train"):
    from tqdm import tqdm

from ..data import DatasetError, Domain, EvalLoader, Split, knn_pairs
from ..data.domain import INDEX_SPLIT_FOR, split_source
from ..data.verify import check_decodable
from ..errors import InputError
from ..kill_points import kill_point
from ..model import Embedder, UDONModel
from ..retrieval.knn import knn_metrics_by_domain, no_positive_mode
from . import distributed as distributed_eval

INDEX_MODES = ("merged", "separate", "both")
EMBEDDINGS = ("student", "teacher", "both")
K = 5


@dataclass
class Embedded:
    """Embeddings of one split: student (N, 64) float32, teacher (N, 256) float32 or None, labels."""

    student: np.ndarray
    teacher: np.ndarray | None
    labels: np.ndarray


@torch.inference_mode()
def embed_split(
    model: UDONModel | Embedder,
    split: Split,
    domain: str | None,
    *,
    batch_size: int,
    device: torch.device,
    teacher: bool,
    num_threads: int = 2,
    decoder: str = "dali",
    progress: bool = True,
) -> Embedded:
    """Student (and, with `teacher`, the domain's teacher) embeddings of every image of `split`, in order;
    `decoder`: "dali" or "torchvision" (see `data.TrainLoader`).

    `model` may be an `Embedder` (a deployable student, or the off-the-shelf backbone): student only."""
    loader = EvalLoader(
        split,
        batch_size=batch_size,
        image_size=model.config["image_size"],
        mean=model.mean,
        std=model.std,
        num_threads=num_threads,
        decoder=decoder,
    )
    students, teachers = [], []
    for images, _ in tqdm(loader, desc=f"embed {domain or ''} {split.name}".strip(), disable=not progress, leave=False):
        features = model.features(images.to(device, non_blocking=True))
        students.append(model.student_embedding(features).cpu())
        if teacher:
            teachers.append(model.teacher_embedding(features, domain).cpu())
    return Embedded(torch.cat(students).numpy(), torch.cat(teachers).numpy() if teacher else None, split.labels)


def _embed_share(
    model: UDONModel | Embedder,
    split: Split,
    domain: str,
    *,
    batch_size: int,
    device: torch.device,
    teacher: bool,
    num_threads: int,
    progress: bool,
    decoder: str = "dali",
) -> Embedded | None:
    """`embed_split` of this rank's share of `split`, gathered on rank 0 (None on the other ranks)."""
    lo, hi = distributed_eval.rank_share(len(split), batch_size, dist.get_rank(), dist.get_world_size())
    part = split.part(lo, hi)
    if hi > lo:
        mine = embed_split(
            model,
            part,
            domain,
            batch_size=batch_size,
            device=device,
            teacher=teacher,
            num_threads=num_threads,
            decoder=decoder,
            progress=progress,
        )
    else:
        student_dim = model.dim if isinstance(model, Embedder) else model.student_dim_out
        mine = Embedded(
            np.zeros((0, student_dim), np.float32),
            np.zeros((0, model.teacher_dim_out), np.float32) if teacher else None,
            part.labels,
        )
    student = distributed_eval.gather_to_main(mine.student, device)
    teachers = distributed_eval.gather_to_main(mine.teacher, device) if teacher else None
    return None if student is None else Embedded(student, teachers, split.labels)


def _pad_labels(labels: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate (N_i,) / (N_i, L_i) int64 label arrays into (sum N_i, max L) padded with -1."""
    width = max(1 if a.ndim == 1 else a.shape[1] for a in labels)
    if width == 1 and all(a.ndim == 1 for a in labels):
        return np.concatenate(labels)
    out = [
        np.pad(a.reshape(len(a), -1), ((0, 0), (0, width - (1 if a.ndim == 1 else a.shape[1]))), constant_values=-1)
        for a in labels
    ]
    return np.concatenate(out)


METRICS = ("p_at_1", f"mmp_at_{K}")
COUNTS = ("num_queries", "num_queries_without_positives")


def _leaf(result: Mapping, names: Sequence[str]) -> dict:
    """A results leaf (module docstring) from `knn_metrics_by_domain`'s output keyed by domain ids."""
    leaf = {
        names[d]: {**{k: float(m[k]) for k in METRICS}, **{k: int(m[k]) for k in COUNTS}}
        for d, m in result["per_domain"].items()
    }
    leaf["mean"] = {
        **{k: float(result["mean"][k]) for k in METRICS},
        **{k: sum(m[k] for m in result["per_domain"].values()) for k in COUNTS},
        "no_positive": result["no_positive"],
    }
    return leaf


def _search(sets: Mapping[str, tuple[Embedded, Embedded | None]], kind: str, mode: str, no_positive: str) -> dict:
    """Score `kind` ("student"/"teacher") embeddings of every domain in `mode` ("merged"/"separate")."""
    names = list(sets)
    q_emb, q_lab, q_dom, i_emb, i_lab, i_dom, self_rows = [], [], [], [], [], [], []
    offset = 0
    for d, (query, index) in enumerate(sets.values()):
        own = query if index is None else index
        q_emb.append(getattr(query, kind))
        q_lab.append(query.labels)
        q_dom.append(np.full(len(query.labels), d))
        i_emb.append(getattr(own, kind))
        i_lab.append(own.labels)
        i_dom.append(np.full(len(own.labels), d))
        rows = np.arange(offset, offset + len(own.labels)) if index is None else np.full(len(query.labels), -1)
        self_rows.append(rows)
        offset += len(own.labels)
    if kind == "teacher":
        width = max(e.shape[1] for e in q_emb)
        if any(e.shape[1] != width for e in q_emb):
            raise InputError("teacher embeddings of different widths cannot share one search")
    result = knn_metrics_by_domain(
        np.concatenate(q_emb),
        _pad_labels(q_lab),
        np.concatenate(i_emb),
        _pad_labels(i_lab),
        query_domains=np.concatenate(q_dom),
        index_domains=np.concatenate(i_dom),
        index=mode,
        k=K,
        query_self_rows=np.concatenate(self_rows),
        no_positive=no_positive,
    )
    return _leaf(result, names)


def check_evaluable(domains: Mapping[str, Domain], split: str, separate: bool = True) -> None:
    """Raise `DatasetError` naming the info file when `split` of some domain cannot be evaluated.

    Every domain needs the split, and the merged index at least K + 1 images in all; with `separate`
    (per-domain indexes: `index` "separate" or "both", or teacher embeddings) each domain's index
    needs at least K images (K + 1 when the query set is its own index, leave-one-out).  No split may
    be empty.  Cheap: sizes only.
    """
    problems, total = [], 0
    for name, domain in domains.items():
        if split not in domain.splits:
            problems.append(f"domain {name!r} has no {split} split ({split_source(domain, split) or 'no such file'})")
            continue
        query, index_split = knn_pairs(domain, split)
        own = query if index_split is None else index_split
        total += len(own)
        needed = K if index_split is not None else K + 1
        where = split_source(domain, split if index_split is None else INDEX_SPLIT_FOR[split])
        if not len(query) or not len(own):
            problems.append(f"{split_source(domain, split) if not len(query) else where}: the split is empty")
        elif separate and len(own) < needed:
            own_index = " (the split is its own index, leave-one-out)" if index_split is None else ""
            problems.append(
                f"{where}: {len(own)} image(s); a per-domain kNN index with k = {K} needs at least {needed}{own_index}"
            )
    if not problems and total < K + 1:
        problems.append(
            f"the {split} splits hold {total} index image(s) in all; kNN with k = {K} needs at least {K + 1}"
        )
    if problems:
        raise DatasetError(f"cannot evaluate the {split} split: " + "; ".join(problems))


def check_eval_images(
    domains: Mapping[str, Domain], splits: Sequence[str], *, workers: int | None = None, progress: bool = False
) -> None:
    """Decode every query and index image that evaluating `splits` of `domains` uses (domains without a
    split are skipped), before any reaches DALI; raise `CorruptImagesError` naming all that fail
    (verdicts are cached: checking again is cheap)."""
    parts = []
    for domain in domains.values():
        for split in splits:
            if split in domain.splits:
                parts += [part for part in knn_pairs(domain, split) if part is not None]
    check_decodable(parts, f"in the {'/'.join(splits)} splits", workers=workers, progress=progress)


def evaluate_model(
    model: UDONModel | Embedder,
    domains: Mapping[str, Domain],
    split: str,
    *,
    index: str = "both",
    embedding: str = "both",
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    num_threads: int = 2,
    decoder: str = "dali",
    progress: bool = True,
    no_positive: str = "miss",
    distributed: bool = False,
    embeddings: dict[str, tuple[Embedded, Embedded | None]] | None = None,
) -> dict:
    """UnED kNN metrics of `model` on `split` ("val" or "test") of every domain.

    no_positive: "miss" (default, the official metric: a query without a relevant index item scores 0
    and stays in the means) or "exclude" (left out of the means); counted either way.
    Returns {"student": {"merged"?: leaf, "separate"?: leaf}, "teacher"?: {"separate": leaf}}.
    Raises `DatasetError` before embedding anything when a split cannot be evaluated
    (`check_evaluable`) and `CorruptImagesError` naming every image that does not decode.
    distributed: every rank of the initialised default process group calls; each embeds its share,
    rank 0 searches; all return rank 0's results.
    embeddings: a dict to receive {domain: (query set's Embedded, index set's or None)} (on rank 0;
    `gallery.merged_search` reads it).
    """
    no_positive_mode(no_positive)
    if index not in INDEX_MODES:
        raise InputError(f"index must be one of {INDEX_MODES}, got {index!r}")
    if embedding not in EMBEDDINGS:
        raise InputError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
    check_evaluable(domains, split, separate=index != "merged" or embedding != "student")
    check_eval_images(domains, [split], workers=num_threads, progress=progress)
    device = torch.device(device)
    want_teacher = embedding in ("teacher", "both")
    was_training = model.training
    model.eval()
    embed = _embed_share if distributed else embed_split
    sets = {}
    for name, domain in domains.items():
        query, index_split = knn_pairs(domain, split)
        options = dict(
            batch_size=batch_size,
            device=device,
            teacher=want_teacher,
            num_threads=num_threads,
            decoder=decoder,
            progress=progress,
        )
        sets[name] = (
            embed(model, query, name, **options),
            None if index_split is None else embed(model, index_split, name, **options),
        )
    model.train(was_training)
    if embeddings is not None:
        embeddings.update(sets)
    kill_point("evaluation")
    results = None
    if not distributed or dist.get_rank() == 0:
        modes = ["merged", "separate"] if index == "both" else [index]
        results = {}
        if embedding in ("student", "both"):
            results["student"] = {mode: _search(sets, "student", mode, no_positive) for mode in modes}
        if want_teacher:
            results["teacher"] = {"separate": _search(sets, "teacher", "separate", no_positive)}
    return distributed_eval.broadcast_from_main(results) if distributed else results
