"""`python -m udon_fast.evaluate`: UnED kNN evaluation of a checkpoint; writes results.json/.csv/.md."""
import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from .cli import check_positive
from .data import ensure_builtin, load_domains
from .evaluation import COUNTS, EMBEDDINGS, INDEX_MODES, METRICS, evaluate_model
from .knn import NO_POSITIVE_MODES
from .model import load_model
from .output_files import atomic_write_text, ensure_writable_folder, writing
from .trainer.report import results_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m udon_fast.evaluate", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a udon_fast checkpoint (.pt)")
    parser.add_argument("--data-root", help="UnED root (info_files/, images/); default: the built-in dataset")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--index", choices=INDEX_MODES, default="both")
    parser.add_argument("--embedding", choices=EMBEDDINGS, default="both")
    parser.add_argument("--no-positive", choices=NO_POSITIVE_MODES, default="miss",
                        help="queries without a relevant index item: 'miss' counts them as misses in every "
                             "mean (the official UnED metric, default); 'exclude' leaves them out of the means")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="DALI CPU threads")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_positive(args, "batch_size", "threads")
        model, _ = load_model(args.checkpoint, map_location=device)
        data_root = args.data_root or ensure_builtin()
        domains = load_domains(data_root, list(model.domains))
        out = ensure_writable_folder(args.out, "--out")
        results = evaluate_model(model, domains, args.split, index=args.index, embedding=args.embedding,
                                 batch_size=args.batch_size, device=device, num_threads=args.threads,
                                 no_positive=args.no_positive)
        atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True))
        write_csv(out / "results.csv", results)
        markdown = (f"# UnED evaluation of {args.checkpoint} ({args.split} split)\n\nMetrics in %, k = 5.\n\n"
                    + results_table({"final": results}))
        atomic_write_text(out / "results.md", markdown)
    except (OSError, ValueError) as exc:  # bad files and options, unwritable --out: one line naming them
        print(f"udon_fast.evaluate: error: {exc}", file=sys.stderr)
        return 1
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
