"""The Streamlit page driven by Streamlit's AppTest, against the real API app.

AppTest runs ``app.py`` in this process; the page talks to the live API over HTTP exactly
as in production. The exporter outlives one AppTest, so tests assert increments.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from streamlit.testing.v1 import AppTest

from skin_mlops.webapp.cli import APP_FILE
from utils.images import encode, two_tone
from utils.servers import free_port

from .conftest import scrape

pytestmark = pytest.mark.timeout(120)


def open_page() -> AppTest:
    at = AppTest.from_file(str(APP_FILE), default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    return at


def upload(at: AppTest, *files: tuple[str, bytes, str]) -> AppTest:
    at.file_uploader(key="uploads").set_value(list(files))
    at.run()
    assert not at.exception, at.exception
    return at


def classify_again(at: AppTest) -> AppTest:
    at.button(key="classify").click()
    at.run()
    assert not at.exception, at.exception
    return at


def red_png() -> tuple[str, bytes, str]:
    return ("red.png", encode(two_tone("red")), "image/png")


def test_an_upload_is_classified_with_the_label_and_the_top_k(
    live_api: str, page_env: Callable[[str], int]
) -> None:
    page_env(live_api)
    at = open_page()
    assert at.button(key="classify").disabled, "nothing to classify yet"
    at = upload(at, red_png())
    assert [s.value for s in at.subheader] == ["Red"]
    ranking = next(m.value for m in at.markdown if m.value.startswith("1. "))
    assert ranking.splitlines()[0].startswith("1. Red: ")
    assert len(ranking.splitlines()) == 3, "Top-K defaults to 3"
    assert not at.warning, "a confident answer carries no warning"
    assert at.get("vega_lite_chart") or at.get("arrow_vega_lite_chart")
    assert any("Answered by model v1" in c.value for c in at.caption)
    assert any("Ready" in s.value and "v1" in s.value for s in at.sidebar.success)
    assert any("Not a diagnosis" in i.value for i in at.info), "the note is always visible"


def test_a_threshold_above_the_confidence_warns_without_calling_again(
    live_api: str, page_env: Callable[[str], int]
) -> None:
    port = page_env(live_api)
    at = upload(open_page(), red_png())
    calls = scrape(port)['webapp_prediction_latency_seconds_count{status="ok"}']
    at.slider(key="threshold").set_value(1.0).run()
    assert not at.exception
    assert len(at.warning) == 1 and "unsure" in at.warning[0].value
    assert "clinician" in at.warning[0].value
    assert scrape(port)['webapp_prediction_latency_seconds_count{status="ok"}'] == calls
    at.number_input(key="top_k").set_value(5).run()
    ranking = next(m.value for m in at.markdown if m.value.startswith("1. "))
    assert len(ranking.splitlines()) == 5


def test_several_photos_go_through_the_batch_route(
    live_api: str, page_env: Callable[[str], int]
) -> None:
    page_env(live_api)
    at = upload(
        open_page(),
        red_png(),
        ("notes.png", b"plain text, not a photo", "image/png"),
        ("blue.jpg", encode(two_tone("blue"), "JPEG"), "image/jpeg"),
    )
    assert [s.value for s in at.subheader] == ["Red", "Blue"]
    assert len(at.error) == 1, "only the refused photo has an error"
    assert "HTTP 415" in at.error[0].value and "not a supported image" in at.error[0].value


def test_api_down_is_a_message_not_an_exception(page_env: Callable[[str], int]) -> None:
    page_env(f"http://127.0.0.1:{free_port()}")
    at = open_page()
    assert any("Not reachable" in e.value for e in at.sidebar.error)
    at = upload(at, red_png())
    main_errors = [e.value for e in at.main.error]
    assert main_errors and "not reachable" in main_errors[0]
    assert "skin-mlops serve" in main_errors[0]
    assert not at.subheader


def test_the_exporter_counts_views_uploads_clicks_results(
    live_api: str, page_env: Callable[[str], int]
) -> None:
    port = page_env(live_api)
    at = open_page()
    before = scrape(port)
    at.slider(key="threshold").set_value(1.0).run()
    at = upload(at, red_png())
    after_upload = scrape(port)
    classify_again(at)
    after = scrape(port)

    def moved(series: str, since: dict[str, float] = before) -> float:
        return after.get(series, 0.0) - since.get(series, 0.0)

    assert before["webapp_page_views_total"] >= 1
    assert moved("webapp_page_views_total") == 0, "a re-run is not a new page view"
    assert moved("webapp_uploads_total") == 1
    assert after_upload["webapp_predict_clicks_total"] == before["webapp_predict_clicks_total"]
    assert moved("webapp_predict_clicks_total") == 1
    assert moved('webapp_prediction_results_total{label="red"}') == 2, "upload + click"
    assert moved('webapp_prediction_latency_seconds_count{status="ok"}') == 2
    assert moved('webapp_prediction_latency_seconds_count{status="ok"}', after_upload) == 1
    assert moved("webapp_low_confidence_total") == 2
    assert 'webapp_prediction_results_total{label="green"}' in before, "labels pre-created at 0"


def test_a_bug_in_the_page_is_one_sentence_not_a_traceback(
    live_api: str, page_env: Callable[[str], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from skin_mlops.webapp import logic

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom: internal detail")

    page_env(live_api)
    monkeypatch.setattr(logic, "result_view", broken)
    at = upload(open_page(), red_png())
    assert not at.exception
    messages = [e.value for e in at.error]
    assert len(messages) == 1 and "Something went wrong" in messages[0]
    assert "boom" not in messages[0] and "Traceback" not in messages[0]
