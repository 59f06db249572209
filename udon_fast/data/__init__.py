"""Data: UnED info files or class folders -> validated `Domain`s -> DALI or torchvision pipelines -> torch batches.

- `uned.py`, `folder.py`: read the layouts into `Domain`/`Split` (`domain.py`); `knn_pairs` gives
  the (query, index) sets of the UnED protocol; `folder_split.py`: the seeded class-disjoint
  test/val split of folder domains that have none.
- `sampling.py`, `sources.py`, `loaders.py`: seeded, sharded, resumable, prefetching per-domain
  train batches (`TrainLoader`) and in-order eval batches (`EvalLoader`), decoded and augmented
  (`augment.py` defines how) by `decoders.py`'s choice: `dali_pipelines.py` (DALI, imported only
  when used) or `torchvision_pipelines.py`.
- `image_bytes.py`, `verify.py`: broken-file (and broken tar member) checks (skip while training, refuse before any
  evaluation reaches a decoder, `verify` up front).
- `shards.py`: a dataset as webdataset tar shards plus an index, read back in place (a shard root
  is a `data_root` like a UnED root).
- `builtin.py`: the small built-in multi-domain dataset; `pil_baseline.py`: the benchmark baseline.
CLI: `python -m udon_fast.data {verify,builtin,shard}`.
"""

from .builtin import default_data_root, ensure_builtin, write_builtin
from .domain import Domain, Split, knn_pairs
from .errors import CorruptImageError, CorruptImagesError, DatasetError, InfoFileError, MissingFilesError
from .folder import load_folder_domain
from .folder_split import load_domains_with_splits, split_folder_domain
from .loaders import EvalLoader, TrainLoader
from .uned import load_domains
from .verify import VerifyReport, verify_domains

__all__ = [
    "CorruptImageError",
    "CorruptImagesError",
    "DatasetError",
    "Domain",
    "EvalLoader",
    "InfoFileError",
    "MissingFilesError",
    "Split",
    "TrainLoader",
    "VerifyReport",
    "default_data_root",
    "ensure_builtin",
    "knn_pairs",
    "load_domains",
    "load_domains_with_splits",
    "load_folder_domain",
    "split_folder_domain",
    "verify_domains",
    "write_builtin",
]
