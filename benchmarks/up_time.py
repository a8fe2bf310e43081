"""Time to healthy of ``skin-mlops up``, then a prediction through the API and the web app.

Runs ``skin-mlops up`` in the current folder (a checkout: ``.env``, ``configs/``,
``monitoring/``, ``data/raw``) as a user would, and reports:

* **time to healthy**: start of the command -> its "all healthy" line (wall clock), and
  the launcher's own figure per service;
* **a prediction through the API** (one dermnet5 val photo) and **through the web app**
  (the same photo uploaded in Debian's chromium, the label read off the page);
* **Prometheus targets**: every target of the generated config ``up`` within 60 s.

Then SIGTERM, and the time the stop took. With no published model and photos in
``data/raw`` the first figure includes ingestion and training (the "cold" start).

Run from the project root: ``uv run python benchmarks/up_time.py [--photo PATH]``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from skin_mlops.core.config import get_settings

console = Console()
DEFAULT_PHOTO = Path("../shared/datasets/dermnet5/val/acne")


def first_photo(path: Path) -> Path:
    if path.is_file():
        return path
    photos = sorted(p for p in path.rglob("*.jpg"))
    if not photos:
        raise typer.BadParameter(f"no .jpg under {path}")
    return photos[0]


def predict_in_browser(webapp_url: str, photo: Path) -> tuple[str, float]:
    """Upload ``photo`` on the page; return the label shown and the seconds it took."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(webapp_url)
        page.wait_for_selector("[data-testid=stFileUploaderDropzoneInput]", state="attached")
        started = time.perf_counter()
        page.set_input_files("[data-testid=stFileUploaderDropzoneInput]", str(photo))
        page.get_by_text(re.compile(r"^Probability \d+%")).wait_for(timeout=60_000)
        elapsed = time.perf_counter() - started
        text = page.locator("h3").all_inner_texts()[-1]
        browser.close()
    return text, elapsed


def main(
    photo: Annotated[Path, typer.Option(help="Photo (or folder) to predict.")] = DEFAULT_PHOTO,
    timeout_s: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 1800,
    with_airflow: Annotated[
        bool, typer.Option("--with-airflow", help="Also start Airflow.")
    ] = False,
) -> None:
    """Start `skin-mlops up`, time it to healthy, predict through API and page, stop."""
    settings = get_settings()
    image = first_photo(photo)
    argv = [sys.executable, "-m", "skin_mlops.cli", "up"] + (
        ["--with-airflow"] if with_airflow else []
    )
    log = Path("logs/up_time.out")
    log.parent.mkdir(exist_ok=True)
    started = time.monotonic()
    process = subprocess.Popen(
        argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"}
    )
    try:
        while "all healthy in" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() - started > timeout_s:
                console.print(log.read_text(errors="replace")[-3000:])
                raise typer.Exit(1)
            time.sleep(0.2)
        wall = time.monotonic() - started
        text = log.read_text(errors="replace")
        console.print(f"[bold]time to healthy: {wall:.1f} s[/] (wall, from the command's start)")
        for line in re.findall(r"✓ (.*)", text):
            console.print(f"  {line}")
        api = f"http://127.0.0.1:{settings.api_port}"
        t0 = time.perf_counter()
        answer = httpx.post(
            f"{api}/predict", files={"file": (image.name, image.read_bytes(), "image/jpeg")}
        ).json()
        console.print(
            f"API: {image.name} -> {answer['label']} {answer['confidence']:.2f} "
            f"({(time.perf_counter() - t0) * 1000:.0f} ms, model {answer['model_version']})"
        )
        label, seconds = predict_in_browser(f"http://127.0.0.1:{settings.webapp_port}", image)
        console.print(f"web app: {label!r} on the page after {seconds * 1000:.0f} ms")
        prom = f"http://127.0.0.1:{settings.prometheus_port}"
        deadline = time.monotonic() + 60
        while True:
            targets = httpx.get(f"{prom}/api/v1/targets").json()["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in targets}
            if all(h == "up" for h in health.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        console.print(f"Prometheus targets: {health}")
    finally:
        stop_started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
        console.print(f"stopped in {time.monotonic() - stop_started:.1f} s (exit code {code})")


if __name__ == "__main__":
    typer.run(main)
