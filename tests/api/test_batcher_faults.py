"""The micro-batcher's failure paths, on a real tiny model with faults injected in its session.

Every request of a failing batch gets an error and the worker takes the next batch;
``stop()`` answers the in-flight batch at once; a cancelled request's image never reaches
the model; admission is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from skin_mlops.api.batching import (
    BatcherOverloadedError,
    BatcherStoppedError,
    BatchFailedError,
    MicroBatcher,
)
from skin_mlops.api.metrics import ApiMetrics
from skin_mlops.api.model_runtime import LoadedModel, load_model
from skin_mlops.export_format import resolve_export_dir
from skin_mlops.preprocessing import preprocess_bytes
from utils.images import encode, two_tone
from utils.model_factory import IMAGE_SIZE

from .faults import BrokenPostprocessing, FaultySession, faulty

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def model(export_link: Path, settings_for) -> LoadedModel:
    return load_model(resolve_export_dir(export_link), "v1", settings_for(export_link))


@pytest.fixture
def pixels() -> np.ndarray:
    return preprocess_bytes(encode(two_tone("red")), IMAGE_SIZE)


def dropped(metrics: ApiMetrics, reason: str) -> float:
    return metrics.images_dropped.labels(reason=reason)._value.get()


async def submit_together(
    batcher: MicroBatcher, jobs: list[tuple[LoadedModel, np.ndarray]]
) -> list[object]:
    """Submit ``jobs`` so that they form one batch; results or exceptions, within 10 s."""
    reservations = [batcher.reserve() for _ in jobs]
    return await asyncio.wait_for(
        asyncio.gather(
            *(batcher.submit(m, p, r) for (m, p), r in zip(jobs, reservations, strict=True)),
            return_exceptions=True,
        ),
        timeout=10,
    )


@pytest.mark.parametrize("fault", ["stacking", "onnx-runtime", "post-processing", "row-count"])
def test_a_fault_anywhere_in_a_batch_fails_that_batch_and_the_worker_goes_on(
    model: LoadedModel, pixels: np.ndarray, fault: str
) -> None:
    broken, session = faulty(model)
    jobs = [(broken, pixels), (broken, pixels)]
    if fault == "stacking":  # one image of the wrong shape: np.stack raises
        jobs[1] = (broken, pixels[:-1])
    elif fault == "onnx-runtime":
        session.error = RuntimeError("injected ONNX Runtime failure")
    elif fault == "post-processing":
        fields = {f.name: getattr(broken, f.name) for f in dataclasses.fields(broken)}
        broken = BrokenPostprocessing(**fields)
        jobs = [(broken, pixels), (broken, pixels)]
    elif fault == "row-count":  # the model answers one row short
        session.drop_a_row = True

    async def scenario() -> tuple[list[object], object, float]:
        metrics = ApiMetrics()
        batcher = MicroBatcher(max_batch_size=8, max_wait_ms=50, metrics=metrics)
        batcher.start()
        failed = await submit_together(batcher, jobs)
        assert batcher.running, "the worker died with the batch"
        after = await asyncio.wait_for(batcher.submit(model, pixels), timeout=10)
        await batcher.stop()
        return failed, after, dropped(metrics, "batch_failed")

    failed, after, n_dropped = asyncio.run(scenario())
    assert [type(result) for result in failed] == [BatchFailedError, BatchFailedError]
    assert all(not result.out_of_memory for result in failed)  # type: ignore[attr-defined]
    assert n_dropped == 2
    assert after.probabilities.argmax() == 0  # the next batch is served: "red"


def test_out_of_memory_in_a_batch_is_marked_as_such(model: LoadedModel, pixels: np.ndarray) -> None:
    broken, session = faulty(model)
    session.error = MemoryError()

    async def scenario() -> list[object]:
        batcher = MicroBatcher(max_batch_size=8, max_wait_ms=50, metrics=ApiMetrics())
        batcher.start()
        results = await submit_together(batcher, [(broken, pixels)])
        await batcher.stop()
        return results

    (result,) = asyncio.run(scenario())
    assert isinstance(result, BatchFailedError) and result.out_of_memory


def test_stop_answers_the_in_flight_batch_and_the_queue_at_once(
    model: LoadedModel, pixels: np.ndarray
) -> None:
    blocked, session = faulty(model)
    gate = session.block()
    safety = threading.Timer(20, gate.set)  # the old stop() blocked the loop on the thread
    safety.start()

    async def scenario() -> tuple[list[object], float]:
        metrics = ApiMetrics()
        batcher = MicroBatcher(max_batch_size=1, max_wait_ms=0, metrics=metrics)
        batcher.start()
        in_flight = asyncio.ensure_future(batcher.submit(blocked, pixels))
        while not session.entered.is_set():
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(batcher.submit(blocked, pixels))
        await asyncio.sleep(0.05)
        stopping = asyncio.ensure_future(batcher.stop())
        answers = await asyncio.wait_for(
            asyncio.gather(in_flight, queued, return_exceptions=True), timeout=5
        )
        gate.set()
        await stopping
        return answers, dropped(metrics, "shutdown")

    try:
        answers, n_dropped = asyncio.run(scenario())
    finally:
        gate.set()
        safety.cancel()
    assert [type(answer) for answer in answers] == [BatcherStoppedError, BatcherStoppedError]
    assert n_dropped == 2


def test_a_cancelled_request_never_reaches_the_model(
    model: LoadedModel, pixels: np.ndarray
) -> None:
    blocked, session = faulty(model)
    gate = session.block()

    async def scenario() -> tuple[object, float]:
        metrics = ApiMetrics()
        batcher = MicroBatcher(max_batch_size=8, max_wait_ms=0, metrics=metrics)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(blocked, pixels))
        while not session.entered.is_set():
            await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit(blocked, pixels))  # queued behind it
        await asyncio.sleep(0.05)
        gone.cancel()  # what a disconnected client's request does
        await asyncio.sleep(0.05)
        gate.set()
        result = await asyncio.wait_for(first, timeout=10)
        await asyncio.sleep(0.2)  # the worker would have run the next batch by now
        await batcher.stop()
        return result, dropped(metrics, "client_gone")

    try:
        result, n_dropped = asyncio.run(scenario())
    finally:
        gate.set()
    assert result.batch_size == 1  # type: ignore[attr-defined]
    assert (session.calls, session.images) == (1, 1)
    assert n_dropped == 1


def test_admission_is_bounded_by_max_queued(model: LoadedModel, pixels: np.ndarray) -> None:
    async def scenario() -> None:
        metrics = ApiMetrics()
        batcher = MicroBatcher(max_batch_size=8, max_wait_ms=5, metrics=metrics, max_queued=2)
        with pytest.raises(BatcherStoppedError):
            batcher.reserve()  # not started
        batcher.start()
        first, second = batcher.reserve(), batcher.reserve()
        with pytest.raises(BatcherOverloadedError, match="busy"):
            batcher.reserve()
        with pytest.raises(BatcherOverloadedError):
            await batcher.submit(model, pixels)  # without a reservation: same limit
        assert dropped(metrics, "queue_full") == 2
        first.release()
        result = await asyncio.wait_for(batcher.submit(model, pixels, batcher.reserve()), 10)
        assert result.batch_size == 1
        second.release()
        await batcher.stop()

    asyncio.run(scenario())


def test_the_session_stand_in_is_faithful(model: LoadedModel, pixels: np.ndarray) -> None:
    """FaultySession without a fault gives the real session's numbers."""
    wrapped, session = faulty(model)
    assert isinstance(session, FaultySession)
    np.testing.assert_array_equal(wrapped.logits(pixels[None]), model.logits(pixels[None]))
