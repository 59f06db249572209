"""The UDON run: build the parts from a TrainConfig, train with the dynamic sampler, select the best
validation epoch, test it, write the outputs.  Reads like the training schedule of docs/method.md
(section 4)."""

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..extras import needs_extra

with needs_extra("train"):
    from tqdm import tqdm

from .. import distributed, gallery
from ..config import TrainConfig, parse_folders
from ..data import TrainLoader, default_data_root, load_domains_with_splits
from ..data.image_bytes import set_max_pixels
from ..errors import InputError, TrainingDiverged
from ..evaluation import protocol
from ..evaluation.results import write_results
from ..files.outputs import atomic_write_text, remove_stale_temp_files
from ..kill_points import kill_point
from ..losses import UDONLossOutput
from ..model import Embedder, UDONModel, backbone_embedder
from ..model.checkpoint import read_checkpoint
from ..model.packaged import resolve_pretrained
from ..sampler import DomainSampler
from . import report
from .distributed_checkpoint import load_distributed_run, load_distributed_weights, save_distributed_run
from .epoch_summary import EpochSummary
from .optimizer import build_optimizer, learning_rates, set_backbone_frozen
from .out_folder import claimed_out
from .state import Progress, load_run, save_run
from .step import LossOptions, UDONStep, check_classifiers
from .tensorboard import TensorBoardLog


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT): the message names the step reached and the checkpoint a --resume continues from."""


def _loss_options(config: TrainConfig, world_size: int) -> LossOptions:
    return LossOptions(
        margin_type=config.margin_type,
        margin=config.margin,
        scale=config.scale,
        temperature=config.temperature,
        kl_weight=1.0 if config.distill else 0.0,
        similarity_weight=1.0 if config.distill and config.similarity else 0.0,
        backend=config.loss_backend,
        n_devices=world_size,
        margins=None if config.margins is None else tuple(config.margins),
    )


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the per-step records of steps < `step` (a resumed run rewrites the rest); atomic."""
    kept = [r for r in report.read_metrics(path) if r["step"] < step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class Run:
    """All parts of one run, wired from the config."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.ranks = distributed.setup()
        if config.class_parallel and self.ranks.world_size < 2:
            raise InputError(
                "--class-parallel shards the classifiers over the ranks of a torchrun job: launch with "
                "torchrun --nproc_per_node N (N >= 2) -m udon_fast.train ..."
            )
        self.out = Path(config.out)
        self.checkpoints = self.out / "checkpoints"
        self._prepare_out()
        torch.manual_seed(config.seed)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        set_max_pixels(config.max_pixels)
        folders = parse_folders(config.folder)
        self.domains, self.folder_splits = load_domains_with_splits(
            default_data_root(config.data_root, folders), config.domains, folders, config.split_seed
        )
        self.val_domains = {n: d for n, d in self.domains.items() if "val" in d.splits}
        classes = {n: d.num_classes for n, d in self.domains.items()}
        shard = (self.ranks.rank, self.ranks.world_size) if config.class_parallel else (0, 1)
        self.model = UDONModel(
            config.backbone,
            classes,
            teacher_dim=config.teacher_dim,
            student_dim=config.student_dim,
            pretrained=resolve_pretrained(config.backbone, config.pretrained),
            image_size=config.image_size,
            classifier_shard=shard,
        ).to(self.ranks.device)
        if self.folder_splits:  # evaluate reuses them (data.folder_split)
            self.model.config["folder_splits"] = self.folder_splits
        self.model.train()  # the training state (BatchNorm statistics frozen), independent of any evaluation
        self._check_eval_splits()
        self.global_batch = config.batch_size * self.ranks.world_size
        self.steps_per_epoch, self.total_steps = config.schedule(
            sum(len(d.train) for d in self.domains.values()), self.ranks.world_size
        )
        self.sampler = DomainSampler(
            {n: len(d.train) for n, d in self.domains.items()},
            self.total_steps,
            strategy=config.sampler,
            update_every=config.update_every,
            seed=config.seed,
        )
        self.loader = TrainLoader(
            self.domains,
            batch_size=config.batch_size,
            image_size=config.image_size,
            mean=self.model.mean,
            std=self.model.std,
            seed=config.seed,
            rank=self.ranks.rank,
            world_size=self.ranks.world_size,
            num_threads=config.data_threads,
            decoder=config.decoder,
        )
        self.optimizer = build_optimizer(self.model, config.lr, config.backbone_lr_mult, config.weight_decay)
        self.step_fn = UDONStep(
            self.model,
            self.optimizer,
            _loss_options(config, self.ranks.world_size),
            compile=config.compile,
            grad_clip=config.grad_clip,
            world_size=self.ranks.world_size,
            sample_rate=config.sample_rate,
        )
        self.baseline_sets: dict[str, Any] = {}  # the off-the-shelf backbone's test embeddings, for the gallery
        self.tensorboard: TensorBoardLog | None = None
        self.summary: EpochSummary | None = None

    def _prepare_out(self) -> None:
        """Remove temporary files a killed run left in --out (which `train` has checked and locked:
        `out_folder.claimed_out`)."""
        if self.ranks.is_main:
            for folder in (self.out, self.checkpoints):
                remove_stale_temp_files(folder)

    def _check_eval_splits(self) -> None:
        """Every split the run will evaluate must be evaluable and every image in it decode (before training)."""
        splits = [("test", self.domains, True)] + ([("val", self.val_domains, False)] if self.val_domains else [])
        for split, domains, separate in splits:
            protocol.check_evaluable(domains, split, separate=separate)
        if self.ranks.is_main:
            protocol.check_eval_images(
                self.domains,
                [split for split, _, _ in splits],
                workers=self.config.data_threads,
                progress=self.config.progress,
            )

    def evaluate(self, split: str, model: UDONModel | Embedder | None = None, **kwargs) -> dict[str, Any]:
        """`model` (default: the run's) on `split`: every rank embeds its share of the sets (a collective);
        the same metrics on every rank."""
        domains = self.domains if split == "test" else self.val_domains
        return protocol.evaluate_model(
            self.model if model is None else model,
            domains,
            split,
            batch_size=self.config.eval_batch_size,
            device=self.ranks.device,
            num_threads=self.config.data_threads,
            decoder=self.config.decoder,
            progress=self.config.progress and self.ranks.is_main,
            distributed=self.ranks.world_size > 1,
            **kwargs,
        )

    def save(self, name: str, progress: Progress) -> None:
        """checkpoints/<name>: one file, or on several ranks a manifest and its DCP folder (every rank writes)."""
        if self.ranks.world_size > 1:
            save_distributed_run(
                self.checkpoints / name,
                self.model,
                self.optimizer,
                self.sampler,
                self.loader,
                progress,
                self.ranks,
                self.global_batch,
            )
        elif self.ranks.is_main:
            save_run(self.checkpoints / name, self.model, self.optimizer, self.sampler, self.loader, progress)

    def evaluate_baseline(self) -> dict[str, Any]:
        """The off-the-shelf backbone (its own L2-normalised features, before any training) on test."""
        was_training = self.model.training
        baseline = Embedder.of_backbone(
            self.model.backbone, self.config.image_size, {"backbone_name": self.config.backbone}
        )
        try:
            return self.evaluate("test", baseline, embedding="student", embeddings=self.baseline_sets)
        finally:
            self.model.train(was_training)

    def start(self) -> Progress:
        """Resume from last.pt, or start fresh (also, with a note, when --resume finds no checkpoint yet:
        the run was stopped before its first one): write config.json (with the folder splits) and evaluate
        the off-the-shelf backbone and the untrained model."""
        last = self.checkpoints / "last.pt"
        if self.config.resume and last.is_file():
            if self.ranks.world_size > 1:
                progress = load_distributed_run(
                    last, self.model, self.optimizer, self.sampler, self.loader, self.ranks, self.global_batch
                )
            else:
                progress = load_run(last, self.model, self.optimizer, self.sampler, self.loader)
            self.model.train()  # the training state is part of what is restored
            check_classifiers(self.model)
            if self.ranks.is_main:
                _truncate_metrics(self.out / "metrics.jsonl", progress.step)
            return progress
        check_classifiers(self.model)
        progress = Progress()
        if self.ranks.is_main:
            if self.config.resume:
                print(
                    f"udon_fast.train: --resume: no checkpoint in {self.checkpoints} yet (the run stopped before "
                    f"its first one); starting it from the beginning",
                    file=sys.stderr,
                )
            atomic_write_text(
                self.out / "config.json",
                self.config.to_json(folder_splits=self.folder_splits, world_size=self.ranks.world_size),
            )
            atomic_write_text(self.out / "metrics.jsonl", "")
        if self.config.baseline:
            progress.baseline = self.evaluate_baseline()
        progress.initial = self.evaluate("test")
        distributed.barrier(self.ranks.world_size)
        return progress

    def checkpoint(self, progress: Progress, validate: bool) -> None:
        """End of an epoch (validate=True) or a periodic save: best.pt on a new best, then last.pt."""
        if validate and self.val_domains:
            merged = self.evaluate("val", index="merged", embedding="student")["student"]["merged"]
            score = merged["mean"]["p_at_1"]
            progress.validations.append(
                {
                    "step": progress.step,
                    "mean_p_at_1": score,
                    "p_at_1": {d: m["p_at_1"] for d, m in merged.items() if d != "mean"},
                    "mean_mmp_at_5": merged["mean"]["mmp_at_5"],
                    "mmp_at_5": {d: m["mmp_at_5"] for d, m in merged.items() if d != "mean"},
                }
            )
            if self.tensorboard is not None:
                self.tensorboard.validation(progress.validations[-1])
            if self.summary is not None:
                self.summary.validation(progress.validations[-1:])
            if score > progress.best_score:
                progress.best_score, progress.best_step = score, progress.step
                self.save("best.pt", progress)
        elif validate:  # no val split, nothing to select on: best.pt is the model at the end of the latest epoch
            self.save("best.pt", progress)
        self.save("last.pt", progress)
        kill_point("checkpoint")
        distributed.barrier(self.ranks.world_size)

    def open_logs(self, progress: Progress) -> report.MetricsLog:
        """metrics.jsonl for appending, feeding summary.csv and (--tensorboard) the event files; a resumed
        run's summary starts from the kept rows and the checkpoint's validations."""
        path = self.out / "metrics.jsonl"
        self.summary = EpochSummary(
            self.out,
            self.steps_per_epoch,
            self.total_steps,
            list(self.val_domains),
            list(learning_rates(self.optimizer)),
        )
        self.summary.rows(report.read_metrics(path))
        self.summary.validation(progress.validations)
        listeners = [self.summary.rows]
        if self.config.tensorboard:
            self.tensorboard = TensorBoardLog(self.out, purge_step=progress.step)
            listeners.append(self.tensorboard.rows)
        return report.MetricsLog(path, listeners)

    def close_logs(self, metrics: report.MetricsLog | None) -> None:
        if metrics is not None:
            metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def train(self, progress: Progress) -> None:
        """The training steps.  Between two log points nothing is read from the device: each step's loss
        terms stay there and a non-finite step is skipped there (`UDONStep.apply`).  A log point (every
        --log-every steps, before each dynamic-sampler update and each checkpoint, after the last step)
        reads the pending terms once, stops a diverged run, writes their metrics rows and moves the
        progress bar (docs/method.md, "Training at full speed")."""
        config, ranks = self.config, self.ranks
        metrics = self.open_logs(progress) if ranks.is_main else None
        rows = report.StepRows(metrics, UDONLossOutput._fields)
        bar = tqdm(
            total=self.total_steps,
            initial=progress.step,
            desc="train",
            unit="step",
            disable=not (config.progress and ranks.is_main),
        )
        while progress.step < self.total_steps:
            step = progress.step
            epoch = step // self.steps_per_epoch
            set_backbone_frozen(self.model, self.optimizer, frozen=epoch < config.frozen_epochs)
            domain = self.sampler.domain_at(step)
            images, labels = self.loader.next_batch(domain)
            images, labels = (t.to(ranks.device, non_blocking=True) for t in (images, labels))
            out = self.step_fn(images, labels, domain)
            terms = distributed.mean_over_ranks(torch.stack(list(out)), ranks.world_size)
            self.step_fn.apply(terms)
            rows.add(
                terms,
                images.shape[0] * ranks.world_size,
                step=step,
                epoch=epoch,
                domain=domain,
                lr=learning_rates(self.optimizer),
            )
            if self.sampler.update_due(step):
                self._check_finite(rows)  # before the sampler reads this window's CEs
            self.sampler.record(step, domain, terms[1])
            rows.complete_last(sampler_weights=self.sampler.weights)
            progress.step = step + 1
            end_of_epoch = progress.step % self.steps_per_epoch == 0 or progress.step == self.total_steps
            save = end_of_epoch or progress.step % config.checkpoint_every == 0
            if save or progress.step % config.log_every == 0 or self.sampler.update_due(step):
                self._log_point(rows, bar)
            kill_point("step")
            if save:
                self.checkpoint(progress, validate=end_of_epoch)
        bar.close()
        self.close_logs(metrics)

    def _check_finite(self, rows: report.StepRows) -> None:
        """TrainingDiverged naming the first pending step whose loss terms are not all finite."""
        for terms, (_, row) in zip(rows.read(), rows.pending):
            if not all(math.isfinite(v) for v in terms.values()):
                raise TrainingDiverged(
                    f"non-finite loss at step {row['step']} (domain {row['domain']!r}): {terms}; the last good "
                    f"checkpoint is {self.checkpoints / 'last.pt'}"
                )

    def _log_point(self, rows: report.StepRows, bar: tqdm) -> None:
        """Read the pending steps' terms (one transfer), stop on a non-finite one, write their rows,
        update the progress bar."""
        self._check_finite(rows)
        written, speed = rows.write()
        last = written[-1]
        bar.set_postfix(domain=last["domain"], loss=f"{last['total']:.3f}", img_s=f"{speed:.0f}")
        bar.update(len(written))

    def finish(self, progress: Progress, started: float) -> dict[str, Any]:
        """Test the best validation checkpoint (the last one without validation); write the outputs."""
        best = self.checkpoints / ("best.pt" if progress.best_step >= 0 else "last.pt")
        if self.ranks.world_size > 1:
            load_distributed_weights(best, self.model, self.ranks)
        else:
            self.model.load_state_dict(read_checkpoint(best)["model"])
        sets: dict[str, Any] = {}
        results = {
            "initial": progress.initial,
            "final": self.evaluate("test", embeddings=sets),
            "validation": progress.validations,
        }
        baseline_sets = self.gallery_baseline() if self.config.gallery else {}
        if not self.ranks.is_main:
            return {}
        if self.config.gallery:
            gallery.write_gallery(
                self.out / "gallery",
                gallery.merged_search(self.domains, "test", sets),
                self.config.gallery,
                title=f"UDON run {self.out} (test split)",
                baseline=gallery.merged_search(self.domains, "test", baseline_sets) if baseline_sets else None,
                seed=self.config.seed,
            )
        if progress.baseline:
            results["baseline"] = progress.baseline
        header = (
            f"backbone {self.config.backbone}, {len(self.domains)} domains, {self.total_steps} steps, "
            f"sampler {self.config.sampler}, distillation {'on' if self.config.distill else 'off'}, "
            f"best validation step {progress.best_step}, wall time {time.perf_counter() - started:.0f} s"
        )
        markdown = write_results(self.out, results, header)
        report.plot_metrics(self.out, report.read_metrics(self.out / "metrics.jsonl"))
        print(markdown)
        return results

    def gallery_baseline(self) -> dict[str, Any]:
        """The off-the-shelf backbone's test embeddings for the gallery's comparison: those of the start
        (--baseline), or, in a resumed run, the backbone rebuilt from --pretrained and embedded again;
        {} without --baseline."""
        if not self.config.baseline or self.baseline_sets:
            return self.baseline_sets
        backbone = backbone_embedder(self.config.backbone, self.config.pretrained, self.config.image_size).to(
            self.ranks.device
        )
        self.evaluate("test", backbone, embedding="student", index="merged", embeddings=self.baseline_sets)
        return self.baseline_sets


def train(config: TrainConfig) -> dict[str, Any]:
    """Run a whole training job (docs/method.md) and return {"initial": ..., "final": ...[, "baseline": ...]}
    metrics ("baseline": the pretrained backbone's own features, student embedding only)."""
    started = time.perf_counter()
    progress = None
    try:
        with claimed_out(config, distributed.setup()):
            run = Run(config)
            progress = run.start()
            run.train(progress)
            return run.finish(progress, started)
    except KeyboardInterrupt:
        last = Path(config.out) / "checkpoints" / "last.pt"
        raise TrainingInterrupted(
            (f"interrupted at step {progress.step}; " if progress else "interrupted while starting; ")
            + (
                f"--resume continues from the last checkpoint, {last}"
                if last.exists()
                else "no checkpoint was written yet, so --resume starts the run again"
            )
        ) from None
    finally:
        distributed.teardown()
