"""`python -m udon_fast.data verify --data-root DIR` and `python -m udon_fast.data builtin --out DIR`."""
import argparse
import sys

from .builtin import write_builtin
from .errors import DatasetError
from .uned import load_domains
from .verify import verify_domains


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 bad images, 2 unusable dataset or arguments)."""
    parser = argparse.ArgumentParser(prog="python -m udon_fast.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check that the dataset validates and every image decodes")
    verify.add_argument("--data-root", required=True, help="UnED root with info_files/ and images/")
    verify.add_argument("--domains", nargs="+", help="domains to check (default: all)")
    verify.add_argument("--workers", type=int, default=None, help="decoding threads (default: all cores)")
    builtin = commands.add_parser("builtin", help="write the built-in multi-domain dataset (UnED layout)")
    builtin.add_argument("--out", required=True, help="new or empty folder to write into")
    builtin.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.command == "builtin":
            summary = write_builtin(args.out, args.seed)
            for domain, splits in summary.items():
                print(f"{domain}: " + ", ".join(f"{split} {n}" for split, n in splits.items()))
            print(f"wrote the built-in dataset to {args.out}")
            return 0
        report = verify_domains(load_domains(args.data_root, args.domains), workers=args.workers)
    except (DatasetError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
