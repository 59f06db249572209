"""`python -m udon_fast.evaluate`: UnED kNN evaluation; writes results.json/.csv/.md.

    python -m udon_fast.evaluate --checkpoint CKPT [--data-root DIR] [--folder NAME=DIR ...] --out DIR
                                 [--gallery K [--gallery-baseline FILE|packaged]]
    python -m udon_fast.evaluate --backbone NAME --pretrained FILE|packaged [--image-size S]
                                 [--data-root DIR] [--folder NAME=DIR ...] --out DIR

With --checkpoint: a trained UDON model (student and teacher embeddings); its domains are read from
--data-root (default: the built-in dataset unless --folder is given) and the --folder domains,
which reuse the class split recorded in the checkpoint.  With --backbone: the off-the-shelf
baseline, the pretrained backbone's own L2-normalised pooled features, as the "student" embedding
(no teacher), on every domain given.

`torchrun --nproc_per_node N -m udon_fast.evaluate ...` embeds on all N ranks (results identical).
A class-parallel checkpoint (its manifest, checkpoints/last.pt or best.pt) evaluates like any other:
embedding needs no classifier rows.

--gallery K also writes OUT/gallery/index.html and a page per domain: a seeded sample of K queries
with their top-5 in the merged index, marked correct or wrong (`udon_fast.gallery`).  With
--gallery-baseline the checkpoint's backbone off the shelf (with those weights) searches the same
queries, and each page adds the queries the trained model gets right at rank 1 and the backbone wrong,
and the reverse.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from .. import distributed
from ..checks import check_positive
from ..config import parse_folders
from ..data import default_data_root, load_domains_with_splits
from ..data.decoders import DECODERS
from ..data.image_bytes import set_max_pixels
from ..errors import InputError
from ..evaluation.protocol import COUNTS, EMBEDDINGS, INDEX_MODES, METRICS, evaluate_model
from ..evaluation.results import results_table
from ..files.outputs import atomic_write_text, check_writable_folder, writing
from ..gallery import merged_search, write_gallery
from ..model import backbone_embedder, load_model
from ..retrieval.knn import NO_POSITIVE_MODES
from .cli import (
    add_batch_size,
    add_checkpoint,
    add_data_threads,
    add_decoder,
    add_folder,
    add_max_pixels,
    add_split_seed,
    command_parser,
    run_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m udon_fast.evaluate", __doc__)
    what = parser.add_argument_group("model (one of --checkpoint, --backbone)")
    model = what.add_mutually_exclusive_group(required=True)
    add_checkpoint(model)
    model.add_argument("--backbone", help="timm backbone name: evaluate its pretrained features (no checkpoint)")
    what.add_argument("--pretrained", help="with --backbone: weights file, 'packaged' or 'none'")
    what.add_argument("--image-size", type=int, help="with --backbone: image side (default: 224)")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-root", help="UnED root (info_files/, images/); default: the built-in dataset unless --folder is given"
    )
    add_folder(data, "a folder-per-class domain (repeatable); see python -m udon_fast.train --help")
    add_split_seed(data, "class split of --folder domains the checkpoint has no record of (default 0)")
    data.add_argument("--split", choices=("test", "val"), default="test", help="the split to evaluate (default test)")
    add_max_pixels(data)
    add_data_threads(data)
    add_decoder(data, DECODERS)
    search = parser.add_argument_group("search and metrics")
    search.add_argument(
        "--index",
        choices=INDEX_MODES,
        default="both",
        help="merged: one index of every domain's images (the UnED protocol); separate: one per domain; both (default)",
    )
    search.add_argument(
        "--embedding",
        choices=EMBEDDINGS,
        help="default: both for a checkpoint (student only on domains it has no teacher for), student for --backbone",
    )
    search.add_argument(
        "--no-positive",
        choices=NO_POSITIVE_MODES,
        default="miss",
        help="queries without a relevant index item: 'miss' counts them as misses in every "
        "mean (the official UnED metric, default); 'exclude' leaves them out of the means",
    )
    add_batch_size(search, 128)
    output = parser.add_argument_group("output")
    output.add_argument("--out", required=True, help="output folder (results.json, results.csv, results.md)")
    output.add_argument(
        "--gallery",
        type=int,
        metavar="K",
        help="write OUT/gallery/: per domain K sampled queries with their top-5 neighbours",
    )
    output.add_argument("--gallery-seed", type=int, default=0, help="seed of the gallery's query sample")
    output.add_argument(
        "--gallery-baseline",
        metavar="FILE|packaged",
        help="with --checkpoint and --gallery: weights of the checkpoint's backbone off the shelf; "
        "the pages then show where the trained model and the backbone disagree at rank 1",
    )
    return parser


def write_csv(path: Path, results: dict) -> None:
    """One row per (embedding, index, domain), the mean last: P@1, mMP@5, the number of queries and
    of queries without a positive (sums on the mean row), and the no_positive rule."""
    columns = [*METRICS, *COUNTS]
    with writing(path), path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["embedding", "index", "domain", *columns, "no_positive"])
        for embedding, by_index in results.items():
            for index, leaf in by_index.items():
                rule = leaf["mean"]["no_positive"]
                for domain, metrics in leaf.items():
                    writer.writerow([embedding, index, domain, *(metrics[c] for c in columns), rule])


def _load(args, device: torch.device):
    """(model, domains, embedding, title) for the arguments; InputError or OSError on bad input."""
    folders = parse_folders(args.folder)
    data_root = default_data_root(args.data_root, folders)
    if args.backbone:
        if args.embedding not in (None, "student"):
            raise InputError("--backbone has no teacher embedding: use --embedding student (the default)")
        size = args.image_size or 224
        domains, _ = load_domains_with_splits(data_root, None, folders, args.split_seed)
        model = backbone_embedder(args.backbone, args.pretrained, size).to(device)
        title = f"backbone {args.backbone} (pretrained {args.pretrained or 'none'}, {size} px)"
        return model, domains, "student", title
    if args.pretrained or args.image_size:
        raise InputError("--pretrained and --image-size go with --backbone; a checkpoint brings its own")
    model, checkpoint = load_model(args.checkpoint, map_location=device)
    uned = [d for d in model.domains if d not in folders] if data_root is not None else None
    domains, _ = load_domains_with_splits(
        data_root, uned, folders, args.split_seed, checkpoint["config"].get("folder_splits")
    )
    unknown = sorted(set(domains) - set(model.domains))
    embedding = args.embedding or ("student" if unknown else "both")
    if unknown and embedding != "student":
        raise InputError(
            f"--embedding {embedding}: the checkpoint has no teacher for domain(s) {unknown}; use --embedding student"
        )
    return model, domains, embedding, args.checkpoint


def _check_gallery(args) -> None:
    """The --gallery options go together (InputError naming them)."""
    if args.gallery is None:
        if args.gallery_baseline:
            raise InputError("--gallery-baseline goes with --gallery K")
        return
    check_positive(args, "gallery")
    if args.embedding == "teacher":
        raise InputError("--gallery shows the universal (student) embedding's search: drop --embedding teacher")
    if args.gallery_baseline and not args.checkpoint:
        raise InputError(
            "--gallery-baseline compares a --checkpoint with its backbone off the shelf; --backbone "
            "already evaluates the backbone itself"
        )


def _gallery(args, model, domains, sets, title: str, ranks: distributed.Ranks) -> None:
    """OUT/gallery (see the module docstring); with --gallery-baseline the backbone is embedded too
    (every rank takes part; rank 0 writes)."""
    baseline = None
    if args.gallery_baseline:
        config = model.config
        backbone = backbone_embedder(config["backbone_name"], args.gallery_baseline, config["image_size"]).to(
            ranks.device
        )
        baseline_sets = {}
        evaluate_model(
            backbone,
            domains,
            args.split,
            index="merged",
            embedding="student",
            batch_size=args.batch_size,
            device=ranks.device,
            num_threads=args.data_threads,
            progress=ranks.is_main,
            distributed=ranks.world_size > 1,
            no_positive=args.no_positive,
            decoder=args.decoder,
            embeddings=baseline_sets,
        )
        if ranks.is_main:
            baseline = merged_search(domains, args.split, baseline_sets)
    if ranks.is_main:
        write_gallery(
            Path(args.out) / "gallery",
            merged_search(domains, args.split, sets),
            args.gallery,
            title=f"{title} ({args.split} split)",
            baseline=baseline,
            seed=args.gallery_seed,
        )


def main(argv: list[str] | None = None) -> int:
    """Under `torchrun --nproc_per_node N` every rank embeds a share of each set; rank 0 searches and writes.
    Exit code (docs/cli.md): 0 done, 2 bad options or input."""
    args = build_parser().parse_args(argv)
    ranks = distributed.setup()
    try:
        return run_command(lambda: _evaluate(args, ranks), "udon_fast.evaluate")
    finally:
        distributed.teardown()


def _evaluate(args: argparse.Namespace, ranks: distributed.Ranks) -> int:
    set_max_pixels(args.max_pixels)
    check_positive(args, "batch_size", "data_threads")
    _check_gallery(args)
    model, domains, embedding, title = _load(args, ranks.device)
    out = check_writable_folder(args.out, "--out")
    sets = {}
    results = evaluate_model(
        model,
        domains,
        args.split,
        index=args.index,
        embedding=embedding,
        batch_size=args.batch_size,
        device=ranks.device,
        num_threads=args.data_threads,
        progress=ranks.is_main,
        distributed=ranks.world_size > 1,
        no_positive=args.no_positive,
        decoder=args.decoder,
        embeddings=sets,
    )
    if args.gallery:
        _gallery(args, model, domains, sets, title, ranks)
    if not ranks.is_main:
        return 0
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True))
    write_csv(out / "results.csv", results)
    markdown = f"# UnED evaluation of {title} ({args.split} split)\n\nMetrics in %, k = 5.\n\n" + results_table(
        {"final": results}
    )
    atomic_write_text(out / "results.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
