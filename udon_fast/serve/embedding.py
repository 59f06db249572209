"""Uploaded image bytes -> embeddings, with the model's own eval preprocessing.

The same decode, shorter-side resize, centre crop and normalisation as `embed`/`search` with
`--decoder torchvision` (`data.torchvision_pipelines.eval_pipeline`), so an uploaded copy of a
gallery image finds itself first.
"""

from collections.abc import Sequence

import numpy as np
import torch

from ..data.torchvision_pipelines import eval_pipeline
from ..model import Embedder


class ImageEmbedder:
    """encoded images (uint8 (n_i,) arrays) -> (N, dim) float32 unit-norm rows; call from one thread."""

    def __init__(self, model: Embedder, device: torch.device, threads: int = 2):
        self.model, self.device = model.eval(), device
        self._pending: Sequence[np.ndarray] = []
        self.pipeline = eval_pipeline(
            lambda: self._pending,
            batch_size=1,
            image_size=model.config["image_size"],
            mean=model.mean,
            std=model.std,
            num_threads=threads,
            device_id=device.index or 0 if device.type == "cuda" else None,
        )

    @torch.inference_mode()
    def __call__(self, encoded: Sequence[np.ndarray]) -> np.ndarray:
        self._pending = encoded
        self.pipeline.schedule_run()
        (images,) = self.pipeline.outputs()
        return self.model(images.to(self.device)).float().cpu().numpy()

    def close(self) -> None:
        self.pipeline.close()
