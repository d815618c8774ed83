"""One thread for the embedded engine, and the bridge between it and asyncio.

llama.cpp contexts are not thread-safe, so every call into the model runs on a single worker
thread; requests queue in arrival order (the executor's FIFO queue). The event loop only waits.
A caller that goes away (its task is cancelled when the client disconnects) sets the job's
`threading.Event`, which the token loop checks before every token.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, TypeVar

T = TypeVar("T")
Emit = Callable[[object], None]  # a decoded piece, or whatever else the job hands out first
Job = Callable[[threading.Event, "Emit | None"], T]

_DONE = object()


class Worker:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keel-local")

    async def call(self, fn: Callable[..., T], *args) -> T:
        """Run a plain function (loading, closing) on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run(self, job: Job) -> T:
        """Run a job to the end; cancelling the caller stops the job at its next token."""
        cancel = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(self._pool, job, cancel, None)
        try:
            return await future
        except asyncio.CancelledError:
            cancel.set()
            raise

    async def stream(self, job: Job) -> AsyncIterator[object]:
        """Yield each piece the job emits as it arrives, then the job's result."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(piece: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        future = loop.run_in_executor(self._pool, job, cancel, emit)
        # Completion reaches the loop through call_soon_threadsafe too, so it lands after
        # every piece emitted before it.
        future.add_done_callback(lambda _: queue.put_nowait(_DONE))
        try:
            while (piece := await queue.get()) is not _DONE:
                yield piece
            yield await future
        finally:
            cancel.set()  # no-op when the job is over; stops it when the consumer left early

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
