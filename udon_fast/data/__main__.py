"""`python -m udon_fast.data verify --data-root DIR`, `python -m udon_fast.data builtin --out DIR` and
`python -m udon_fast.data shard (--data-root DIR | --folder NAME=DIR ...) --out SHARDS [--shard-size 256MB]`."""
import argparse
import sys
from pathlib import Path

from ..cli import add_max_pixels, check_positive
from ..config import parse_folders
from ..output_files import OutputError, atomic_write_text
from .builtin import write_builtin
from .errors import DatasetError
from .folder_split import load_domains_with_splits
from .image_bytes import set_max_pixels
from .shards import parse_size, write_shards
from .verify import POLICIES, verify_dataset


def _verify(args) -> int:
    report = verify_dataset(args.data_root, args.domains, workers=args.workers, policy=args.on_bad,
                            progress=not args.json)
    listing = report.to_json() if args.json else "\n".join([report.summary(), *report.lines()])
    if args.report:
        atomic_write_text(args.report, listing + "\n", "--report")
        if args.json:
            print(f"report written to {args.report}")
        else:
            print(f"{report.summary()}\nevery missing or undecodable file is listed in {args.report}")
    else:
        print(listing)
    if report.missing:
        print(f"udon_fast.data: error: {len(report.missing)} image file(s) listed are missing or unreadable",
              file=sys.stderr)
    return report.exit_code


def _shard(args) -> int:
    folders = parse_folders(args.folder)
    if args.data_root is None and not folders:
        raise ValueError("shard: give --data-root DIR (a UnED root) and/or --folder NAME=DIR")
    size = parse_size(args.shard_size)
    domains, records = load_domains_with_splits(args.data_root, args.domains, folders, args.split_seed)
    summary = write_shards(domains, args.out, size, records, progress=sys.stderr.isatty())
    for domain, splits in summary.items():
        print(f"{domain}: " + ", ".join(f"{split} {n}" for split, n in splits.items()))
    print(f"wrote the shards and their index to {args.out} (train and evaluate with --data-root {args.out})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 undecodable images, 2 missing images, an unusable
    dataset or bad arguments)."""
    parser = argparse.ArgumentParser(prog="python -m udon_fast.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check that the dataset validates and every image decodes")
    verify.add_argument("--data-root", required=True, help="UnED root with info_files/ and images/")
    verify.add_argument("--domains", nargs="+", help="domains to check (default: all)")
    verify.add_argument("--workers", type=int, default=None, help="decoding threads (default: all cores)")
    verify.add_argument("--json", action="store_true", help="print a machine-readable JSON report")
    verify.add_argument("--report", help="write the full listing (or the JSON) to this file instead of stdout")
    verify.add_argument("--on-bad", choices=POLICIES, default="fail",
                        help="fail: every missing or undecodable file fails (exit 1, 2 if any is missing); "
                             "warn: an undecodable file listed only by train splits is a warning (training "
                             "skips it); missing files and undecodable evaluation images still fail")
    add_max_pixels(verify)
    builtin = commands.add_parser("builtin", help="write the built-in multi-domain dataset (UnED layout)")
    builtin.add_argument("--out", required=True, help="new or empty folder to write into")
    builtin.add_argument("--seed", type=int, default=0)
    shard = commands.add_parser("shard", help="write a dataset as webdataset tar shards plus an index; "
                                              "--data-root SHARDS then trains and evaluates from them")
    shard.add_argument("--data-root", help="UnED root (info_files/, images/) to shard")
    shard.add_argument("--folder", action="append", metavar="NAME=DIR",
                       help="a folder-per-class domain to shard (repeatable); without test/val folders its "
                            "seeded class split (--split-seed) is made now and stored in the shards")
    shard.add_argument("--domains", nargs="+", help="UnED domains to shard (default: all)")
    shard.add_argument("--split-seed", type=int, default=0, help="class split of --folder domains (default 0)")
    shard.add_argument("--out", required=True, help="new or empty folder for the shards")
    shard.add_argument("--shard-size", default="256MB",
                       help="largest tar file, e.g. 256MB (default), 1GB, 64MiB; a shard holds at least one image")
    args = parser.parse_args(argv)
    try:
        if args.command == "shard":
            return _shard(args)
        if args.command == "builtin":
            summary = write_builtin(args.out, args.seed)
            for domain, splits in summary.items():
                print(f"{domain}: " + ", ".join(f"{split} {n}" for split, n in splits.items()))
            print(f"wrote the built-in dataset to {args.out}")
            return 0
        if args.workers is not None:
            check_positive(args, "workers")
        set_max_pixels(args.max_pixels)
        if args.report and Path(args.report).is_dir():
            raise ValueError(f"--report {args.report} is a folder; name a file")
        return _verify(args)
    except (DatasetError, FileExistsError, OutputError, ValueError) as exc:
        print(f"udon_fast.data: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
