"""Partial FC with more than one process (`losses/partial_fc_distributed.py`) on gloo ranks.

Class parallel (3 ranks, uneven slices and an empty one, B_r = 1 included, odd D, every margin): `CosineClassifier(sample_rate<1,
class_shard=...)` gives the loss, the embedding gradients and the sampled rows' gradients of the single-process
reference on the union of the ranks' samples (the virtual class space), with ignore_index and class_weight;
its AdamW step moves the sampled rows as torch.optim.AdamW moves the reference rows and leaves the other rows
and their state untouched.  `udon_loss` (both heads) on the virtual space likewise.
Data parallel (2 ranks): the same sample on every rank whatever their RNG, holding the global batch's
classes, and the averaged row gradients of the global batch.
Trainer: short 2-rank runs with --sample-rate 0.5, class-parallel and data-parallel, whose replicated
weights stay identical on both ranks after every step.
"""

import json

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from distributed_helpers import free_port, run_ranks, use_port
from loss_cases import MARGINS

import udon_fast
import udon_fast.commands.train
from udon_fast.losses import ClassShard, backends, normalized_softmax_ce, udon_loss
from udon_fast.losses.partial_fc import sample_size
from udon_fast.losses.partial_fc_distributed import average_row_gradients, sample_class_parallel, sample_replicated
from udon_fast.model.sharded_classifier import class_slice, slice_sizes

NATIVE = "native" if backends.status()["native"][0] else "chunked"
D = 7
TOL = dict(rtol=1e-5, atol=1e-5)
# name, C, B_r, sample_rate, margin_type, options
CLASS_PARALLEL = [(f"13-{m}", 13, 1, 0.3, m, {}) for m, _ in MARGINS] + [
    ("40-options", 40, 2, 0.25, "arcface", dict(ignore_index=-100, class_weight=True, label_smoothing=0.1)),
    ("4-empty-slice", 4, 1, 0.5, "cosface", {}),
]  # slices 2, 2, 0


def _class_parallel(rank, world):
    results = {}
    for name, classes, rows, rate, margin_type, extra in CLASS_PARALLEL:
        gen = torch.Generator().manual_seed(classes)
        emb = torch.randn(rows * world, D, generator=gen)
        labels = torch.randint(0, classes, (rows * world,), generator=gen)
        options = dict(extra)
        if options.pop("class_weight", False):
            options["class_weight"] = torch.rand(classes, generator=gen) + 0.5
        if "ignore_index" in options:
            labels[-1] = options["ignore_index"]
        head_options = dict(margin_type=margin_type, **dict(MARGINS)[margin_type], scale=12.0)
        torch.manual_seed(0)
        full = udon_fast.CosineClassifier(classes, D, **head_options).weight.detach()
        torch.manual_seed(0)
        start = class_slice(classes, rank, world)[0]
        head = udon_fast.CosineClassifier(
            classes, D, **head_options, sample_rate=rate, class_shard=ClassShard(start, classes)
        )
        torch.manual_seed(100 + rank)  # every rank draws its own sample
        mine = emb[rank * rows : (rank + 1) * rows].clone().requires_grad_()
        loss = head(mine, labels[rank * rows : (rank + 1) * rows], backend=NATIVE, **options)
        loss.backward()
        sampled = [None] * world
        dist.all_gather_object(sampled, (head.sampled.index + start).tolist())
        union = torch.tensor([c for part in sampled for c in part])
        virtual = sum(len(part) for part in sampled[:rank])

        reference_emb = emb.clone().requires_grad_()
        reference_rows = full[union].clone().requires_grad_()
        reference_options = dict(options)
        if "class_weight" in options:
            reference_options["class_weight"] = options["class_weight"][union]
        in_range = (labels >= 0) & (labels < classes)
        renumbered = torch.where(in_range, torch.searchsorted(union, labels.clamp(0, classes - 1)), labels)
        reference = normalized_softmax_ce(
            F.normalize(reference_emb, dim=-1),
            reference_rows,
            renumbered,
            **head_options,
            backend="reference",
            **reference_options,
        )
        reference.backward()
        row_grad = head.sampled.rows.grad.clone()
        own = slice(virtual, virtual + len(sampled[rank]))

        before = head.weight.detach().clone()
        optimizer = torch.optim.AdamW(head.parameters(), lr=0.1, weight_decay=0.05)
        optimizer.step()
        index = head.sampled.index
        head.step_sampled(optimizer)
        reference_param = torch.nn.Parameter(full[union].clone())
        reference_param.grad = reference_rows.grad
        torch.optim.AdamW([reference_param], lr=0.1, weight_decay=0.05).step()
        outside = torch.ones(head.weight.shape[0], dtype=torch.bool)
        outside[index] = False
        state = optimizer.state[head.weight]
        results[name] = dict(
            slice_ok=torch.equal(full[start : start + head.weight.shape[0]], before),
            sizes=[len(part) for part in sampled],
            union=union,
            labels=labels,
            loss=(loss.detach(), reference.detach()),
            emb_grad=(mine.grad, reference_emb.grad[rank * rows : (rank + 1) * rows]),
            row_grad=(row_grad, reference_rows.grad[own]),
            stepped=(head.weight.detach()[index], reference_param.detach()[own]),
            untouched=(
                torch.equal(head.weight.detach()[outside], before[outside])
                and not state["exp_avg"][outside].any()
                and not state["exp_avg_sq"][outside].any()
                and torch.equal(state["step"], (~outside).float())
            ),
        )
    # udon_loss, both heads, on the virtual class space of sample_class_parallel
    gen = torch.Generator().manual_seed(3)
    classes, rows = 13, 2
    e_s, e_t = (F.normalize(torch.randn(rows * world, d, generator=gen), dim=1) for d in (5, 9))
    w_s, w_t = torch.randn(classes, 5, generator=gen), torch.randn(classes, 9, generator=gen)
    labels = torch.randint(0, classes, (rows * world,), generator=gen)
    start = class_slice(classes, rank, world)[0]
    counts = slice_sizes(classes, world)
    torch.manual_seed(200 + rank)
    mine = slice(rank * rows, (rank + 1) * rows)
    index, virtual_labels, shard = sample_class_parallel(labels[mine], classes, counts, 0.3)
    parts = [
        e_s[mine].clone().requires_grad_(),
        e_t[mine].clone().requires_grad_(),
        w_s[start + index].clone().requires_grad_(),
        w_t[start + index].clone().requires_grad_(),
    ]
    out = udon_loss(
        *parts,
        virtual_labels,
        margin_type="arcface",
        margin=0.4,
        backend=NATIVE,
        class_shard=shard,
        similarity_weight=0.0,
    )  # SIM is per rank under class parallelism
    out.total.backward()
    sampled = [None] * world
    dist.all_gather_object(sampled, (index + start).tolist())
    results["udon_loss"] = dict(
        shard=(shard.start, shard.num_classes),
        virtual_labels=virtual_labels,
        union=torch.tensor([c for part in sampled for c in part]),
        terms=torch.stack(list(out)).detach(),
        grads=[p.grad for p in parts],
    )
    return results


@pytest.fixture(scope="module")
def class_parallel():
    return run_ranks(_class_parallel, 3)


@pytest.mark.parametrize("case", CLASS_PARALLEL, ids=[c[0] for c in CLASS_PARALLEL])
def test_class_parallel_partial_fc_is_the_reference_on_the_union_of_the_samples(class_parallel, case):
    name, classes, rows, rate = case[:4]
    counts = slice_sizes(classes, 3)
    for rank, results in enumerate(class_parallel):
        result = results[name]
        assert result["slice_ok"]
        assert result["sizes"] == [sample_size(c, 3 * rows, rate) for c in counts]
        union, labels = result["union"], result["labels"]
        assert torch.equal(union, union.unique()) and torch.isin(labels[labels >= 0], union).all()
        for key in ("loss", "emb_grad", "row_grad", "stepped"):
            torch.testing.assert_close(*result[key], **TOL, msg=lambda m: f"rank {rank} {key}: {m}")
        assert result["untouched"]


def test_udon_loss_on_the_virtual_class_space(class_parallel):
    gen = torch.Generator().manual_seed(3)
    classes, rows = 13, 2
    e_s, e_t = (F.normalize(torch.randn(rows * 3, d, generator=gen), dim=1).requires_grad_() for d in (5, 9))
    w_s, w_t = torch.randn(classes, 5, generator=gen), torch.randn(classes, 9, generator=gen)
    labels = torch.randint(0, classes, (rows * 3,), generator=gen)
    union = class_parallel[0]["udon_loss"]["union"]
    rows_s, rows_t = w_s[union].requires_grad_(), w_t[union].requires_grad_()
    virtual = torch.searchsorted(union, labels)
    out = udon_loss(
        e_s, e_t, rows_s, rows_t, virtual, margin_type="arcface", margin=0.4, backend="reference", similarity_weight=0.0
    )
    out.total.backward()
    shards = [r["udon_loss"]["shard"] for r in class_parallel]
    assert [s[1] for s in shards] == [len(union)] * 3 and [s[0] for s in shards] == sorted(s[0] for s in shards)
    for rank, result in enumerate(r["udon_loss"] for r in class_parallel):
        mine = slice(rank * rows, (rank + 1) * rows)
        own = slice(shards[rank][0], shards[rank + 1][0] if rank < 2 else len(union))
        assert torch.equal(result["virtual_labels"], virtual[mine])
        torch.testing.assert_close(result["terms"][:4], torch.stack(list(out))[:4].detach(), **TOL)  # SIM: per rank
        expected = [e_s.grad[mine], e_t.grad[mine], rows_s.grad[own], rows_t.grad[own]]
        for got, want in zip(result["grads"], expected):
            torch.testing.assert_close(got, want, **TOL)


def _replicated(rank, world):
    results = []
    for classes, rows, rate in ((13, 1, 0.5), (40, 3, 0.1)):
        gen = torch.Generator().manual_seed(classes)
        emb = torch.randn(rows * world, D, generator=gen)
        labels = torch.randint(0, classes, (rows * world,), generator=gen)
        weight = torch.randn(classes, D, generator=gen)
        torch.manual_seed(rank)  # the ranks' RNGs differ: the sample must not
        mine = slice(rank * rows, (rank + 1) * rows)
        index, sampled_labels = sample_replicated(labels[mine], classes, rate)
        sampled_rows = weight[index].clone().requires_grad_()
        normalized_softmax_ce(
            F.normalize(emb[mine], dim=-1),
            sampled_rows,
            sampled_labels,
            margin_type="arcface",
            margin=0.5,
            backend=NATIVE,
        ).backward()
        average_row_gradients([sampled_rows])
        results.append(dict(index=index, sampled_labels=sampled_labels, grad=sampled_rows.grad))
    return results


def test_data_parallel_ranks_sample_the_same_classes_and_average_the_row_gradients():
    ranks = run_ranks(_replicated, 2)
    for case, (classes, rows, rate) in enumerate(((13, 1, 0.5), (40, 3, 0.1))):
        gen = torch.Generator().manual_seed(classes)
        emb = torch.randn(rows * 2, D, generator=gen)
        labels = torch.randint(0, classes, (rows * 2,), generator=gen)
        weight = torch.randn(classes, D, generator=gen)
        index = ranks[0][case]["index"]
        assert torch.equal(index, ranks[1][case]["index"]) and index.shape == (sample_size(classes, 2 * rows, rate),)
        assert torch.isin(labels, index).all()
        sampled_labels = torch.cat([r[case]["sampled_labels"] for r in ranks])
        assert torch.equal(index[sampled_labels], labels)
        reference_rows = weight[index].requires_grad_()
        normalized_softmax_ce(
            F.normalize(emb, dim=-1),
            reference_rows,
            sampled_labels,
            margin_type="arcface",
            margin=0.5,
            backend="reference",
        ).backward()
        for rank in ranks:
            torch.testing.assert_close(rank[case]["grad"], reference_rows.grad, **TOL)


def _train(rank, world, root, data_root, ports):
    """A data-parallel and a class-parallel run with --sample-rate 0.5; after every step, the sum of each
    replicated parameter (all parameters without class parallelism, all but the classifiers with it)."""
    from udon_fast.trainer import loop
    from udon_fast.trainer import step as step_module
    from udon_fast.trainer.loop import train

    real, real_load = step_module.UDONStep.apply, loop.load_distributed_run
    sums, states = [], {}

    def sliced_state(model, optimizer):
        return {
            n: {k: v.clone() for k, v in optimizer.state[p].items()}
            for n, p in model.sharded_parameters()
            if p in optimizer.state
        }

    def apply(self, terms):
        real(self, terms)
        sums.append(
            [
                p.detach().double().sum().item()
                for n, p in self.model.named_parameters()
                if not (n.startswith("classifiers.") and self.sharded)
            ]
        )
        states["trained"] = sliced_state(self.model, self.optimizer)

    def load(path, model, optimizer, *args):
        progress = real_load(path, model, optimizer, *args)
        states["resumed"] = sliced_state(model, optimizer)
        return progress

    step_module.UDONStep.apply, loop.load_distributed_run = apply, load
    out = {}
    base = [
        "--data-root",
        str(data_root),
        "--backbone",
        "vit_tiny_patch16_224",
        "--pretrained",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--update-every",
        "2",
        "--checkpoint-every",
        "2",
        "--eval-batch-size",
        "4",
        "--frozen-epochs",
        "0",
        "--no-compile",
        "--no-progress",
        "--deterministic",
        "--data-threads",
        "1",
        "--steps",
        "4",
        "--sample-rate",
        "0.5",
    ]
    for mode, port in zip(("dp", "cp"), ports):
        use_port(port)
        sums.clear()
        train(
            udon_fast.commands.train.parse_args(
                [*base, "--out", f"{root}/{mode}", *(["--class-parallel"] if mode == "cp" else [])]
            )
        )
        out[mode] = list(sums)
    use_port(ports[2])  # the finished class-parallel run, resumed: its sliced AdamW state (per-row steps) reloads
    train(udon_fast.commands.train.parse_args([*base, "--out", f"{root}/cp", "--class-parallel", "--resume"]))
    step_module.UDONStep.apply, loop.load_distributed_run = real, real_load
    out["state_reloaded"] = states["trained"].keys() == states["resumed"].keys() and all(
        torch.equal(value, states["resumed"][name][key])
        for name, moments in states["trained"].items()
        for key, value in moments.items()
    )
    out["per_row_steps"] = sorted({tuple(m["step"].shape) for m in states["trained"].values()})
    return out


def test_trainer_runs_partial_fc_on_two_ranks_with_replicas_identical(tmp_path):
    from udon_fast.data.synthetic import write_tiny_uned
    from udon_fast.model import load_model

    data_root = write_tiny_uned(
        tmp_path / "uned",
        {"shops": {"train": 24, "val": 3, "test": 3, "index": 3}, "birds": {"train": 20, "val": 4, "test": 4}},
        per_class=2,
    )
    ranks = run_ranks(_train, 2, str(tmp_path), str(data_root), [free_port() for _ in range(3)], process_group=False)
    for mode in ("dp", "cp"):
        assert len(ranks[0][mode]) == 4 and ranks[0][mode] == ranks[1][mode], mode
        metrics = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [0, 1, 2, 3]
        model, _ = load_model(tmp_path / mode / "checkpoints" / "last.pt")
        assert model.teacher_classifier("shops").shape[0] == 24
    for rank in ranks:  # rank r's slices of shops (24 classes) and birds (20) have 12 and 10 rows
        assert rank["state_reloaded"] and rank["per_row_steps"] and set(rank["per_row_steps"]) <= {(10,), (12,)}
