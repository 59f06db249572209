"""docs/deployment.md's preprocessing recipe for the ONNX file (without udon_fast) gives the images both
decoders give, also for a photo stored sideways with an EXIF orientation tag, as phones write them."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from udon_fast.data import EvalLoader, Split
from udon_fast.data.decoders import DECODERS

DOC = Path(__file__).resolve().parents[1] / "docs" / "deployment.md"
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
SIZE = 32


def recipe_preprocessing(image_path: Path) -> np.ndarray:
    """Run the doc's recipe from the image to `x` (1, 3, S, S), the ONNX model's input."""
    block = re.search(r"Using the ONNX file without udon_fast:\n\n```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    kept = [
        line
        for line in block.splitlines()
        if not line.startswith(("import json", "meta = ", "session = ", "embedding = "))
    ]
    code = "\n".join(kept).replace('"query.jpg"', repr(str(image_path)))
    namespace = {"np": np, "meta": {"image_size": SIZE, "mean": MEAN, "std": STD}}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace["x"]


@pytest.mark.parametrize("decoder", DECODERS)
def test_recipe_applies_the_exif_orientation_like_the_decoders(tmp_path, decoder):
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, :32, 0] = 230  # stored: red left, blue right; shown (orientation 6: turn 90 degrees clockwise):
    pixels[:, 32:, 2] = 230  # red on top, blue at the bottom
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif.tobytes())
    ((ours, _),) = EvalLoader(
        Split([str(path)], np.zeros(1, np.int64)),
        batch_size=1,
        image_size=SIZE,
        mean=MEAN,
        std=STD,
        num_threads=1,
        device_id=None,
        decoder=decoder,
    )
    ours = ours.numpy()
    red = ours[0, 0] * STD[0] + MEAN[0]
    assert red[:12].mean() > 0.8 and red[-12:].mean() < 0.1  # the decoder turned it upright
    recipe = recipe_preprocessing(path)
    assert recipe.shape == ours.shape and recipe.dtype == np.float32
    red = recipe[0, 0] * STD[0] + MEAN[0]
    assert red[:12].mean() > 0.8 and red[-12:].mean() < 0.1
    assert np.abs(recipe - ours).mean() < 0.1  # resampling and crop rounding differ at the colour edge only
