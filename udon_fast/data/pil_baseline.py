"""The benchmark baseline: a plain torch DataLoader over PIL with the train augmentations of
`augment.py` (resize to S x S, S = round(image_size*256/224); random crop; random flip; normalise),
drawn by torchvision's RNG.  Not the default path: `TrainLoader` is.
"""

from collections.abc import Sequence

import torch

from ..extras import needs_extra

with needs_extra("train"):
    from PIL import Image
from torch.utils.data import DataLoader, Dataset

with needs_extra("train"):
    from torchvision import transforms

from .augment import check_norm, train_resize
from .domain import Split


class PILTrainDataset(Dataset):
    """Item i: (image (3,s,s) float32 normalised, label int64 scalar; first label if multi-label)."""

    def __init__(self, split: Split, image_size: int, mean: Sequence[float], std: Sequence[float]):
        check_norm(mean, std)
        self.paths, self.labels = split.paths, torch.from_numpy(split.first_labels())
        side = train_resize(image_size)
        self.transform = transforms.Compose(
            [
                transforms.Resize((side, side), interpolation=transforms.InterpolationMode.BILINEAR),
                transforms.RandomCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


def pil_train_loader(
    split: Split,
    *,
    batch_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_workers: int,
    seed: int = 0,
) -> DataLoader:
    """Shuffled (seeded) batches (images (B,3,s,s) float32, labels (B,) int64), last partial batch dropped."""
    return DataLoader(
        PILTrainDataset(split, image_size, mean, std),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
