"""Dynamic micro-batching: concurrent requests for one model share a forward pass.

A batch closes when it holds ``max_batch`` items or ``max_wait_ms`` after its first item arrived,
whichever comes first; it then runs on the model's own thread while the next batch gathers.
``max_batch=1`` is one request at a time. When a batch fails, its items run again one by one, so a
bad input fails its own request only and the others of its batch get their answers. ``submit_many`` queues
all the images of one request at once, so they fill batches together. The queue and its worker belong to the event
loop that submits: an app served again (a second ``TestClient`` or ``running`` block, after ``close``) gets new ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class _Failed:
    """An item's exception, told apart from the outputs ``run`` may return."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class MicroBatcher:
    """``await submit(item)`` -> ``run([..., item, ...])``'s output for that item, or the exception ``run``
    raised for that item alone. ``on_batch(size)`` is called for every batch that ran (for metrics);
    ``pending`` counts the items waiting for their batch to start."""

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], max_batch: int = 16, max_wait_ms: float = 5.0,
                 name: str = "model", on_batch: Callable[[int], None] | None = None) -> None:  # fmt: skip
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch {max_batch} / max_wait_ms {max_wait_ms}: need >= 1 and >= 0")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.on_batch, self.name = on_batch, name
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.items = 0
        self.pending = 0

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """A worker on ``loop``, and a queue if the last one is another loop's (the items of a loop gone are lost)."""
        if self._queue is None or self._loop is not loop:
            self._queue, self.pending = asyncio.Queue(), 0
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"cnnapps-{self.name}")
        self._loop = loop
        self._worker = loop.create_task(self._serve(self._queue, self._executor))

    def _enqueue(self, item: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._worker is None or self._worker.done():
            self._start(loop)
        assert self._queue is not None
        future: asyncio.Future = loop.create_future()
        self._queue.put_nowait((item, future))  # unbounded: never waits
        self.pending += 1
        return future

    async def submit(self, item: Any) -> Any:
        return await self._enqueue(item)

    async def submit_many(self, items: Sequence[Any]) -> list[Any]:
        """Every item queued at once (one request's images share batches): each one's output, or the exception
        ``run`` raised for it, in order."""
        futures = [self._enqueue(item) for item in items]
        return await asyncio.gather(*futures, return_exceptions=True)

    async def _serve(self, queue: asyncio.Queue[tuple[Any, asyncio.Future]], executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    while len(batch) < self.max_batch and not queue.empty():
                        batch.append(queue.get_nowait())  # already waiting: no reason to leave them
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:  # a distinct class before Python 3.11
                    break
            items = [item for item, _ in batch]
            self.pending -= len(batch)
            try:
                outputs = await loop.run_in_executor(executor, self._run_batch, items)
            except Exception as exc:
                if len(batch) == 1:
                    self._answer(batch, [_Failed(exc)])
                    continue
                # which item broke it? each runs alone: the culprits hear why, the others get their answer
                self._answer(batch, await loop.run_in_executor(executor, self._run_alone, items))
                continue
            self._count(len(items))
            self._answer(batch, outputs)

    def _run_batch(self, items: list[Any]) -> Sequence[Any]:
        outputs = self.run(items)
        if len(outputs) != len(items):
            raise RuntimeError(f"{len(items)} inputs gave {len(outputs)} outputs")
        return outputs

    def _run_alone(self, items: list[Any]) -> list[Any]:
        """Each item as a batch of one: its output, or the exception it raised (as ``_Failed``)."""
        outputs: list[Any] = []
        for item in items:
            try:
                outputs.append(self._run_batch([item])[0])
            except Exception as exc:
                outputs.append(_Failed(exc))
                continue
            self._count(1)
        return outputs

    def _count(self, size: int) -> None:
        self.batches += 1
        self.items += size
        if self.on_batch is not None:
            self.on_batch(size)

    @staticmethod
    def _answer(batch: list[tuple[Any, asyncio.Future]], outputs: Sequence[Any]) -> None:
        for (_, future), output in zip(batch, outputs, strict=True):
            if future.done():  # a client that went away leaves a cancelled future
                continue
            if isinstance(output, _Failed):
                future.set_exception(output.exc)
            else:
                future.set_result(output)

    def close(self) -> None:
        """Stop the worker and its thread; the next ``submit`` (on any event loop) starts new ones."""
        if self._worker is not None:
            self._worker.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._worker = self._executor = self._queue = self._loop = None
        self.pending = 0
