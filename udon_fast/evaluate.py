"""`python -m udon_fast.evaluate`: UnED kNN evaluation of a checkpoint; writes results.json/.csv/.md.

`torchrun --nproc_per_node N -m udon_fast.evaluate ...` embeds on all N ranks (results identical).
A class-parallel checkpoint (its manifest, checkpoints/last.pt or best.pt) evaluates like any other:
embedding needs no classifier rows."""
import argparse
import csv
import json
import sys
from pathlib import Path

from .data import ensure_builtin, load_domains
from .evaluation import EMBEDDINGS, INDEX_MODES, evaluate_model
from .model import load_model
from .trainer import distributed
from .trainer.report import results_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m udon_fast.evaluate", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="a udon_fast checkpoint (.pt)")
    parser.add_argument("--data-root", help="UnED root (info_files/, images/); default: the built-in dataset")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--index", choices=INDEX_MODES, default="both")
    parser.add_argument("--embedding", choices=EMBEDDINGS, default="both")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="DALI CPU threads")
    return parser


def write_csv(path: Path, results: dict) -> None:
    """One row per (embedding, index, domain) with P@1 and mMP@5."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["embedding", "index", "domain", "p_at_1", "mmp_at_5"])
        for embedding, by_index in results.items():
            for index, leaf in by_index.items():
                for domain, metrics in leaf.items():
                    writer.writerow([embedding, index, domain, metrics["p_at_1"], metrics["mmp_at_5"]])


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
        model, _ = load_model(args.checkpoint, map_location=ranks.device)
        data_root = args.data_root or ensure_builtin()
        domains = load_domains(data_root, list(model.domains))
    except (FileNotFoundError, ValueError) as exc:
        print(f"udon_fast.evaluate: error: {exc}", file=sys.stderr)
        return 1
    results = evaluate_model(model, domains, args.split, index=args.index, embedding=args.embedding,
                             batch_size=args.batch_size, device=ranks.device, num_threads=args.threads,
                             progress=ranks.is_main, distributed=ranks.world_size > 1)
    if not ranks.is_main:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
    write_csv(out / "results.csv", results)
    markdown = (f"# UnED evaluation of {args.checkpoint} ({args.split} split)\n\nMetrics in %, k = 5.\n\n"
                + results_table({"final": results}))
    (out / "results.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
