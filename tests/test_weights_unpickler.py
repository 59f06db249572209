"""`.npy` weights are read by a restricted unpickler: the release's pickled dict of tensors still loads, while a
file whose objects would run code (a `__reduce__` that writes a marker) is refused before anything runs."""

import io

import numpy as np
import pytest
import torch
from test_model_release_weights import openai_clip_state_dict, save_like_the_release
from test_model_weights import assert_same_features, tiny_vit, udon

from udon_fast.commands import train as train_cli
from udon_fast.model import WeightsError


class WritesMarker:
    """Unpickling this object calls exec, which writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code from the weights file ran')",)


class StorageWithMarker:
    """Pickles like a tensor storage (torch.storage._load_from_bytes) whose torch.save bytes hold WritesMarker."""

    def __init__(self, marker):
        buffer = io.BytesIO()
        torch.save(WritesMarker(marker), buffer)
        self.data = buffer.getvalue()

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.data,)


@pytest.mark.parametrize("make", [WritesMarker, StorageWithMarker])
def test_a_weights_file_that_would_run_code_is_refused(make, tmp_path):
    marker = tmp_path / "marker"
    state = openai_clip_state_dict(tiny_vit(32, pre_norm=True))
    state["visual.ln_post.weight"] = make(marker)
    path = tmp_path / "vit_b16.npy"
    save_like_the_release(state, path)
    with pytest.raises(WeightsError, match=rf"^weights file {path} refused: ") as error:
        udon(32, path, pre_norm=True)
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_train_with_a_malicious_npy_is_one_line_and_runs_nothing(data_root, tmp_path, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.npy"
    np.save(path, {"visual.conv1.weight": WritesMarker(marker)}, allow_pickle=True)
    code = train_cli.main(
        [
            "--data-root",
            str(data_root),
            "--out",
            str(tmp_path / "run"),
            "--backbone",
            "vit_tiny_patch16_224",
            "--pretrained",
            str(path),
            "--image-size",
            "32",
            "--no-progress",
            "--no-compile",
            "--data-threads",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"udon_fast.train: error: weights file {path} refused: it holds a builtins.exec object")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_the_release_layout_with_numpy_and_float16_values_still_loads(tmp_path):
    source = tiny_vit(32, pre_norm=True)
    state = openai_clip_state_dict(source)
    state["visual.positional_embedding"] = state["visual.positional_embedding"].numpy()
    state["logit_scale"] = state["logit_scale"].half()
    path = tmp_path / "vit_b16.npy"
    save_like_the_release(state, path)
    assert_same_features(source, udon(32, path, pre_norm=True), 32)
