"""Training configuration: one dataclass, presets, YAML files and the command line.

Precedence: dataclass defaults < `--preset` < `--config FILE.yaml` < explicit flags.
"""

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .extras import needs_extra

with needs_extra("train"):
    import yaml

from .checks import check_positive
from .data.decoders import DATA_THREADS_HELP, DECODERS
from .data.image_bytes import DEFAULT_MAX_PIXELS, MAX_PIXELS_HELP
from .errors import InputError
from .losses.backends import BACKENDS
from .losses.margins import MARGIN_TYPES
from .losses.margins import resolve as resolve_margin
from .losses.partial_fc import check_sample_rate
from .sampler import STRATEGIES


def _option(default: Any, group: str, help: str) -> Any:
    """A TrainConfig field: its default, the --help group its flag is listed in and the flag's help text."""
    return field(default=default, metadata={"group": group, "help": help})


DATA, MODEL, LOSS, SCHEDULE, OUTPUT = "data", "model", "loss", "schedule and optimiser", "output and reporting"


@dataclass
class TrainConfig:
    """Everything a run varies: each field is a flag (--name-with-dashes) whose help and --help group are
    the field's metadata.  Neither `data_root` nor `folder`: the built-in dataset."""

    data_root: str | None = _option(
        None,
        DATA,
        "UnED root (info_files/, images/) or a shard folder; default: the built-in dataset unless --folder is given",
    )
    domains: list[str] | None = _option(None, DATA, "domains to train on (default: all found)")
    folder: list[str] | None = _option(
        None,
        DATA,
        "NAME=DIR: a folder-per-class domain (DIR/<class>/<image> or DIR/{train,val,test,...}/<class>/"
        "<image>); repeatable, combinable with --data-root.  Without test/ (val/) folders, a seeded "
        "class-disjoint test (val) split is made and recorded in config.json and the checkpoints",
    )
    split_seed: int = _option(0, DATA, "seed of the class split of --folder domains without test/val folders")
    max_pixels: int = _option(DEFAULT_MAX_PIXELS, DATA, MAX_PIXELS_HELP)
    out: str = _option("runs/udon", OUTPUT, "output folder of the run (default runs/udon)")
    resume: bool = _option(False, OUTPUT, "continue the run in --out from its last checkpoint")
    epochs: int = _option(6, SCHEDULE, "training epochs (default 6)")
    steps: int | None = _option(None, SCHEDULE, "total training steps (default: epochs x steps per epoch)")
    batch_size: int = _option(32, SCHEDULE, "images per training step on each rank (default 32)")
    backbone: str = _option("tf_efficientnet_lite0", MODEL, "timm backbone name (default tf_efficientnet_lite0)")
    pretrained: str | None = _option(
        "packaged",
        MODEL,
        "local backbone weights (timm/OpenCLIP state dict, safetensors, AugReg .npz, the UDON "
        "release's CLIP vit_b16.npy), 'packaged' (default) for weights shipped in an installed "
        "package, or 'none'",
    )
    image_size: int = _option(64, MODEL, "image side in pixels the backbone sees (default 64)")
    teacher_dim: int = _option(256, MODEL, "width of each domain teacher's embedding (default 256)")
    student_dim: int = _option(64, MODEL, "width of the universal (student) embedding (default 64)")
    sampler: str = _option(
        "dynamic",
        SCHEDULE,
        f"domain sampler strategy: {', '.join(STRATEGIES)} (default "
        "dynamic: domains with a higher teacher loss are drawn more)",
    )
    # Built-in run: 200 steps (about two epochs) per window, so that even the smallest weights the rule
    # gives there (0.02-0.03) draw 4-6 batches per window (docs/method.md, section 7, "How the built-in
    # defaults were chosen").
    update_every: int = _option(200, SCHEDULE, "steps between the dynamic sampler's weight updates (default 200)")
    distill: bool = _option(True, LOSS, "KL and similarity distillation from the teachers to the student (default on)")
    similarity: bool = _option(True, LOSS, "batch-similarity distillation (default on)")
    margin_type: str = _option("normface", LOSS, f"classifier margin: {', '.join(MARGIN_TYPES)} (default normface)")
    margin: float = _option(0.0, LOSS, "the margin of --margin-type cosface or arcface (default 0)")
    margins: tuple[float, float, float] | None = _option(
        None, LOSS, "M1,M2,M3: the (m1, m2, m3) of --margin-type combined: cos(m1*theta + m2) - m3"
    )
    scale: float = _option(16.0, LOSS, "scale of the cosine logits (default 16)")
    temperature: float = _option(0.1, LOSS, "temperature of the similarity distillation (default 0.1)")
    lr: float = _option(1e-3, SCHEDULE, "learning rate of the heads and classifiers (default 1e-3)")
    backbone_lr_mult: float = _option(1e-2, SCHEDULE, "backbone learning rate as a multiple of --lr (default 0.01)")
    weight_decay: float = _option(1e-6, SCHEDULE, "AdamW weight decay (default 1e-6)")
    frozen_epochs: int = _option(1, SCHEDULE, "epochs the backbone stays frozen at the start (default 1)")
    grad_clip: float | None = _option(None, SCHEDULE, "clip the gradient norm to this value (default: no clipping)")
    loss_backend: str = _option(
        "auto",
        LOSS,
        f"head loss implementation: {', '.join(BACKENDS)} (default auto: the "
        "fastest available on the device; python -m udon_fast.info lists them)",
    )
    # Partial FC: the share of each domain's classes a step keeps (losses/partial_fc.py)
    sample_rate: float = _option(
        1.0,
        LOSS,
        "Partial FC: each step keeps the batch's classes plus a seeded uniform "
        "sample of the others, ceil(R x C) classes per domain classifier in "
        "(0, 1]; 1 (default): all classes",
    )
    class_parallel: bool = _option(
        False,
        LOSS,
        "shard every domain's teacher and student classifiers over the ranks "
        "of a torchrun job (for label spaces too large to replicate; "
        "docs/class_parallel.md)",
    )
    compile: bool = _option(
        True,
        SCHEDULE,
        "on (default): compile the training step (backbone, heads, fused loss) "
        "with torch.compile; off: train eagerly (also --no-compile)",
    )
    eval_batch_size: int = _option(128, OUTPUT, "images embedded per batch in the evaluations (default 128)")
    checkpoint_every: int = _option(50, OUTPUT, "steps between writes of checkpoints/last.pt (default 50)")
    # Steps between log points, where the loss terms are read from the device (one wait for the device
    # to drain its queue), metrics.jsonl gets their rows and a diverged run stops.  50: the same
    # interval as the checkpoints (a log point anyway), so a GPU waits once per 50 steps (the other
    # 49 run back to back) while a divergence stops the run at most 49 steps late, all of them skipped
    # (docs/method.md, "Training at full speed").
    log_every: int = _option(
        50,
        OUTPUT,
        "steps between log points: loss terms read from the device, metrics.jsonl "
        "rows written, progress bar updated, a non-finite loss stopped (every "
        "step still gets its row; default 50)",
    )
    data_threads: int = _option(2, DATA, DATA_THREADS_HELP.format(default=2))
    decoder: str = _option(
        "dali",
        DATA,
        "image decoder: dali (default; torchvision when DALI is not installed) or "
        "torchvision (torchvision.io, nvJPEG on a GPU; the fastest on CPUs); "
        "same batches either way",
    )
    seed: int = _option(0, SCHEDULE, "seed of the weights' initialisation, the sampler and the data order (default 0)")
    deterministic: bool = _option(False, SCHEDULE, "torch deterministic algorithms (bitwise resumable on CPU)")
    progress: bool = _option(True, OUTPUT, "progress bars on stderr (default on)")
    baseline: bool = _option(
        True,
        OUTPUT,
        "evaluate the pretrained backbone's own features once at the start (results 'baseline'; default on)",
    )
    gallery: int = _option(
        8,
        OUTPUT,
        "K: write --out/gallery/ at the end, per domain K sampled test queries with "
        "their top-5 neighbours in the merged index, and where the trained model and "
        "the off-the-shelf backbone disagree (default 8; 0: none)",
    )
    tensorboard: bool = _option(
        False,
        OUTPUT,
        "write TensorBoard event files to --out/tb (per-step losses per "
        "domain, sampler weights, learning rates, images/s, per-epoch "
        "validation P@1 and mMP@5)",
    )

    def validate(self) -> "TrainConfig":
        """Raise InputError naming the flag, with the valid values where they are a list."""
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                raise InputError(
                    f"--{name.replace('_', '-')} must be one of {', '.join(valid)}; got {getattr(self, name)!r}"
                )
        check_positive(
            self,
            "epochs",
            "batch_size",
            "image_size",
            "teacher_dim",
            "student_dim",
            "update_every",
            "eval_batch_size",
            "checkpoint_every",
            "log_every",
            "data_threads",
        )
        if self.gallery < 0:
            raise InputError(f"--gallery must be >= 0 (0: no gallery), got {self.gallery}")
        if self.steps is not None and self.steps < 1:
            raise InputError(f"--steps must be >= 1, got {self.steps}")
        resolve_margin(self.margin_type, self.margin, self.margins, flags=True)
        for name in ("scale", "temperature", "lr"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.backbone_lr_mult < 0 or self.weight_decay < 0 or self.frozen_epochs < 0:
            raise InputError("--backbone-lr-mult, --weight-decay and --frozen-epochs must be >= 0")
        if self.class_parallel and self.loss_backend == "reference":
            raise InputError(
                "--class-parallel needs a fused --loss-backend (auto, chunked, native or triton), got reference"
            )
        try:
            check_sample_rate("--sample-rate", self.sample_rate)
        except ValueError as exc:  # the loss library's argument check, here of a flag's value
            raise InputError(str(exc)) from None
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise InputError(f"--grad-clip must be > 0, got {self.grad_clip}")
        check_positive(self, "max_pixels")
        parse_folders(self.folder)
        return self

    def schedule(self, train_images: int, world_size: int = 1) -> tuple[int, int]:
        """(steps per epoch, total steps) of a run over `train_images` training images on `world_size`
        ranks: an epoch is train_images // (batch_size x world_size) steps (at least 1); --steps, when
        given, overrides epochs x that."""
        steps_per_epoch = max(1, train_images // (self.batch_size * world_size))
        return steps_per_epoch, self.steps or self.epochs * steps_per_epoch

    def to_json(self, **extra: Any) -> str:
        """The options as JSON, plus `extra` top-level entries (e.g. the folder splits of a run)."""
        return json.dumps({**dataclasses.asdict(self), **extra}, indent=2, sort_keys=True)

    def differences(self, saved: Mapping[str, Any], world_size: int = 1) -> list[str]:
        """The options that change what a run computes and differ from `saved` (a run's config.json), as
        "--flag SAVED -> GIVEN"; RESUME_MAY_DIFFER are not compared.  An option `saved` lacks (written
        before the option existed) is compared with its default.  On another number of ranks than the
        run's (`saved["world_size"]`, 1 when absent) --batch-size is compared as the global batch,
        --batch-size x ranks, which is what fixes the data order (docs/scale_out.md)."""
        given, defaults = json.loads(self.to_json()), json.loads(TrainConfig().to_json())
        saved_world = saved.get("world_size", 1)
        changed = []
        for name in FIELDS:
            if name in RESUME_MAY_DIFFER:
                continue
            if name == "batch_size" and saved_world != world_size:
                before = saved.get(name, defaults[name])
                if before * saved_world != self.batch_size * world_size:
                    changed.append(
                        f"--batch-size {before} on {saved_world} rank(s) -> {self.batch_size} on "
                        f"{world_size} (the global batch, --batch-size x ranks, must stay "
                        f"{before * saved_world})"
                    )
                continue
            before = saved.get(name, defaults[name])
            if before != given[name]:
                changed.append(f"--{name.replace('_', '-')} {_shown(before)} -> {_shown(given[name])}")
        return changed


CHOICES = {"sampler": STRATEGIES, "margin_type": MARGIN_TYPES, "loss_backend": BACKENDS, "decoder": DECODERS}
# Options that cannot change what a run computes (its weights, metrics and checkpoints' contents), so a
# --resume may set them differently from config.json (docs/reliability.md, "Resume"): where the run
# lives, how it reports, how many threads decode (the same pixels), which decoder (the same batches),
# how often last.pt is written, the evaluation batch size (per-image embeddings in eval mode) and the
# off-the-shelf backbone's evaluation, which only a fresh run does.  Every other option is compared.
RESUME_MAY_DIFFER = (
    "out",
    "resume",
    "progress",
    "data_threads",
    "decoder",
    "checkpoint_every",
    "eval_batch_size",
    "baseline",
    "gallery",
    "tensorboard",
    "log_every",
    "compile",
)


def _shown(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "(none)"
    return str(value)


# The paper's full setup on UnED (docs/method.md, sections 1 and 4); needs --data-root.
PRESETS: dict[str, dict[str, Any]] = {
    "builtin": {},
    "uned": {
        "backbone": "vit_base_patch16_224",
        "pretrained": None,
        "image_size": 224,
        "batch_size": 128,
        "epochs": 10,
        "frozen_epochs": 2,
        "update_every": 1000,
        "sampler": "dynamic",
        "eval_batch_size": 512,
        "checkpoint_every": 1000,
        "data_threads": 8,
    },
}


def parse_folders(values: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """{NAME: DIR} from `--folder NAME=DIR` values (or a YAML mapping NAME: DIR); InputError (one
    line) for a malformed value, a name used twice or a DIR that is not a directory."""
    if isinstance(values, Mapping):
        values = [f"{name}={directory}" for name, directory in values.items()]
    folders: dict[str, str] = {}
    for value in values or ():
        name, sep, directory = str(value).partition("=")
        if not sep or not name or not directory:
            raise InputError(f"--folder: expected NAME=DIR, got {value!r}")
        if "." in name or "/" in name:
            raise InputError(f"--folder {value}: the domain name {name!r} may not contain '.' or '/'")
        if name in folders:
            raise InputError(f"--folder: domain name {name!r} is given twice ({folders[name]} and {directory})")
        if not Path(directory).is_dir():
            raise InputError(f"--folder {value}: {directory} is not a directory")
        folders[name] = directory
    return folders


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
NEGATABLE = ("distill", "similarity", "progress", "baseline")


def on_off(value: str) -> bool:
    """--compile on|off (also true/false, yes/no, 1/0)."""
    text = value.lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")


# A float written without a dot (1e-3): YAML 1.1 (PyYAML) reads it as a string, YAML 1.2 as a number.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_TRIPLE = tuple[float, float, float]
_KIND_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list[str]: "a list of strings",
    _TRIPLE: "a list of 3 numbers",
}


def _number(value: Any) -> Any:
    """`value`, or the float of a number YAML 1.1 left as text (1e-3)."""
    return float(value) if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _typed(name: str, value: Any, where: str) -> Any:
    """`value` for the TrainConfig field `name`, checked against the field's type and choices (a float
    field also takes an int, or a number YAML 1.1 left as text such as 1e-3); InputError naming `where`."""
    kinds = (
        typing.get_args(FIELDS[name].type) if isinstance(FIELDS[name].type, types.UnionType) else (FIELDS[name].type,)
    )
    if value is None and type(None) in kinds:
        return None
    kind = next(k for k in kinds if k is not type(None))
    if name == "folder" and isinstance(value, Mapping):  # NAME: DIR (parse_folders)
        value = [f"{k}={v}" for k, v in value.items()]
    if kind is float:
        value = _number(value)
    elif kind == _TRIPLE and isinstance(value, list):
        value = [_number(x) for x in value]
    fits = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: _is_number,
        str: lambda v: isinstance(v, str),
        list[str]: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        _TRIPLE: lambda v: isinstance(v, list) and len(v) == 3 and all(map(_is_number, v)),
    }[kind]
    if not fits(value):
        expected = _KIND_NAMES[kind] + (" or null" if type(None) in kinds else "")
        raise InputError(f"{where}: expected {expected}, got {value!r} ({type(value).__name__})")
    if name in CHOICES and value not in CHOICES[name]:
        raise InputError(f"{where}: must be one of {', '.join(CHOICES[name])}; got {value!r}")
    if kind == _TRIPLE:
        return tuple(float(x) for x in value)
    return float(value) if kind is float else value


def from_mapping(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check a YAML mapping against TrainConfig's fields: known keys (- or _), each value of its field's
    type and among its choices; InputError (one line naming `source` and the key) otherwise."""
    bad_keys = [k for k in values if not isinstance(k, str)]
    if bad_keys:
        raise InputError(f"{source}: option names must be text, got {bad_keys[0]!r}")
    names = {key: key.replace("-", "_") for key in values}
    unknown = sorted(key for key, name in names.items() if name not in FIELDS)
    if unknown:
        raise InputError(f"{source}: unknown option(s) {unknown}; valid: {sorted(FIELDS)}")
    return {names[key]: _typed(names[key], value, f"{source}: {key}") for key, value in values.items()}


def load_yaml(path: str) -> dict[str, Any]:
    """The options of a YAML file, typed (`from_mapping`); one-line errors for unreadable or malformed files."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config file not found: {file}")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise InputError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InputError(f"{file}: not valid YAML: {getattr(exc, 'problem', None) or exc}{where}") from None
    if not isinstance(values, dict):
        raise InputError(f"{file}: a YAML mapping of option: value is expected")
    return from_mapping(values, str(file))
