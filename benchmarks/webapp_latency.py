"""What the web page adds on top of the API: upload in a real browser -> label on screen.

Starts the real ``skin-mlops serve`` (the trained ``runs/skin5-current`` unless told) and
the real ``skin-mlops webapp``, then for each of N dermnet5 val photos, in Debian's
chromium driven by Playwright:

* **page**: file chosen -> the predicted label's heading in the DOM (the page classifies a
  photo as it arrives: the upload, the re-run that calls the API, the drawing of the
  answer), and -> the whole answer drawn (Top-K, chart, caption), timed
  inside the page with ``performance.now()`` and a ``MutationObserver``, so Playwright's
  own polling (its waits retry at 20, 100, 500 ms steps) is not counted;
* **API call**: the same photo sent by the web app's own client (``ApiClient.predict``)
  straight to the API, no browser (what a script calling the API would pay);
* **inference_ms**: the API's own server-side time in its answer.

``page - API call`` is what the web app adds (target: <= 300 ms p50 on the 2-core box).
Run: ``uv run python benchmarks/webapp_latency.py [--photos 20] [--model-source PATH]``.
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from serve_common import REAL_EXPORT, free_port, start_server, val_photos

from skin_mlops.webapp.client import ApiClient, UploadFile

CHROMIUM = "/usr/bin/chromium"
console = Console()

# Marks, in the page's own clock: when the upload started (set from Python just before),
# when the predicted label's heading appeared (the result's first element) and when the
# whole answer was drawn (its last element, the caption under the chart).
MARKS_JS = """
() => {
  window.__marks = {};
  const labelShown = () => [...document.querySelectorAll('h3')]
    .some(h => !h.closest('[data-testid=stSidebar]') && h.textContent.trim());
  new MutationObserver(() => {
    const m = window.__marks, now = performance.now();
    if (m.upload && !m.label && labelShown()) m.label = now;
    if (m.upload && !m.answered && document.body.textContent.includes('Answered by model'))
      m.answered = now;
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) with linear interpolation."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def main(
    photos: Annotated[int, typer.Option(min=1, help="Val photos to time (one each).")] = 20,
    model_source: Annotated[Path, typer.Option(help="Export the API serves.")] = REAL_EXPORT,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed rounds first.")] = 2,
) -> None:
    """Time upload -> label in the browser beside the API call alone."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        sys.exit(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    if not (model_source / "inference" / "signature.json").exists():
        sys.exit(f"no exported model at {model_source}: run `uv run skin-mlops pipeline` first")
    chosen = val_photos()[:: max(1, len(val_photos()) // photos)][:photos]
    api_port, web_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        "MODEL_SOURCE": str(model_source),
        "MODEL_POLL_SECONDS": "0",
        "API_BASE_URL": f"http://127.0.0.1:{api_port}",
        "WEBAPP_METRICS_PORT": str(metrics_port),
    }
    cli = str(Path(sys.executable).with_name("skin-mlops"))
    api = start_server(
        "webapp-bench-api", [cli, "serve", "--port", str(api_port)], api_port, "/ready", env
    )
    web = start_server(
        "webapp-bench-page",
        [cli, "webapp", "--port", str(web_port)],
        web_port,
        "/_stcore/health",
        env,
    )
    rows: list[dict[str, float]] = []
    try:
        client = ApiClient(api.url)
        with sync_playwright() as playwright, Progress(console=console) as progress:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            task = progress.add_task("upload -> label", total=warmup + len(chosen))
            for index, photo in enumerate([*chosen[:warmup], *chosen]):
                data = photo.read_bytes()
                started = time.perf_counter()
                answer = client.predict(UploadFile(photo.name, data, "image/jpeg"), top_k=100)
                api_ms = (time.perf_counter() - started) * 1000

                page.goto(f"http://127.0.0.1:{web_port}")
                page.wait_for_selector("[data-test-script-state=notRunning]", timeout=30_000)
                with tempfile.TemporaryDirectory() as tmp:
                    upload = Path(tmp) / photo.name
                    upload.write_bytes(data)
                    page.evaluate(MARKS_JS)
                    page.evaluate("window.__marks.upload = performance.now()")
                    page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files(
                        str(upload)
                    )
                    caption = page.get_by_text("Answered by model")
                    caption.wait_for(timeout=30_000)
                    page.wait_for_function("window.__marks.answered > 0", timeout=30_000)
                    marks = page.evaluate("window.__marks")
                page_ms = marks["label"] - marks["upload"]
                whole_ms = marks["answered"] - marks["upload"]
                shown = re.search(r"in (\d+) ms", caption.inner_text())
                if index >= warmup:
                    rows.append(
                        {
                            "page_ms": page_ms,
                            "whole_ms": whole_ms,
                            "api_ms": api_ms,
                            "inference_ms": answer.inference_ms,
                            "shown_inference_ms": float(shown.group(1)) if shown else float("nan"),
                        }
                    )
                progress.advance(task)
            browser.close()
        client.close()
    finally:
        web.stop()
        api.stop()

    table = Table(title=f"web page vs API call, {len(rows)} dermnet5 val photos, p50 (p90)")
    for column in ("measure", "p50 ms", "p90 ms"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    series = {
        "page: upload -> label on screen": [r["page_ms"] for r in rows],
        "page: upload -> whole answer drawn (chart, caption)": [r["whole_ms"] for r in rows],
        "API call alone (same client, no browser)": [r["api_ms"] for r in rows],
        "API inference_ms (server side)": [r["inference_ms"] for r in rows],
        "page adds (page - API call, per photo)": [r["page_ms"] - r["api_ms"] for r in rows],
    }
    for name, values in series.items():
        table.add_row(name, f"{percentile(values, 0.5):.0f}", f"{percentile(values, 0.9):.0f}")
    console.print(table)
    added = statistics.median(series["page adds (page - API call, per photo)"])
    verdict = "meets" if added <= 300 else "misses"
    console.print(
        f"the page adds {added:.0f} ms p50 over the API call ({verdict} the 300 ms target)"
    )


if __name__ == "__main__":
    typer.run(main)
