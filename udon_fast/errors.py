"""The project's error classes: what a command reports in one line, and with which exit code.

    UdonFastError                  base; `exit_code` is what a command exits with
    ├── InputError (ValueError)    bad options, a bad input file or field: exit 2
    │   ├── DataError              a dataset that cannot be used as given (data/errors.py's classes)
    │   └── CheckpointError        a checkpoint or weights file that cannot be read or does not fit
    ├── MissingExtraError          an optional package is not installed (extras.py; ImportError too): exit 2
    └── CheckFailed                the work ran and a check failed: exit 1
        ├── TrainingDiverged       a non-finite loss (RuntimeError too)
        ├── CompileError           torch.compile could not compile the step (RuntimeError too)
        └── ExportCheckFailed      the exporter failed, or the written file does not match PyTorch

`InputError` is a `ValueError`, so callers that catch ValueError around the library keep working.
The command-line entry points (`udon_fast.commands.cli.run_command`) turn these, and an OSError on a named
file, into one line on stderr; every other exception keeps its traceback and exits 70: it is a bug.
"""

EXIT_FAILED, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 70, 130


class UdonFastError(Exception):
    """An error the project reports to its user in one line (the message names the file, field or flag)."""

    exit_code = EXIT_USAGE


class InputError(UdonFastError, ValueError):
    """A bad option, input file or field given by the user: exit code 2."""

    exit_code = EXIT_USAGE


class DataError(InputError):
    """A dataset (info file, folder layout, image file) that cannot be used as given."""


class CheckpointError(InputError):
    """A checkpoint or weights file that cannot be read, is not a udon_fast file or does not fit the model."""


class CheckFailed(UdonFastError):
    """The command ran and what it checks failed (a diverged run, a failed export check): exit code 1."""

    exit_code = EXIT_FAILED


class TrainingDiverged(CheckFailed, RuntimeError):
    """A non-finite loss: the step and domain are named; the last good checkpoint is kept."""


class CompileError(CheckFailed, RuntimeError):
    """torch.compile could not compile the step (one line; `--compile off` trains without it)."""


class ExportCheckFailed(CheckFailed, ValueError):
    """The exporter failed, or the written file does not run or differs from PyTorch (the message says which)."""
