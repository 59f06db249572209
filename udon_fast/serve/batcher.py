"""An asyncio micro-batcher: the images of concurrent requests are embedded in one model call.

Each request awaits `embed(images)`.  A single worker task takes the first waiting request, then
gathers more for at most `max_wait_s` (taking at once whatever is already queued) until `max_batch`
images are in, runs the embedding function on the whole batch in a worker thread (the event loop
keeps accepting requests meanwhile) and hands each request its rows.  A failure of the embedding
function fails the requests of that batch only.
"""

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class MicroBatcher:
    """embed_fn(list of items) -> (n, D) float32 rows in order; items are whatever it takes (here
    encoded images).  `batch_sizes` records the size of every batch run (for /healthz and tests)."""

    def __init__(self, embed_fn: Callable[[list], np.ndarray], max_batch: int = 32, max_wait_s: float = 0.005):
        self.embed_fn = embed_fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batch_sizes: list[int] = []
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def embed(self, items: Sequence) -> np.ndarray:
        """(len(items), D) embeddings of `items`, computed in a batch shared with concurrent callers."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((list(items), future))
        return await future

    async def _gather(self) -> list[tuple[list, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        count = len(batch[0][0])
        deadline = loop.time() + self.max_wait_s
        while count < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(item)
            count += len(item[0])
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            items = [item for request, _ in batch for item in request]
            self.batch_sizes.append(len(items))
            try:
                rows = await loop.run_in_executor(self._executor, self.embed_fn, items)
            except Exception as exc:  # handed to the waiting requests, which answer with an error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for request, future in batch:
                if not future.done():
                    future.set_result(rows[start : start + len(request)])
                start += len(request)
