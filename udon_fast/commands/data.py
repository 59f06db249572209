"""`python -m udon_fast.data verify --data-root DIR`, `python -m udon_fast.data builtin --out DIR` and
`python -m udon_fast.data shard (--data-root DIR | --folder NAME=DIR ...) --out SHARDS [--shard-size 256MB]`."""

import argparse
import sys
from pathlib import Path

from ..checks import check_positive
from ..config import parse_folders
from ..data.builtin import write_builtin
from ..data.folder_split import load_domains_with_splits
from ..data.image_bytes import set_max_pixels
from ..data.shards import parse_size, write_shards
from ..data.verify import POLICIES, verify_dataset
from ..errors import InputError
from ..files.outputs import atomic_write_text
from .cli import (
    add_data_threads,
    add_folder,
    add_max_pixels,
    add_split_seed,
    add_subcommand,
    command_parser,
    run_command,
    subcommands,
)


def _verify(args) -> int:
    report = verify_dataset(
        args.data_root, args.domains, workers=args.data_threads, policy=args.on_bad, progress=not args.json
    )
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
        print(
            f"udon_fast.data: error: {len(report.missing)} image file(s) listed are missing or unreadable",
            file=sys.stderr,
        )
    return report.exit_code


def _shard(args) -> int:
    folders = parse_folders(args.folder)
    if args.data_root is None and not folders:
        raise InputError("shard: give --data-root DIR (a UnED root) and/or --folder NAME=DIR")
    size = parse_size(args.shard_size)
    domains, records = load_domains_with_splits(args.data_root, args.domains, folders, args.split_seed)
    summary = write_shards(domains, args.out, size, records, progress=sys.stderr.isatty())
    for domain, splits in summary.items():
        print(f"{domain}: " + ", ".join(f"{split} {n}" for split, n in splits.items()))
    print(f"wrote the shards and their index to {args.out} (train and evaluate with --data-root {args.out})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m udon_fast.data", __doc__)
    commands = subcommands(parser)
    verify = add_subcommand(commands, "verify", "check that the dataset validates and every image decodes")
    data = verify.add_argument_group("data")
    data.add_argument("--data-root", required=True, help="UnED root with info_files/ and images/")
    data.add_argument("--domains", nargs="+", help="domains to check (default: all)")
    add_max_pixels(data)
    add_data_threads(data, None, ("--workers",), "CPU threads that read and decode images (default: all cores)")
    check = verify.add_argument_group("check and report")
    check.add_argument(
        "--on-bad",
        choices=POLICIES,
        default="fail",
        help="fail: every missing or undecodable file fails (exit 1); warn: an undecodable file "
        "listed only by train splits is a warning (training skips it); missing files and "
        "undecodable evaluation images still fail",
    )
    check.add_argument("--json", action="store_true", help="print a machine-readable JSON report")
    check.add_argument("--report", help="write the full listing (or the JSON) to this file instead of stdout")
    builtin = add_subcommand(commands, "builtin", "write the built-in multi-domain dataset (UnED layout)")
    options = builtin.add_argument_group("output")
    options.add_argument("--out", required=True, help="new or empty folder to write into")
    options.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")
    shard = add_subcommand(
        commands,
        "shard",
        "write a dataset as webdataset tar shards plus an index; --data-root "
        "SHARDS then trains and evaluates from them",
    )
    data = shard.add_argument_group("data")
    data.add_argument("--data-root", help="UnED root (info_files/, images/) to shard")
    add_folder(
        data,
        "a folder-per-class domain to shard (repeatable); without test/val folders its seeded class "
        "split (--split-seed) is made now and stored in the shards",
    )
    data.add_argument("--domains", nargs="+", help="UnED domains to shard (default: all)")
    add_split_seed(data, "class split of --folder domains (default 0)")
    output = shard.add_argument_group("output")
    output.add_argument("--out", required=True, help="new or empty folder for the shards")
    output.add_argument(
        "--shard-size",
        default="256MB",
        help="largest tar file, e.g. 256MB (default), 1GB, 64MiB; a shard holds at least one image",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (docs/cli.md): 0 ok, 1 missing or undecodable images, 2 an unusable
    dataset or bad arguments."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args), "udon_fast.data")


def _run(args: argparse.Namespace) -> int:
    if args.command == "shard":
        return _shard(args)
    if args.command == "builtin":
        summary = write_builtin(args.out, args.seed)
        for domain, splits in summary.items():
            print(f"{domain}: " + ", ".join(f"{split} {n}" for split, n in splits.items()))
        print(f"wrote the built-in dataset to {args.out}")
        return 0
    if args.data_threads is not None:
        check_positive(args, "data_threads")
    set_max_pixels(args.max_pixels)
    if args.report and Path(args.report).is_dir():
        raise InputError(f"--report {args.report} is a folder; name a file")
    return _verify(args)


if __name__ == "__main__":
    sys.exit(main())
