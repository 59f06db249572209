"""The package layout (docs/architecture.md): commands import the library, never the reverse, and every
`python -m udon_fast.<command>` of the README and docs still runs through its thin alias module."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import udon_fast

PACKAGE = Path(udon_fast.__file__).parent
# The thin aliases: `python -m udon_fast.<command>` runs udon_fast.commands.<command>.
ALIASES = {
    "train": "train",
    "evaluate": "evaluate",
    "embed": "embed",
    "index": "index",
    "search": "search",
    "export": "export",
    "ablate": "ablate",
    "info": "info",
    "serve.__main__": "serve",
    "data.__main__": "data",
    "ablation.replay": "replay",
}


def _module_name(path: Path) -> str:
    return ".".join(("udon_fast", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    """The absolute names of the modules `path` imports (relative imports resolved against its package)."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _importers_of_commands() -> set[str]:
    return {
        _module_name(path)
        for path in PACKAGE.rglob("*.py")
        if not _module_name(path).startswith("udon_fast.commands")
        and any(m == "udon_fast.commands" or m.startswith("udon_fast.commands.") for m in _imports(path))
    }


def test_the_import_walk_sees_relative_and_absolute_imports():
    """The walk resolves `from ..commands import run` inside a subpackage to udon_fast.commands.run."""
    module = PACKAGE / "serve" / "__main__.py"
    assert "udon_fast.commands.run" in _imports(module)
    assert "udon_fast.commands.run" in _imports(PACKAGE / "train.py")
    assert "udon_fast.errors" in _imports(PACKAGE / "commands" / "train.py")


def test_only_the_aliases_import_the_commands():
    aliases = {f"udon_fast.{name}" for name in ALIASES}
    assert _importers_of_commands() == aliases


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_each_alias_is_thin_and_runs_its_command(alias):
    path = PACKAGE.joinpath(*alias.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert len(tree.body) <= 4, f"{path}: an alias holds only its docstring, imports and the __main__ line"
    assert "udon_fast.commands.run" in _imports(path)
    prog = "udon_fast." + alias.removesuffix(".__main__")
    assert f'run("{ALIASES[alias]}", "{prog}")' in path.read_text()
    module = alias.removesuffix(".__main__")
    result = subprocess.run(
        [sys.executable, "-m", f"udon_fast.{module}", "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert f"python -m udon_fast.{module}" in result.stdout


def test_a_command_missing_its_extra_is_one_line(monkeypatch, capsys):
    """`python -m udon_fast.train` without the [train] extra (here: yaml hidden) stops with one line naming
    the extra and exit 2, not an import traceback."""
    from udon_fast.commands import run

    for name in [n for n in sys.modules if n == "udon_fast.config" or n.startswith("udon_fast.commands.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert run("train", "udon_fast.train") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("udon_fast.train: error: ") and "[train]" in err, err
