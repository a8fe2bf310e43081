"""Micro-batching: concurrent requests share one ONNX Runtime call.

Every request decodes + preprocesses its image in a thread pool, then :meth:`MicroBatcher.submit`
queues the pixels and awaits its row of probabilities. One worker task forms batches:

* it takes the first queued image, then everything already queued (up to
  ``MAX_BATCH_SIZE``);
* it waits up to ``MAX_BATCH_WAIT_MS`` for more *only while other requests are still being
  preprocessed* (announced with :meth:`MicroBatcher.reserve`). A lone client therefore
  never waits: its latency is decode + one model call;
* it runs the batch on the inference thread (one ORT call at a time; ORT uses its own
  intra-op threads) while the event loop keeps accepting and preprocessing requests,
  which then form the next batch. Under load, batches grow by themselves.

Each queued image carries the :class:`~skin_mlops.api.model_runtime.LoadedModel` its
request started with; a batch is split by model, so during a hot swap in-flight requests
finish on the old model and new ones start on the new model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from skin_mlops.api.metrics import ApiMetrics
from skin_mlops.api.model_runtime import LoadedModel

log = logging.getLogger("skin_mlops.api.batching")


class BatcherStoppedError(RuntimeError):
    """The batcher is not running (the server is starting or shutting down)."""


@dataclass
class BatchResult:
    """One image's output: calibrated probabilities and the model call it was part of."""

    probabilities: np.ndarray
    model: LoadedModel
    batch_size: int
    model_ms: float


@dataclass
class _Job:
    model: LoadedModel
    pixels: np.ndarray
    future: asyncio.Future[BatchResult]


class Reservation:
    """Announces a request that will soon :meth:`MicroBatcher.submit` (see module doc)."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self._open = True
        batcher._incoming += 1

    def release(self) -> None:
        """Withdraw the announcement (idempotent; :meth:`MicroBatcher.submit` calls it)."""
        if self._open:
            self._open = False
            self._batcher._incoming -= 1
            self._batcher._wakeup.set()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class MicroBatcher:
    """Groups concurrent single-image requests into ONNX Runtime batches."""

    def __init__(self, max_batch_size: int, max_wait_ms: float, metrics: ApiMetrics) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.metrics = metrics
        self._pending: deque[_Job] = deque()
        self._incoming = 0
        self._wakeup = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-inference")
        self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop the worker; queued requests fail with :class:`BatcherStoppedError`."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(BatcherStoppedError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def reserve(self) -> Reservation:
        """Announce a request that is being preprocessed and will submit soon."""
        return Reservation(self)

    async def submit(
        self, model: LoadedModel, pixels: np.ndarray, reservation: Reservation | None = None
    ) -> BatchResult:
        """Queue one preprocessed image (``float32[S, S, 3]``) and await its result."""
        if self._worker is None or self._worker.done():
            raise BatcherStoppedError("the server is not accepting predictions right now")
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(model, pixels, future))
        if reservation is not None:
            reservation.release()
        self._wakeup.set()
        return await future

    async def _next_batch(self) -> list[_Job]:
        """Wait for work, then gather a batch as described in the module docstring."""
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = [self._pending.popleft()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if self._pending:
                batch.append(self._pending.popleft())
                continue
            remaining = deadline - loop.time()
            if self._incoming <= 0 or remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            groups: dict[int, list[_Job]] = {}
            for job in batch:
                groups.setdefault(id(job.model), []).append(job)
            for jobs in groups.values():
                await self._infer(loop, jobs)

    async def _infer(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        """One ORT call for ``jobs`` (same model); resolve each job's future."""
        model = jobs[0].model
        stacked = np.stack([job.pixels for job in jobs]).astype(np.float32, copy=False)
        self.metrics.batch_size.observe(len(jobs))
        started = time.perf_counter()
        try:
            logits = await loop.run_in_executor(self._executor, model.logits, stacked)
            probabilities = model.probabilities(logits)
        except Exception as exc:  # an ORT failure fails these requests, not the worker
            log.exception("inference failed for a batch of %d", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        model_ms = (time.perf_counter() - started) * 1000
        for job, row in zip(jobs, probabilities, strict=True):
            if not job.future.done():  # the client may have gone away (cancelled)
                job.future.set_result(BatchResult(row, model, len(jobs), model_ms))
