"""The README's two install commands, setup.py's extras and .ci/run stay in step."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    commands = [line.strip() for line in readme.splitlines() if line.strip().startswith("pip install torch==")]
    assert len(commands) == 2, commands
    return commands


def _setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """setup.py's install_requires and extras_require, evaluated from its source without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    names: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List) and node.targets[0].id.isupper():
            names[node.targets[0].id] = ast.literal_eval(node.value)
    call = next(node.value for node in tree.body if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call))
    keywords = {keyword.arg: keyword.value for keyword in call.keywords}

    def evaluate(node):
        return eval(compile(ast.Expression(node), "setup.py", "eval"), {}, dict(names))

    return evaluate(keywords["install_requires"]), evaluate(keywords["extras_require"])


def test_ci_runs_the_readme_test_command_verbatim():
    tests = _readme_commands()[1]
    assert tests.endswith("TRITON_INTERPRET=1 python -m pytest") and '-e ".[test]"' in tests, tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_main_job_command_installs_the_train_extra():
    main = _readme_commands()[0]
    assert main.endswith("&& python -m udon_fast.train") and '-e ".[train]"' in main, main
    assert "| `[train]` | `train`," in (ROOT / "docs" / "install.md").read_text()


def test_core_is_lean_and_the_extras_nest():
    core, extras = _setup_requirements()
    assert sorted(requirement.split(">")[0].split("<")[0] for requirement in core) == ["faiss-cpu", "numpy", "torch"]
    assert not any(requirement.startswith("torch") and "<" in requirement for requirement in core), core
    assert set(extras) == {"train", "serve", "export", "all", "test", "bench"}
    assert set(extras["all"]) == set(extras["train"]) | set(extras["serve"]) | set(extras["export"])
    assert set(extras["train"]) <= set(extras["serve"]) and set(extras["train"]) <= set(extras["export"])
    assert set(extras["all"]) < set(extras["test"])
    everything = core + [requirement for group in extras.values() for requirement in group]
    assert not any(requirement.startswith("faiss-gpu") for requirement in everything), (
        "faiss-gpu-cu12 and faiss-cpu install the same module: docs/install.md"
    )


def test_ci_proves_the_core_alone_installs_and_runs():
    run = (ROOT / ".ci" / "run").read_text()
    assert "python -m venv" in run and "--system-site-packages" not in run
    assert ".ci/clean_install_check.py" in run


def test_ci_lints_with_the_pre_commit_ruff_before_the_tests():
    """.ci/run runs `ruff check` and `ruff format --check` before the README's test command, with the ruff
    version .pre-commit-config.yaml pins, and pyproject.toml configures ruff."""
    ci = (ROOT / ".ci" / "run").read_text()
    pinned = next(
        line.split("rev:", 1)[1].strip().removeprefix("v")
        for line in (ROOT / ".pre-commit-config.yaml").read_text().splitlines()
        if line.strip().startswith("rev:")
    )
    assert f"pip install -q ruff=={pinned}\n" in ci
    test_command = _readme_commands()[1]
    assert ci.index("ruff check .\n") < ci.index("ruff format --check .\n") < ci.index(test_command)
    assert "[tool.ruff.lint]" in (ROOT / "pyproject.toml").read_text()
