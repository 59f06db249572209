"""The training loop at full speed: no device-to-host synchronisation between log points (counted by
tests/sync_counter.py, which patches every tensor reader and watches every aten call), non-finite
steps skipped on the device, the per-step rows independent of --log-every, and the compiled step
(backbone, heads and fused loss in one graph, the same graph for every domain, a compile failure
one line naming --compile off)."""

import functools
import json

import pytest
import torch
from sync_counter import SyncCounter

from udon_fast.commands import train as train_cli
from udon_fast.commands.train import parse_args
from udon_fast.model import UDONModel
from udon_fast.trainer import step as step_module
from udon_fast.trainer.loop import Run, train
from udon_fast.trainer.optimizer import build_optimizer
from udon_fast.trainer.state import Progress
from udon_fast.trainer.step import LossOptions, UDONStep, check_classifiers

# The default backbone with its packaged weights (BatchNorm), at the smallest size it accepts.
DEFAULT = [
    "--backbone",
    "tf_efficientnet_lite0",
    "--pretrained",
    "packaged",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--eval-batch-size",
    "16",
    "--no-progress",
    "--data-threads",
    "1",
]
LOSS = LossOptions(
    margin_type="arcface",
    margin=0.2,
    scale=16.0,
    temperature=0.1,
    kl_weight=1.0,
    similarity_weight=1.0,
    backend="auto",
    n_devices=1,
)


def _counted_train(run: Run, syncs: SyncCounter) -> int:
    """`run.train` from step 0 with the syncs labelled: "log_point" inside the log points' work (reading
    the terms, the divergence check, the sampler's window read), "checkpoint", and "step" elsewhere; the
    data loader (host tensors by design) not counted.  Returns the number of log points."""
    log_points = []

    def labelled(phase, function, note=None):
        @functools.wraps(function)
        def call(*args, **kwargs):
            if note is not None:
                note.append(1)
            with syncs.phase(phase):
                return function(*args, **kwargs)

        return call

    def loader_paused(function):
        def call(*args, **kwargs):
            with syncs.paused():
                return function(*args, **kwargs)

        return call

    run.loader.next_batch = loader_paused(run.loader.next_batch)
    run._log_point = labelled("log_point", run._log_point, log_points)
    run._check_finite = labelled("log_point", run._check_finite)
    run.sampler._update = labelled("log_point", run.sampler._update)
    run.checkpoint = labelled("checkpoint", run.checkpoint)
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "metrics.jsonl").write_text("")
    with syncs.phase("step"):
        run.train(Progress())
    return len(log_points)


@pytest.mark.parametrize("options", [[], ["--sample-rate", "0.5"]], ids=["all-classes", "partial-fc"])
def test_default_configuration_makes_no_sync_between_log_points(data_root, tmp_path, options):
    """9 steps of the default backbone, dynamic sampler updating every 4 steps, log points every 3:
    0 syncs in the steps, at most 2 per log point (the terms, the sampler's window sums).  (The code
    before this change made 7 per step: labels min and max, two embedding finiteness checks, two
    classifier-norm checks, the terms' tolist.)  Eager: the compiled step's 0 graph breaks are
    tested below, and a graph without breaks makes no host read.  Partial FC samples on the device too."""
    config = parse_args(
        [
            "--data-root",
            str(data_root),
            "--out",
            str(tmp_path / "run"),
            *DEFAULT,
            "--steps",
            "9",
            "--log-every",
            "3",
            "--update-every",
            "4",
            "--checkpoint-every",
            "1000",
            "--frozen-epochs",
            "1",
            "--no-compile",
            *options,
        ]
    )
    run = Run(config)
    try:
        with SyncCounter() as syncs:
            log_points = _counted_train(run, syncs)
    finally:
        run.loader.close()
    # log points: steps 3, 4 (update), 6 (log, epoch end), 8 (update), 9 (log, end)
    assert log_points == 5
    assert syncs.by_phase["step"] == 0, [what for phase, what in syncs.events if phase == "step"]
    assert 0 < syncs.by_phase["log_point"] <= 2 * log_points, syncs.events
    assert syncs.by_phase["checkpoint"] > 0  # the counter sees the reads a checkpoint makes


def test_the_counter_misses_no_reader():
    readers = [
        lambda t: t.item(),
        lambda t: bool(t),
        lambda t: float(t),
        lambda t: int(t),
        lambda t: t.tolist(),
        lambda t: t.numpy(),
        lambda t: f"{t:.1f}",
        lambda t: [1, 2][t],
        lambda t: t.nonzero(),
        lambda t: torch.zeros(3)[t.bool().expand(3)],
        lambda t: torch.zeros(3).index_put_((t.bool().expand(3),), t),
        lambda t: t.cpu(),
    ]
    x = torch.tensor(1.0)
    for reader in readers:
        with SyncCounter() as syncs:
            reader(x.long() if reader is readers[7] else x)
        assert len(syncs.events) >= 1, reader


def _tiny_step(compile=False, sample_rate=1.0, domains=None):
    torch.manual_seed(0)
    model = UDONModel(
        "vit_tiny_patch16_224", domains or {"a": 5, "b": 7, "c": 3}, image_size=32, backbone_kwargs={"depth": 1}
    )
    optimizer = build_optimizer(model, lr=1e-2, backbone_lr_mult=1.0, weight_decay=1e-4)
    return (
        model,
        optimizer,
        UDONStep(model, optimizer, LOSS, compile=compile, grad_clip=1.0, world_size=1, sample_rate=sample_rate),
    )


def _batch(classes, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, classes, (4,), generator=gen)


def _state(model, optimizer):
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    return params, moments


def test_a_non_finite_step_and_every_later_one_are_skipped_on_the_device(monkeypatch):
    model, optimizer, step = _tiny_step()
    images, labels = _batch(5, 0)
    step.apply(torch.stack(list(step(images, labels, "a"))))
    good = _state(model, optimizer)
    real = step_module.udon_loss
    monkeypatch.setattr(
        step_module,
        "udon_loss",
        lambda *a, **k: (lambda out: type(out)(out.total * float("nan"), *out[1:]))(real(*a, **k)),
    )
    terms = torch.stack(list(step(images, labels, "b")))
    assert not torch.isfinite(terms).all()
    step.apply(terms)
    monkeypatch.setattr(step_module, "udon_loss", real)
    images, labels = _batch(3, 1)
    terms = torch.stack(list(step(images, labels, "c")))
    assert torch.isfinite(terms).all()
    step.apply(terms)  # finite, but after a bad step: skipped too (the run stops at its next log point)
    params, moments = _state(model, optimizer)
    assert float(step.skipped) == 1.0
    for name, value in good[0].items():
        assert torch.equal(params[name], value), name
    for key, state in good[1].items():
        for k, v in state.items():
            assert torch.equal(moments[key][k], v), k


def test_a_finite_step_is_applied():
    model, optimizer, step = _tiny_step()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step.apply(torch.stack(list(step(*_batch(5, 0), "a"))))
    assert float(step.skipped) == 0.0
    assert not torch.equal(before["student_projection.0.weight"], model.student_projection[0].weight)


def test_classifiers_are_checked_once_when_built_or_loaded():
    model, _, _ = _tiny_step()
    check_classifiers(model)
    with torch.no_grad():
        model.student_classifier("b")[3] = 0.0
    with pytest.raises(ValueError, match="student classifier of domain 'b' row 3 .* has norm 0"):
        check_classifiers(model)


def _rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        del row["images_per_s"]
    return rows


def test_rows_do_not_depend_on_log_every(data_root, tmp_path):
    """--log-every 1 reads every step, as the loop did before log points; 4 defers the reads: the same
    rows (every field but the timing), the same results, the same checkpoint."""
    common = [
        "--data-root",
        str(data_root),
        "--backbone",
        "vit_tiny_patch16_224",
        "--pretrained",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--eval-batch-size",
        "16",
        "--update-every",
        "3",
        "--checkpoint-every",
        "5",
        "--steps",
        "7",
        "--no-compile",
        "--no-progress",
        "--deterministic",
        "--data-threads",
        "1",
        "--no-baseline",
    ]
    for every in ("1", "4"):
        train(parse_args([*common, "--out", str(tmp_path / every), "--log-every", every]))
    assert _rows(tmp_path / "1") == _rows(tmp_path / "4")
    assert [r["step"] for r in _rows(tmp_path / "4")] == list(range(7))
    assert json.loads((tmp_path / "1" / "results.json").read_text()) == json.loads(
        (tmp_path / "4" / "results.json").read_text()
    )
    one, four = (torch.load(tmp_path / e / "checkpoints" / "last.pt", weights_only=True) for e in ("1", "4"))
    for name, value in one["model"].items():
        assert torch.equal(value, four["model"][name]), name


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_compiled_step_is_one_graph_for_every_domain(monkeypatch, sample_rate):
    """The class dimension is dynamic and the domain enters as tensors: three domains of 5, 7 and 3
    classes, twice each, compile one forward graph (dynamo with a counting backend); with Partial FC
    (sample_rate 0.5, B = 4) the sampled rows, 4, 4 and 3, too."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model, optimizer, step = _tiny_step(compile=True, sample_rate=sample_rate)
    counter = CompileCounter()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counter))
    step.forward_loss = step._compiled(step._forward_loss)
    for _ in range(2):
        for domain, classes in model.domains.items():
            step.apply(torch.stack(list(step(*_batch(classes, len(domain)), domain))))
    assert counter.frame_count == 1


@pytest.mark.parametrize("backbone,kwargs", [("tf_efficientnet_lite0", {}), ("vit_tiny_patch16_224", {"depth": 1})])
def test_compiled_region_has_no_graph_break(backbone, kwargs):
    """torch._dynamo.explain of the compiled forward (backbone, both heads, the fused loss): one graph."""
    torch._dynamo.reset()
    model = UDONModel(backbone, {"a": 5, "b": 7}, image_size=32, backbone_kwargs=kwargs)
    step = UDONStep(model, build_optimizer(model, 1e-3, 1e-2, 1e-6), LOSS, compile=True, grad_clip=None, world_size=1)
    images, labels = _batch(5, 0)
    explanation = torch._dynamo.explain(step._forward_loss)(
        images,
        labels,
        step.teacher_params["a"],
        student_weight=model.student_classifier("a"),
        teacher_weight=model.teacher_classifier("a"),
    )
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


def test_a_compile_failure_is_one_line_naming_compile_off(data_root, tmp_path, monkeypatch, capsys):
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=failing_backend))
    torch._dynamo.reset()
    code = train_cli.main(
        [
            "--data-root",
            str(data_root),
            "--out",
            str(tmp_path / "run"),
            "--backbone",
            "vit_tiny_patch16_224",
            "--pretrained",
            "none",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--no-progress",
            "--data-threads",
            "1",
            "--no-baseline",
            "--compile",
            "on",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("udon_fast.train: error: torch.compile failed (")
    assert "no C++ compiler found" in err[0] and err[0].endswith("train without it with --compile off")


def test_check_inputs_false_skips_the_data_checks_and_reads_nothing():
    """The library checks values by default; check_inputs=False (the trainer's) reads nothing on the host."""
    from udon_fast import udon_loss

    gen = torch.Generator().manual_seed(0)
    student = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=1)
    teacher = torch.nn.functional.normalize(torch.randn(4, 16, generator=gen), dim=1)
    w_s, w_t = torch.randn(5, 8, generator=gen), torch.randn(5, 16, generator=gen)
    labels = torch.tensor([0, 4, 2, 1])
    with SyncCounter() as syncs:
        udon_loss(student, teacher, w_s, w_t, labels, check_inputs=False)
    assert syncs.events == []
    with SyncCounter() as syncs:
        udon_loss(student, teacher, w_s, w_t, labels)
    assert len(syncs.events) >= 6  # labels min, max; two embeddings; two classifiers
    w_t[3] = 0.0
    with pytest.raises(ValueError, match="teacher_weight row 3 .* has norm 0"):
        udon_loss(student, teacher, w_s, w_t, labels)
