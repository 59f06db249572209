"""What every command line shares (docs/cli.md): the parser factory, the shared flags, old spellings kept
as hidden aliases, and `run_command`, the one error wrapper with the one set of exit codes."""

import argparse
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from ..data.decoders import DATA_THREADS_HELP
from ..data.image_bytes import DEFAULT_MAX_PIXELS, MAX_PIXELS_HELP
from ..errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_USAGE, UdonFastError

EXIT_CODES = """exit codes (the same for every command, docs/cli.md):
  0    done
  1    a check or the run failed (a diverged run, a failed export check, a dataset check that finds bad files)
  2    bad options or input: a flag, a field, a file that cannot be read or written (one line names it)
  70   a bug in udon_fast: the traceback is printed (please report it)
  130  interrupted (Ctrl-C)"""

DEPRECATED = "{prog}: warning: {old} is deprecated and goes in the next release; use {new}"


def command_parser(
    prog: str, description: str | None, epilog: str | None = None, **options: Any
) -> argparse.ArgumentParser:
    """The parser of `python -m udon_fast.<command>`: the description kept as written, `epilog` and then the
    exit codes at the end of --help; `options` go to ArgumentParser (e.g. allow_abbrev)."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="\n\n".join(filter(None, (epilog, EXIT_CODES))),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **options,
    )


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The subcommands of `parser` (`python -m udon_fast.<command> NAME ...`), listed under "commands"; add
    each with `add_subcommand`."""
    return parser.add_subparsers(
        dest="command", required=True, title="commands", help=f"what to do ({parser.prog} COMMAND --help for its flags)"
    )


def add_subcommand(commands, name: str, summary: str) -> argparse.ArgumentParser:
    """The parser of `python -m udon_fast.<command> NAME` in `commands` (`subcommands`): `summary` as its
    help line and description, the exit codes at the end of its --help."""
    return commands.add_parser(
        name, help=summary, description=summary, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter
    )


class _DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: hidden from --help; stores into the new flag's destination and prints one
    deprecation line to stderr."""

    def __init__(self, option_strings: list[str], dest: str, canonical: str = "", **kwargs: Any):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.canonical = canonical

    def __call__(self, parser, namespace, values, option_string=None):
        prog = parser.prog.removeprefix("python -m ")  # udon_fast.<command>, as the error lines say
        print(DEPRECATED.format(prog=prog, old=option_string, new=self.canonical), file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_aliases(parser, canonical: str, dest: str, aliases: Iterable[str], **kwargs: Any) -> None:
    """Old spellings `aliases` of the flag `canonical` (destination `dest`), taking values as `kwargs` say
    (type, nargs...): they still work for one release, each use printing a deprecation line."""
    for alias in aliases:
        parser.add_argument(alias, dest=dest, action=_DeprecatedAlias, canonical=canonical, **kwargs)


def add_data_threads(
    parser, default: int | None = 2, aliases: Iterable[str] = ("--threads",), help: str = DATA_THREADS_HELP
) -> None:
    """`--data-threads N`: the image reading and decoding threads (every command that reads images; the
    name of TrainConfig's field).  `aliases`: the command's old spellings (--threads, --workers)."""
    parser.add_argument("--data-threads", type=int, default=default, metavar="N", help=help.format(default=default))
    add_aliases(parser, "--data-threads", "data_threads", aliases, type=int)


def add_max_pixels(parser) -> None:
    """`--max-pixels N` (default `image_bytes.DEFAULT_MAX_PIXELS`); apply it with `image_bytes.set_max_pixels`."""
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N", help=MAX_PIXELS_HELP)


def add_decoder(parser, choices: Iterable[str]) -> None:
    """`--decoder {dali,torchvision}` (default dali)."""
    parser.add_argument(
        "--decoder",
        choices=tuple(choices),
        default="dali",
        help="image decoder: dali (default; torchvision when DALI is not installed) or torchvision "
        "(the fastest on CPUs); the same pixels either way",
    )


def add_batch_size(parser, default: int, what: str = "images embedded per batch") -> None:
    parser.add_argument("--batch-size", type=int, default=default, metavar="N", help=f"{what} (default {default})")


def add_checkpoint(parser, help: str = "a udon_fast checkpoint (.pt)", required: bool = False) -> None:
    parser.add_argument("--checkpoint", required=required, metavar="CKPT", help=help)


def add_index_file(parser, required: bool = True) -> None:
    parser.add_argument(
        "--index",
        required=required,
        metavar="GALLERY.faiss",
        help="index file written by python -m udon_fast.index build",
    )


def add_split_seed(parser, help: str) -> None:
    parser.add_argument("--split-seed", type=int, default=0, metavar="SEED", help=help)


def add_folder(parser, help: str) -> None:
    parser.add_argument("--folder", action="append", metavar="NAME=DIR", help=help)


def run_command(main_fn: Callable[[], int], prog: str) -> int:
    """Run a command's body `main_fn` and return its exit code (`EXIT_CODES`): its own (0 done, 1 a failed
    check); for a `UdonFastError` its `exit_code` and one line `PROG: error: MESSAGE`; for an OSError (a file
    that cannot be read or written; the message names it) the same line and 2; 130 on Ctrl-C.  Any other
    exception is a bug, not a user mistake: its traceback is printed and the code is 70 (sysexits'
    EX_SOFTWARE), never one a user mistake gets."""
    try:
        return main_fn()
    except UdonFastError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print(f"{prog}: internal error (a bug in udon_fast): the traceback above says where", file=sys.stderr)
        return EXIT_BUG
