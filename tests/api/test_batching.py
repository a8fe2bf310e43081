"""Concurrent requests share model calls; a lone client is never batched with itself."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from utils.images import encode, two_tone


def batch_size_histogram(url: str) -> tuple[float, float]:
    """``(count, sum)`` of ``api_batch_size`` from the live server's /metrics."""
    text = httpx.get(f"{url}/metrics").text
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "api_batch_size"
        for sample in family.samples
    }
    return values["api_batch_size_count"], values["api_batch_size_sum"]


async def post_concurrently(url: str, payloads: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(
            *(client.post("/predict", files={"file": ("x.png", data)}) for data in payloads)
        )


def test_concurrent_requests_are_batched(export_link, settings_for, live_server_for) -> None:
    live = live_server_for(settings_for(export_link, max_batch_size=16, max_batch_wait_ms=50))
    labels = ["red", "green", "blue", "white", "black"] * 8
    responses = asyncio.run(post_concurrently(live.url, [encode(two_tone(x)) for x in labels]))
    assert [r.status_code for r in responses] == [200] * len(labels)
    # every answer is its own image's, whatever batch it was in
    assert [r.json()["label"] for r in responses] == labels
    assert max(r.json()["batch_size"] for r in responses) > 1
    count, total = batch_size_histogram(live.url)
    assert total == len(labels)  # every image went through exactly one model call
    assert count < len(labels)  # ... and fewer calls than images: batches > 1 happened
    assert max(r.json()["batch_size"] for r in responses) <= 16


def test_sequential_requests_run_alone(export_link, settings_for, live_server_for) -> None:
    live = live_server_for(settings_for(export_link, max_batch_wait_ms=50))
    with httpx.Client(base_url=live.url, timeout=30) as client:
        for _ in range(5):
            response = client.post("/predict", files={"file": ("x.png", encode(two_tone("red")))})
            assert response.json()["batch_size"] == 1
    assert batch_size_histogram(live.url) == (5.0, 5.0)


def test_a_batch_is_split_by_model_and_each_image_gets_its_models_answer(
    export_link, tiny_models, settings_for
) -> None:
    """During a swap a batch can hold images of the old and the new model: one call each."""
    import numpy as np
    import pytest

    from skin_mlops.api.batching import BatcherStoppedError, MicroBatcher
    from skin_mlops.api.metrics import ApiMetrics
    from skin_mlops.api.model_runtime import load_model
    from skin_mlops.export_format import resolve_export_dir
    from skin_mlops.preprocessing import preprocess_bytes
    from utils.model_factory import IMAGE_SIZE, publish_tiny_export

    settings = settings_for(export_link)
    old = load_model(resolve_export_dir(export_link), "old", settings)
    publish_tiny_export(export_link, tiny_models.v2, "v2")
    new = load_model(resolve_export_dir(export_link), "new", settings)
    pixels = preprocess_bytes(encode(two_tone("red")), IMAGE_SIZE)

    async def scenario():  # noqa: ANN202
        batcher = MicroBatcher(max_batch_size=8, max_wait_ms=50, metrics=ApiMetrics())
        with pytest.raises(BatcherStoppedError):
            await batcher.submit(old, pixels)  # not started yet
        batcher.start()
        models = [old, new, old, new]
        reservations = [batcher.reserve() for _ in models]
        results = await asyncio.gather(
            *(batcher.submit(m, pixels, r) for m, r in zip(models, reservations, strict=True))
        )
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert [r.model.version for r in results] == ["v1", "v2", "v1", "v2"]
    assert [r.batch_size for r in results] == [2, 2, 2, 2]
    np.testing.assert_allclose(
        results[0].probabilities, old.probabilities(old.logits(pixels[None]))[0], atol=1e-6
    )
    np.testing.assert_allclose(
        results[1].probabilities, new.probabilities(new.logits(pixels[None]))[0], atol=1e-6
    )
    assert not np.allclose(results[0].probabilities, results[1].probabilities, atol=1e-4)
