"""Concurrent requests share model calls; a lone client is never batched with itself."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .images import encode, two_tone


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
