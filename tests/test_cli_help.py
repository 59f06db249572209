"""The one CLI convention (docs/cli.md): every flag of every command has help text and sits in an argument
group, old flag spellings still parse to the new destination with one deprecation line, every command's
--help ends with the exit codes, and an internal bug is never turned into a user-error line."""

import argparse
import subprocess
import sys

import numpy as np
import pytest

from udon_fast import config
from udon_fast.commands import ablate, embed, evaluate, export, index, info, replay, search, train
from udon_fast.commands import data as data_cli
from udon_fast.commands import serve as serve_cli
from udon_fast.commands.cli import EXIT_CODES, run_command
from udon_fast.errors import (
    CheckFailed,
    CheckpointError,
    CompileError,
    DataError,
    ExportCheckFailed,
    InputError,
    TrainingDiverged,
    UdonFastError,
)

COMMANDS = {
    "train": train.build_parser,
    "evaluate": evaluate.build_parser,
    "embed": embed.build_parser,
    "index": index.build_parser,
    "search": search.build_parser,
    "export": export.build_parser,
    "ablate": ablate.build_parser,
    "serve": serve_cli.build_parser,
    "data": data_cli.build_parser,
    "info": info.build_parser,
    "replay": replay.build_parser,
}
# Old spellings kept for one release: (command, argv with the old flag, destination, value parsed).
ALIASES = [
    ("evaluate", ["--checkpoint", "c.pt", "--out", "o", "--threads", "3"], "data_threads", 3),
    ("embed", ["--checkpoint", "c.pt", "--images", "i", "--out", "o.npy", "--threads", "3"], "data_threads", 3),
    ("search", ["--embeddings", "e.npy", "--query", "q.jpg", "--threads", "3"], "data_threads", 3),
    ("serve", ["--index", "g.faiss", "--threads", "3"], "data_threads", 3),
    ("data", ["verify", "--data-root", "r", "--workers", "3"], "data_threads", 3),
]


def _parsers(parser: argparse.ArgumentParser, name: str):
    """(name, parser) of `parser` and of each of its subcommands."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _all_parsers():
    return [pair for name, build in COMMANDS.items() for pair in _parsers(build(), name)]


def test_every_module_with_a_main_is_covered():
    from pathlib import Path

    import udon_fast

    package = Path(udon_fast.__file__).parent
    with_main = {
        str(p.relative_to(package).with_suffix("")).replace("/", ".").removesuffix(".__main__")
        for p in package.rglob("*.py")
        if "\ndef main(" in p.read_text(encoding="utf-8")
    }
    assert with_main == {f"commands.{name}" for name in COMMANDS}, with_main


@pytest.mark.parametrize("name,parser", _all_parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_flag_has_help_and_a_group(name, parser):
    flags = [a for a in parser._actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
    assert all(isinstance(a.help, str) and a.help.strip() for a in flags), [
        a.option_strings or a.dest for a in flags if not (a.help or "").strip()
    ]
    grouped = {
        id(a)
        for group in parser._action_groups
        if group.title not in ("options", "positional arguments")
        for a in group._group_actions
    }
    optional = [a for a in flags if a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    assert all(id(a) in grouped for a in optional), [a.option_strings for a in optional if id(a) not in grouped]
    if optional:
        assert len(parser._action_groups) > 2, f"{name}: no argument groups"
    assert parser.epilog.endswith(EXIT_CODES) and EXIT_CODES in parser.format_help()


def test_train_help_comes_from_the_config_fields():
    import dataclasses

    fields = dataclasses.fields(config.TrainConfig)
    assert all(f.metadata["help"].strip() and f.metadata["group"] for f in fields)
    helps = {}
    for action in train.build_parser()._actions:  # the first flag of a destination (--compile, not --no-compile)
        helps.setdefault(action.dest, action.help)
    assert [f.name for f in fields if helps[f.name] != f.metadata["help"]] == []


@pytest.mark.parametrize("command,argv,dest,value", ALIASES)
def test_old_spellings_parse_to_the_same_destination_with_one_deprecation_line(command, argv, dest, value, capsys):
    parser = COMMANDS[command]()
    old = parser.parse_args(argv)
    assert getattr(old, dest) == value
    err = capsys.readouterr().err
    old_flag = next(a for a in argv if a in ("--threads", "--workers"))
    assert err.count("\n") == 1 and f"{old_flag} is deprecated" in err and "use --data-threads" in err
    new = parser.parse_args([("--data-threads" if a == old_flag else a) for a in argv])
    assert vars(new) == vars(old) and capsys.readouterr().err == ""
    assert old_flag not in parser.format_help().replace(old_flag + "-", "")


def test_the_hierarchy_keeps_the_old_bases():
    from udon_fast.ablation.grid import GridError
    from udon_fast.data.errors import DatasetError, InfoFileError
    from udon_fast.files.outputs import OutputError
    from udon_fast.files.run_lock import FolderInUse
    from udon_fast.model.checkpoint import CheckpointError as checkpoint_error
    from udon_fast.model.export import ExportCheckFailed as exported
    from udon_fast.model.weights import WeightsError
    from udon_fast.retrieval.index import IndexFileError
    from udon_fast.trainer.loop import TrainingDiverged as diverged
    from udon_fast.trainer.step import CompileError as compile_error

    for cls in (GridError, DatasetError, InfoFileError, IndexFileError, WeightsError, checkpoint_error, InputError):
        assert issubclass(cls, InputError) and issubclass(cls, ValueError), cls
    assert issubclass(DatasetError, DataError) and issubclass(WeightsError, CheckpointError)
    assert issubclass(OutputError, OSError) and issubclass(FolderInUse, UdonFastError)
    assert diverged is TrainingDiverged and compile_error is CompileError and exported is ExportCheckFailed
    for cls in (TrainingDiverged, CompileError, ExportCheckFailed):
        assert issubclass(cls, CheckFailed) and cls.exit_code == 1
    assert issubclass(TrainingDiverged, RuntimeError) and InputError.exit_code == 2
    import udon_fast

    assert udon_fast.UdonFastError is UdonFastError and udon_fast.InputError is InputError


@pytest.mark.parametrize(
    "raised,code,line",
    [
        (InputError("--x must be >= 1, got 0"), 2, "prog: error: --x must be >= 1, got 0\n"),
        (TrainingDiverged("non-finite loss at step 3"), 1, "prog: error: non-finite loss at step 3\n"),
        (
            FileNotFoundError(2, "No such file or directory", "a.jpg"),
            2,
            "prog: error: [Errno 2] No such file or directory: 'a.jpg'\n",
        ),
        (KeyboardInterrupt(), 130, "prog: interrupted\n"),
    ],
)
def test_run_command_maps_project_errors_to_one_line(raised, code, line, capsys):
    def body():
        raise raised

    assert run_command(body, "prog") == code
    assert capsys.readouterr().err == line


@pytest.mark.parametrize("bug", [ValueError("an internal shape mismatch"), RuntimeError("oops"), KeyError("k")])
def test_a_bug_keeps_its_traceback(bug, tmp_path, monkeypatch, capsys):
    """A plain ValueError (or any non-project error) raised inside a command is a bug: it keeps its
    traceback and exits 70, not the 1 or 2 of a failed check or a user mistake."""
    vectors = tmp_path / "e.npy"
    np.save(vectors, np.eye(4, dtype=np.float32))

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(index, "build", broken)
    assert index.main(["build", "--embeddings", str(vectors), "--out", str(tmp_path / "g.faiss")]) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and type(bug).__name__ in err and "in broken" in err


def test_a_bug_in_a_process_exits_70_with_its_traceback(tmp_path):
    code = (
        "import sys; from udon_fast.commands import search\n"
        "def broken(*a, **k): raise ValueError('not a user mistake')\n"
        "search.open_gallery = broken\n"
        f"sys.exit(search.main(['--embeddings', {str(tmp_path / 'e.npy')!r}, '--query', 'q.jpg']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 70
    assert "Traceback" in result.stderr and "ValueError: not a user mistake" in result.stderr
    assert "udon_fast.search: error:" not in result.stderr
