"""Python batch sources for DALI's `external_source`: file bytes in, broken files out.

`TrainSource` walks a domain's `EpochStream` in a background thread that reads `read_ahead`
batches of files ahead (so DALI's call never waits on the disk), skips (logs and records) files
that fail `looks_complete` or cannot be read, and remembers which batches are in flight so the
loader knows the position of the last batch it handed out.  `EvalSource` feeds a split in order;
a broken file there is an error (evaluation must see every image).  Images are read with
`Split.read`: from their files, or by offset from the tar shards of a shard root (`shards.py`).
"""

import logging
import queue
import threading
from collections import deque

import numpy as np

from .domain import Split
from .errors import CorruptImageError, DatasetError
from .image_bytes import looks_complete
from .sampling import EpochStream, Position

log = logging.getLogger(__name__)


class TrainSource:
    """Callable returning the next train batch: (encoded: list of uint8 arrays, labels int64 (B, 1),
    crop_x float32 (B,), crop_y float32 (B,), flip int32 (B,)).

    skipped: shared {path: reason} of files skipped so far (also used to skip them without reading).
    in_flight: deque of (position after the batch, split indices of the batch) handed to DALI, oldest first.
    Call `close()` to stop the reader thread.
    """

    def __init__(
        self,
        domain: str,
        split: Split,
        stream: EpochStream,
        batch_size: int,
        position: Position,
        skipped: dict[str, str],
        read_ahead: int = 2,
    ):
        self.domain, self.split, self.labels = domain, split, split.first_labels()
        self.stream, self.batch_size, self.skipped = stream, batch_size, skipped
        self._read_position = position  # advanced by the reader thread only
        self.in_flight: deque[tuple[Position, list[int]]] = deque()
        self._ready: queue.Queue = queue.Queue(maxsize=read_ahead)
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_ahead, name=f"udon-data-{domain}", daemon=True)
        self._reader.start()

    def _read_ahead(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._read_batch()
            except Exception as exc:  # handed to the consumer, which re-raises it
                item = exc
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def close(self) -> None:
        """Stop the reader thread (batches read ahead are dropped)."""
        self._stop.set()
        self._reader.join()

    def _read(self, index: int) -> np.ndarray | None:
        path = self.split.paths[index]
        if path in self.skipped:
            return None
        try:
            data = self.split.read(index)
            reason = looks_complete(data)
        except OSError as exc:
            data, reason = None, f"unreadable: {exc}"
        if reason is not None:
            self.skip(path, reason)
            return None
        return data

    def skip(self, path: str, reason: str) -> None:
        """Record a broken file so it is never fed again (logged once)."""
        if path not in self.skipped:
            self.skipped[path] = reason
            log.warning("domain %s: skipping corrupt image %s (%s)", self.domain, path, reason)

    def __call__(self):
        item = self._ready.get()
        if isinstance(item, Exception):
            raise item
        position, indices, batch = item
        self.in_flight.append((position, indices))
        return batch

    def _read_batch(self):
        """(position after the batch, its split indices, the DALI batch) for the next `batch_size` good files."""
        encoded, draws = [], []
        misses = 0
        while len(encoded) < self.batch_size:
            draw, self._read_position = self.stream.draw(self._read_position)
            data = self._read(draw.index)
            if data is None:
                misses += 1
                if misses > self.stream.shard_size():
                    raise DatasetError(
                        f"domain {self.domain!r}: no decodable image left in this rank's share "
                        f"({len(self.skipped)} skipped, see the log)"
                    )
                continue
            encoded.append(data)
            draws.append(draw)
        labels = self.labels[[d.index for d in draws]][:, None]
        crop_x = np.array([d.crop_x for d in draws], dtype=np.float32)
        crop_y = np.array([d.crop_y for d in draws], dtype=np.float32)
        flip = np.array([d.flip for d in draws], dtype=np.int32)
        return self._read_position, [d.index for d in draws], (encoded, labels, crop_x, crop_y, flip)


class EvalSource:
    """Callable returning the next batch of a split's encoded images, in order (the last one partial).

    `split` is public: the DALI decoder reads a split stored in tar shards with DALI's own webdataset
    reader instead of calling the source (`dali_pipelines.eval_pipeline`).
    """

    def __init__(self, split: Split, batch_size: int):
        self.split, self.batch_size, self.next_index = split, batch_size, 0

    def __call__(self):
        chunk = range(self.next_index, min(self.next_index + self.batch_size, len(self.split)))
        if not chunk:
            raise StopIteration
        self.next_index += len(chunk)
        encoded = []
        for i in chunk:
            data = self.split.read(i)
            reason = looks_complete(data)
            if reason is not None:
                raise CorruptImageError(self.split.paths[i], reason)
            encoded.append(data)
        return encoded
