"""End to end in a real browser: Debian's chromium driven by Playwright.

The real ``skin-mlops serve`` (tiny model) and the real ``skin-mlops webapp`` run as child
processes; the browser uploads a photo, reads the label, moves the threshold above the
confidence and sees the warning, sees the error once the API is stopped, and the exporter's
counters are scraped. Screenshots are saved in the test's temporary folder (its path is
printed) and under ``$WEBAPP_SCREENSHOT_DIR`` when that is set.

Needs ``chromium`` (``apt-get install chromium``) and ``playwright`` (dev group; its own
browser download is never used). Outside CI a missing browser skips loudly; with
``CI=true`` it fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from utils.images import encode, two_tone
from utils.model_factory import TinyModels, publish_tiny_export
from utils.servers import free_port, start_command, stop_command, wait_http
from utils.tools import missing_tool, require_tool

from .conftest import scrape

pytestmark = [pytest.mark.service, pytest.mark.timeout(240)]

CHROMIUM = "/usr/bin/chromium"
SETTLE_MS = 30_000


@dataclass
class Stack:
    """The two services under test and where their logs and screenshots go."""

    api: object
    api_url: str
    webapp_url: str
    metrics_port: int
    out: Path


def skin_mlops() -> str:
    return str(Path(sys.executable).with_name("skin-mlops"))


@pytest.fixture
def stack(tmp_path: Path, tiny_models: TinyModels) -> Iterator[Stack]:
    link = tmp_path / "runs" / "skin5-current"
    publish_tiny_export(link, tiny_models.v1, "v1")
    api_port, web_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        "MODEL_SOURCE": str(link),
        "MODEL_POLL_SECONDS": "0",
        "API_BASE_URL": f"http://127.0.0.1:{api_port}",
        "WEBAPP_METRICS_PORT": str(metrics_port),
        "UNCERTAINTY_THRESHOLD": "0.5",
        "WEBAPP_API_TIMEOUT_S": "10",
    }
    api_log, web_log = tmp_path / "api.log", tmp_path / "webapp.log"
    api = start_command(
        [skin_mlops(), "serve", "--host", "127.0.0.1", "--port", str(api_port)],
        env,
        api_log,
        cwd=tmp_path,
    )
    web = start_command(
        [skin_mlops(), "webapp", "--host", "127.0.0.1", "--port", str(web_port)],
        env,
        web_log,
        cwd=tmp_path,
    )
    try:
        wait_http(f"http://127.0.0.1:{api_port}/ready", api, api_log)
        wait_http(f"http://127.0.0.1:{web_port}/_stcore/health", web, web_log)
        yield Stack(
            api,
            f"http://127.0.0.1:{api_port}",
            f"http://127.0.0.1:{web_port}",
            metrics_port,
            tmp_path,
        )
    finally:
        stop_command(web)
        stop_command(api)


def settle(page) -> None:
    """Wait until Streamlit has finished the run the last action started."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-test-script-state=notRunning]", timeout=SETTLE_MS)


def shoot(page, stack: Stack, name: str) -> None:
    path = stack.out / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    copy_to = os.environ.get("WEBAPP_SCREENSHOT_DIR")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(copy_to) / path.name)
    print(f"screenshot: {path}")


def test_upload_label_threshold_warning_api_down_and_counters(stack: Stack) -> None:
    chromium = require_tool("chromium", "apt-get install chromium chromium-driver", CHROMIUM)
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing_tool("playwright not importable: uv sync (dev group)")
    photo = stack.out / "red-lesion.png"
    photo.write_bytes(encode(two_tone("red", size=(320, 240))))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(stack.webapp_url)
        settle(page)
        expect(page.get_by_text("Not a diagnosis.")).to_be_visible()
        expect(page.get_by_text("Ready: model")).to_be_visible()

        # upload -> the label (a new photo is classified when it arrives)
        page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files(str(photo))
        expect(page.get_by_role("heading", name="Red")).to_be_visible(timeout=SETTLE_MS)
        settle(page)
        expect(page.get_by_text("Answered by model v1")).to_be_visible()
        expect(page.locator("[data-testid=stAlertContentWarning]")).to_have_count(0)
        shoot(page, stack, "1-label")

        # threshold above the confidence -> the warning, no new call
        slider = page.locator("[data-testid=stSlider] input[type=range]").first
        slider.focus()
        slider.press("End")
        settle(page)
        warning = page.locator("[data-testid=stAlertContentWarning]")
        expect(warning).to_have_count(1)
        expect(warning).to_contain_text("unsure")
        expect(warning).to_contain_text("clinician")
        shoot(page, stack, "2-warning")

        # the API goes away -> a clear message, no traceback
        stop_command(stack.api)
        page.get_by_role("button", name="Classify again").click()
        settle(page)
        error = page.locator("[data-testid=stAlertContentError]").filter(has_text="not reachable")
        expect(error.first).to_be_visible()
        expect(page.get_by_text("Traceback")).to_have_count(0)
        shoot(page, stack, "3-api-down")
        browser.close()

    counters = scrape(stack.metrics_port)
    assert counters["webapp_page_views_total"] >= 1
    assert counters["webapp_uploads_total"] == 1
    assert counters["webapp_predict_clicks_total"] == 1
    assert counters['webapp_prediction_results_total{label="red"}'] == 1
    assert counters['webapp_prediction_latency_seconds_count{status="ok"}'] == 1
    assert counters['webapp_prediction_latency_seconds_count{status="unreachable"}'] == 1
    assert counters["webapp_low_confidence_total"] == 0
