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

Failure paths (each request gets an answer, the worker survives):

* **admission**: at most ``MAX_QUEUED_IMAGES`` images are being preprocessed or wait for
  the model; past that :meth:`reserve` raises :class:`BatcherOverloadedError` (503 with
  ``Retry-After``) before any decoding is spent on the request;
* **a failing batch**: an exception anywhere in a batch (stacking, the ORT call,
  post-processing, building the results) resolves every future of that batch with
  :class:`BatchFailedError` (500; 503 for a ``MemoryError``) and the worker takes the
  next batch;
* **a client gone**: an image whose future is already done (its request was cancelled
  because the client disconnected) is dropped from the batch before the model runs;
* **shutdown**: :meth:`stop` answers the queued *and* the in-flight batch's requests with
  :class:`BatcherStoppedError` (503) at once, without waiting for the model call.

``api_images_dropped_total{reason}`` counts the images that did not get a prediction.
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
from skin_mlops.api.middleware import current_request_id
from skin_mlops.api.model_runtime import LoadedModel

log = logging.getLogger("skin_mlops.api.batching")


class BatcherStoppedError(RuntimeError):
    """The batcher is not running (the server is starting or shutting down)."""


class BatcherOverloadedError(RuntimeError):
    """``MAX_QUEUED_IMAGES`` images are already admitted: come back later (503)."""


class BatchFailedError(RuntimeError):
    """The batch this image was in failed; the cause is chained and logged once.

    Attributes:
        out_of_memory (bool): the cause was a ``MemoryError`` (503, not a bug: 500).
    """

    def __init__(self, message: str, *, out_of_memory: bool) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


@dataclass
class BatchResult:
    """One image's output: calibrated probabilities, the guard's score (None without a
    guard) and the model call it was part of."""

    probabilities: np.ndarray
    model: LoadedModel
    batch_size: int
    model_ms: float
    ood_score: float | None = None
    wait_s: float = 0.0  # queued until its model call started
    run_s: float = 0.0  # the ONNX Runtime call itself (in the inference thread)
    hop_s: float = 0.0  # handing the batch to the inference thread and back


@dataclass
class _Job:
    model: LoadedModel
    pixels: np.ndarray
    future: asyncio.Future[BatchResult]
    request_id: str | None = None
    queued_at: float = 0.0


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

    def __init__(
        self,
        max_batch_size: int,
        max_wait_ms: float,
        metrics: ApiMetrics,
        max_queued: int = 128,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queued = max_queued
        self.metrics = metrics
        self._pending: deque[_Job] = deque()
        self._in_flight: list[_Job] = []
        self._incoming = 0
        self._wakeup = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """The worker is up and takes images."""
        return self._worker is not None and not self._worker.done()

    @property
    def queued(self) -> int:
        """Images admitted and not yet in a model call (being preprocessed or waiting)."""
        return self._incoming + len(self._pending)

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-inference")
        self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop the worker; queued and in-flight requests fail with :class:`BatcherStoppedError`.

        Does not wait for a model call in progress: its requests are answered now, its
        result is discarded, and the inference thread ends when the call returns.
        """
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        unanswered = [*self._in_flight, *self._pending]
        self._in_flight = []
        self._pending.clear()
        for job in unanswered:
            if not job.future.done():
                self.metrics.images_dropped.labels(reason="shutdown").inc()
                job.future.set_exception(BatcherStoppedError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _admit(self) -> None:
        if not self.running:
            raise BatcherStoppedError("the server is not accepting predictions right now")
        if self.queued >= self.max_queued:
            self.metrics.images_dropped.labels(reason="queue_full").inc()
            raise BatcherOverloadedError(
                f"the server is busy ({self.queued} images queued); retry in a moment"
            )

    def reserve(self) -> Reservation:
        """Admit a request that is being preprocessed and will submit soon.

        Raises:
            BatcherStoppedError: not running.
            BatcherOverloadedError: ``MAX_QUEUED_IMAGES`` images are already admitted.
        """
        self._admit()
        return Reservation(self)

    async def submit(
        self, model: LoadedModel, pixels: np.ndarray, reservation: Reservation | None = None
    ) -> BatchResult:
        """Queue one preprocessed image (``float32[S, S, 3]``) and await its result.

        Without a ``reservation`` the image is admitted here (same limits as
        :meth:`reserve`). Cancelling the awaiting task drops the image from the queue.
        """
        if reservation is None:
            self._admit()
        elif not self.running:
            reservation.release()
            raise BatcherStoppedError("the server is not accepting predictions right now")
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(model, pixels, future, current_request_id(), time.perf_counter()))
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
            self._in_flight = batch
            try:
                groups: dict[int, list[_Job]] = {}
                for job in batch:
                    groups.setdefault(id(job.model), []).append(job)
                for jobs in groups.values():
                    await self._infer(loop, jobs)
            except Exception as exc:  # a bug outside _infer: fail this batch, keep working
                self._fail(batch, exc)
            # (a CancelledError skips this: stop() answers the in-flight batch)
            self._in_flight = []

    def _live(self, jobs: list[_Job]) -> list[_Job]:
        """``jobs`` whose requests still wait (a cancelled one's client has gone)."""
        live = [job for job in jobs if not job.future.done()]
        if len(live) < len(jobs):
            self.metrics.images_dropped.labels(reason="client_gone").inc(len(jobs) - len(live))
        return live

    async def _infer(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        """One ORT call for ``jobs`` (same model); resolve each job's future."""
        jobs = self._live(jobs)
        if not jobs:
            return
        model = jobs[0].model
        try:
            stacked = np.stack([job.pixels for job in jobs]).astype(np.float32, copy=False)
            self.metrics.batch_size.observe(len(jobs))
            started = time.perf_counter()
            logits, ood, run_s = await loop.run_in_executor(
                self._executor, _timed_outputs, model, stacked
            )
            returned = time.perf_counter()
            probabilities = model.probabilities(logits)
            model_ms = (time.perf_counter() - started) * 1000
            if probabilities.shape != (len(jobs), len(model.labels)):
                raise ValueError(
                    f"model {model.version} returned probabilities of shape "
                    f"{probabilities.shape} for {len(jobs)} images"
                )
            scores: list[float | None] = (
                [float(v) for v in ood] if ood is not None else [None] * len(jobs)
            )
            hop_s = max(0.0, returned - started - run_s)
            results = [
                BatchResult(
                    row, model, len(jobs), model_ms, score, started - job.queued_at, run_s, hop_s
                )
                for row, score, job in zip(probabilities, scores, jobs, strict=True)
            ]
        except Exception as exc:  # fails these requests, not the worker
            self._fail(jobs, exc)
            return
        for job, result in zip(jobs, results, strict=True):
            if not job.future.done():  # the client may have gone away meanwhile
                job.future.set_result(result)

    def _fail(self, jobs: list[_Job], exc: Exception) -> None:
        """Answer every still-waiting job of a failed batch (the cause is logged once)."""
        waiting = [job for job in jobs if not job.future.done()]
        out_of_memory = isinstance(exc, MemoryError)
        ids = ", ".join(job.request_id or "-" for job in waiting)
        log.error(
            "%s in a batch of %d images (request ids: %s)",
            "out of memory" if out_of_memory else "inference failed",
            len(jobs),
            ids or "none waiting",
            exc_info=exc,
        )
        self.metrics.images_dropped.labels(
            reason="out_of_memory" if out_of_memory else "batch_failed"
        ).inc(len(waiting))
        for job in waiting:
            error = BatchFailedError(
                "out of memory while running the model"
                if out_of_memory
                else "the model call for this image's batch failed",
                out_of_memory=out_of_memory,
            )
            error.__cause__ = exc
            job.future.set_exception(error)


def _timed_outputs(
    model: LoadedModel, batch: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """``model.outputs(batch)`` and the seconds it took, measured in the inference thread."""
    started = time.perf_counter()
    logits, ood = model.outputs(batch)
    return logits, ood, time.perf_counter() - started
