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

from .cli import add_max_pixels, check_positive
from .config import parse_folders
from .data import default_data_root, load_domains_with_splits
from .data.decoders import DECODERS
from .data.image_bytes import set_max_pixels
from .evaluation import COUNTS, EMBEDDINGS, INDEX_MODES, METRICS, evaluate_model
from .gallery import merged_search, write_gallery
from .knn import NO_POSITIVE_MODES
from .model import backbone_embedder, load_model
from .output_files import atomic_write_text, check_writable_folder, writing
from .trainer import distributed
from .trainer.report import results_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m udon_fast.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a udon_fast checkpoint (.pt)")
    model.add_argument("--backbone", help="timm backbone name: evaluate its pretrained features (no checkpoint)")
    parser.add_argument("--pretrained", help="with --backbone: weights file, 'packaged' or 'none'")
    parser.add_argument("--image-size", type=int, help="with --backbone: image side (default: 224)")
    parser.add_argument("--data-root", help="UnED root (info_files/, images/); default: the built-in dataset "
                                            "unless --folder is given")
    parser.add_argument("--folder", action="append", metavar="NAME=DIR",
                        help="a folder-per-class domain (repeatable); see python -m udon_fast.train --help")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="class split of --folder domains the checkpoint has no record of (default 0)")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    add_max_pixels(parser)
    parser.add_argument("--index", choices=INDEX_MODES, default="both")
    parser.add_argument("--embedding", choices=EMBEDDINGS,
                        help="default: both for a checkpoint (student only on domains it has no teacher for), "
                             "student for --backbone")
    parser.add_argument("--no-positive", choices=NO_POSITIVE_MODES, default="miss",
                        help="queries without a relevant index item: 'miss' counts them as misses in every "
                             "mean (the official UnED metric, default); 'exclude' leaves them out of the means")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="image decoding CPU threads")
    parser.add_argument("--decoder", choices=DECODERS, default="dali",
                        help="image decoder (torchvision: without DALI; the fastest on CPUs)")
    parser.add_argument("--gallery", type=int, metavar="K",
                        help="write OUT/gallery/: per domain K sampled queries with their top-5 neighbours")
    parser.add_argument("--gallery-seed", type=int, default=0, help="seed of the gallery's query sample")
    parser.add_argument("--gallery-baseline", metavar="FILE|packaged",
                        help="with --checkpoint and --gallery: weights of the checkpoint's backbone off the shelf; "
                             "the pages then show where the trained model and the backbone disagree at rank 1")
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
    """(model, domains, embedding, title) for the arguments; ValueError/FileNotFoundError on bad input."""
    folders = parse_folders(args.folder)
    data_root = default_data_root(args.data_root, folders)
    if args.backbone:
        if args.embedding not in (None, "student"):
            raise ValueError("--backbone has no teacher embedding: use --embedding student (the default)")
        size = args.image_size or 224
        domains, _ = load_domains_with_splits(data_root, None, folders, args.split_seed)
        model = backbone_embedder(args.backbone, args.pretrained, size).to(device)
        title = f"backbone {args.backbone} (pretrained {args.pretrained or 'none'}, {size} px)"
        return model, domains, "student", title
    if args.pretrained or args.image_size:
        raise ValueError("--pretrained and --image-size go with --backbone; a checkpoint brings its own")
    model, checkpoint = load_model(args.checkpoint, map_location=device)
    uned = [d for d in model.domains if d not in folders] if data_root is not None else None
    domains, _ = load_domains_with_splits(data_root, uned, folders, args.split_seed,
                                          checkpoint["config"].get("folder_splits"))
    unknown = sorted(set(domains) - set(model.domains))
    embedding = args.embedding or ("student" if unknown else "both")
    if unknown and embedding != "student":
        raise ValueError(f"--embedding {embedding}: the checkpoint has no teacher for domain(s) {unknown}; "
                         f"use --embedding student")
    return model, domains, embedding, args.checkpoint


def _check_gallery(args) -> None:
    """The --gallery options go together (ValueError naming them)."""
    if args.gallery is None:
        if args.gallery_baseline:
            raise ValueError("--gallery-baseline goes with --gallery K")
        return
    check_positive(args, "gallery")
    if args.embedding == "teacher":
        raise ValueError("--gallery shows the universal (student) embedding's search: drop --embedding teacher")
    if args.gallery_baseline and not args.checkpoint:
        raise ValueError("--gallery-baseline compares a --checkpoint with its backbone off the shelf; --backbone "
                         "already evaluates the backbone itself")


def _gallery(args, model, domains, sets, title: str, ranks: distributed.Ranks) -> None:
    """OUT/gallery (see the module docstring); with --gallery-baseline the backbone is embedded too
    (every rank takes part; rank 0 writes)."""
    baseline = None
    if args.gallery_baseline:
        config = model.config
        backbone = backbone_embedder(config["backbone_name"], args.gallery_baseline,
                                     config["image_size"]).to(ranks.device)
        baseline_sets = {}
        evaluate_model(backbone, domains, args.split, index="merged", embedding="student",
                       batch_size=args.batch_size, device=ranks.device, num_threads=args.threads,
                       progress=ranks.is_main, distributed=ranks.world_size > 1, no_positive=args.no_positive,
                       decoder=args.decoder, embeddings=baseline_sets)
        if ranks.is_main:
            baseline = merged_search(domains, args.split, baseline_sets)
    if ranks.is_main:
        write_gallery(Path(args.out) / "gallery", merged_search(domains, args.split, sets), args.gallery,
                      title=f"{title} ({args.split} split)", baseline=baseline, seed=args.gallery_seed)


def main(argv: list[str] | None = None) -> int:
    """Under `torchrun --nproc_per_node N` every rank embeds a share of each set; rank 0 searches and writes."""
    args = build_parser().parse_args(argv)
    ranks = distributed.setup()
    try:
        return _evaluate(args, ranks)
    finally:
        distributed.teardown()


def _evaluate(args: argparse.Namespace, ranks: distributed.Ranks) -> int:
    try:
        set_max_pixels(args.max_pixels)
        check_positive(args, "batch_size", "threads")
        _check_gallery(args)
        model, domains, embedding, title = _load(args, ranks.device)
        out = check_writable_folder(args.out, "--out")
        sets = {}
        results = evaluate_model(model, domains, args.split, index=args.index, embedding=embedding,
                                 batch_size=args.batch_size, device=ranks.device, num_threads=args.threads,
                                 progress=ranks.is_main, distributed=ranks.world_size > 1,
                                 no_positive=args.no_positive, decoder=args.decoder, embeddings=sets)
        if args.gallery:
            _gallery(args, model, domains, sets, title, ranks)
        if not ranks.is_main:
            return 0
        atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True))
        write_csv(out / "results.csv", results)
        markdown = (f"# UnED evaluation of {title} ({args.split} split)\n\nMetrics in %, k = 5.\n\n"
                    + results_table({"final": results}))
        atomic_write_text(out / "results.md", markdown)
    except (OSError, ValueError) as exc:  # bad files and options, unwritable --out: one line naming them
        print(f"udon_fast.evaluate: error: {exc}", file=sys.stderr)
        return 1
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
