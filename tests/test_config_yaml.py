"""YAML option files are typed: every value is checked against its option's type and choices, with one line
naming the file and the key; malformed YAML is one line too."""

import pytest

from udon_fast.commands import train as train_cli
from udon_fast.commands.train import parse_args


@pytest.mark.parametrize(
    "text,message",
    [
        ('distill: "false"\n', "distill: expected true or false, got 'false' (str)"),
        ("steps: 2.5\n", "steps: expected an integer or null, got 2.5 (float)"),
        ('resume: "no"\n', "resume: expected true or false, got 'no' (str)"),
        ('epochs: "three"\n', "epochs: expected an integer, got 'three' (str)"),
        ("batch-size: true\n", "batch-size: expected an integer, got True (bool)"),
        ("lr: fast\n", "lr: expected a number, got 'fast' (str)"),
        ("domains: cars\n", "domains: expected a list of strings or null, got 'cars' (str)"),
        ("sampler: greedy\n", "sampler: must be one of dynamic, round_robin, balanced, dataset_size; got 'greedy'"),
        ("margin_type: 3\n", "margin_type: expected a string, got 3 (int)"),
        ("margins: [1.0, 0.5]\n", "margins: expected a list of 3 numbers or null, got [1.0, 0.5] (list)"),
        ("margins: [1.0, yes, 0.0]\n", "margins: expected a list of 3 numbers or null, got [1.0, True, 0.0] (list)"),
        ("steps: [1, 2\n", "not valid YAML: expected ',' or ']', but got '<stream end>' at line 2, column 1"),
        ("epochs: 3\n  lr: 0.1\n", "not valid YAML: mapping values are not allowed here at line 2, column 5"),
        ("1: 2\n", "option names must be text, got 1"),
        ("- epochs\n", "a YAML mapping of option: value is expected"),
    ],
)
def test_bad_yaml_values_are_one_line_naming_the_key(text, message, tmp_path, capsys):
    options = tmp_path / "options.yaml"
    options.write_text(text)
    # A missing --data-root: were the file accepted, the run would stop at once instead of training.
    assert train_cli.main(["--config", str(options), "--data-root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err == f"udon_fast.train: error: {options}: {message}\n"


def test_yaml_values_of_the_right_type_are_taken(tmp_path):
    options = tmp_path / "options.yaml"
    options.write_text(
        "distill: false\nsteps: 5\nlr: 1e-3\nscale: 16\ngrad-clip: null\nmargin_type: cosface\n"
        f"margin: 0.2\nfolder: {{birds: {tmp_path}}}\ndomains: [birds]\n"
    )
    config = parse_args(["--config", str(options)])
    assert (config.distill, config.steps, config.lr, config.scale, config.grad_clip) == (False, 5, 0.001, 16.0, None)
    assert isinstance(config.scale, float) and isinstance(config.lr, float)
    assert (config.margin_type, config.margin, config.folder, config.domains) == (
        "cosface",
        0.2,
        [f"birds={tmp_path}"],
        ["birds"],
    )


def test_a_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    options = tmp_path / "options.yaml"
    options.write_bytes(b"lr: \xff\xfe\n")
    assert train_cli.main(["--config", str(options)]) == 2
    assert capsys.readouterr().err == f"udon_fast.train: error: {options}: not UTF-8 text (byte 4)\n"
