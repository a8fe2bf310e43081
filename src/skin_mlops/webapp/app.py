"""The Streamlit page (``skin-mlops webapp`` runs this file). It only draws.

Every decision (which label to show, when to warn, what to say when the API fails) lives in
:mod:`skin_mlops.webapp.logic`; HTTP lives in :mod:`skin_mlops.webapp.client`; the
Prometheus exporter in :mod:`skin_mlops.webapp.metrics`. Streamlit re-runs this file top
to bottom on every interaction; a photo is sent once, when it arrives, and its answer kept
in ``st.session_state``, so moving the threshold or K re-draws without calling the API.
"""

from __future__ import annotations

import logging
import uuid

import streamlit as st

from skin_mlops.core.config import Settings, get_settings
from skin_mlops.core.errors import ConfigError
from skin_mlops.webapp import logic
from skin_mlops.webapp.client import ApiClient, ApiStatus, UploadFile
from skin_mlops.webapp.metrics import WebappMetrics, process_metrics


@st.cache_resource(show_spinner=False)
def _client(base_url: str, read_timeout_s: float) -> ApiClient:
    """One pooled HTTP client per process (per API address)."""
    return ApiClient(base_url, read_timeout_s=read_timeout_s)


@st.cache_resource(show_spinner=False)
def _metrics(port: int, host: str) -> WebappMetrics:
    """One exporter per process: a re-run or a second session reuses it."""
    return process_metrics(port, host)


@st.cache_data(show_spinner=False, ttl=2, max_entries=8)
def _status(base_url: str, read_timeout_s: float) -> ApiStatus:
    """The API's state, asked at most every 2 s (every widget change re-runs the page)."""
    return _client(base_url, read_timeout_s).status()


@st.cache_data(show_spinner=False, max_entries=64)
def _display(data: bytes, crop_size: int | None) -> tuple[bytes | None, str | None]:
    """The photo to show (JPEG bytes) or why not; cached so a re-run does not re-encode."""
    shown = logic.display_image(data, crop_size=crop_size)
    return (logic.image_bytes(shown.image) if shown.image else None), shown.problem


def _sidebar(settings: Settings, status: ApiStatus) -> tuple[float, int]:
    """The API's state and the two controls; returns (threshold, K)."""
    with st.sidebar:
        st.header("Prediction service")
        if status.ready:
            st.success(f"Ready: model **{status.model_version}**")
        elif status.reachable:
            st.warning(f"Reachable, but no model is ready: {status.detail}")
        else:
            st.error(f"Not reachable: {status.detail}")
        st.caption(f"API: `{settings.api_base_url}`")
        st.header("Display")
        threshold = st.slider(
            "Uncertainty threshold",
            min_value=0.0,
            max_value=1.0,
            value=float(settings.uncertainty_threshold),
            step=0.05,
            key="threshold",
            help="Below this top probability the page warns that the model is unsure.",
        )
        n_labels = len(status.labels) or 100
        k = st.number_input(
            "Labels to list (Top-K)",
            min_value=1,
            max_value=max(n_labels, 1),
            value=min(settings.webapp_top_k, n_labels),
            step=1,
            key="top_k",
        )
    return threshold, int(k)


def _show_result(outcome: logic.FileOutcome, *, k: int, threshold: float) -> None:
    """One photo's answer: label, confidence, warning, Top-K list and bar chart."""
    if outcome.error is not None:
        st.error(outcome.error)
        return
    assert outcome.prediction is not None
    view = logic.result_view(outcome.prediction, k=k, threshold=threshold)
    st.subheader(view.title)
    st.markdown(f"Probability **{view.confidence:.0%}**")
    if view.warning:
        st.warning(view.warning, icon=":material/warning:")
    st.markdown(
        "\n".join(
            f"{rank}. {logic.plain_label(item.label)}: {item.probability:.1%}"
            for rank, item in enumerate(view.ranked, start=1)
        )
    )
    st.vega_lite_chart(view.chart, width="stretch")
    st.caption(f"Answered by model {view.model_version} in {view.inference_ms:.0f} ms")


def main() -> None:
    """Draw the page."""
    st.set_page_config(
        page_title="Skin lesion classifier", page_icon=":material/dermatology:", layout="wide"
    )
    try:
        settings = get_settings()
    except ConfigError as exc:
        st.error(f"The web app's configuration is invalid: {exc}")
        st.stop()
    metrics = _metrics(settings.webapp_metrics_port, settings.webapp_metrics_host)
    client = _client(settings.api_base_url, settings.webapp_api_timeout_s)
    state = st.session_state
    if not state.get("page_view_counted"):
        state["page_view_counted"] = True
        metrics.page_views.inc()

    st.title("Skin lesion classifier")
    st.info(logic.DISCLAIMER, icon=":material/medical_information:")
    status = _status(settings.api_base_url, settings.webapp_api_timeout_s)
    metrics.declare_labels(status.labels)
    threshold, k = _sidebar(settings, status)

    uploads = st.file_uploader(
        "Photos of skin lesions (JPEG or PNG; several at once are classified together)",
        type=["jpg", "jpeg", "png"],
        accept_multiple_files=True,
        key="uploads",
    )
    uploads = list(uploads or [])
    seen: set[str] = state.setdefault("seen_uploads", set())
    for upload in uploads:
        if upload.file_id not in seen:
            seen.add(upload.file_id)
            metrics.uploads.inc()

    # New photos are classified as soon as they arrive; "Classify again" re-asks for all of
    # them (e.g. after the API loaded a new model, or came back after an outage).
    results: dict[str, logic.FileOutcome] = state.setdefault("results", {})
    again = st.button("Classify again", disabled=not uploads, key="classify")
    if again:
        metrics.predict_clicks.inc()
    to_send = uploads if again else [u for u in uploads if u.file_id not in results]
    if to_send:
        files = [
            UploadFile(u.name, u.getvalue(), u.type or "application/octet-stream") for u in to_send
        ]
        with st.spinner("Asking the model..."):
            outcome = logic.classify(client, files)
        metrics.observe_call(outcome.status, outcome.seconds)
        if outcome.status != "ok":
            _status.clear()  # the sidebar shows the outage from the next run on
        for prediction in outcome.predictions:
            metrics.record_result(
                logic.metric_label(prediction.label, status.labels),
                low_confidence=prediction.confidence < threshold,
            )
        results.update({u.file_id: r for u, r in zip(to_send, outcome.files, strict=True)})

    shown_ids = {u.file_id for u in uploads}
    call_errors = {r.error for i, r in results.items() if i in shown_ids and r.call_failed}
    for message in sorted(call_errors, key=str):
        st.error(message)
    for upload in uploads:
        st.divider()
        left, right = st.columns([1, 1])
        with left:
            picture, problem = _display(upload.getvalue(), status.image_size)
            if picture is not None:
                st.image(
                    picture,
                    caption=f"{upload.name} (upright; the outlined square is what the model sees)",
                )
            else:
                st.caption(f"{upload.name}: cannot be shown ({problem})")
        with right:
            answer = results[upload.file_id]
            if answer.call_failed:
                st.caption("No answer (see the message above).")
            else:
                _show_result(answer, k=k, threshold=threshold)


def run() -> None:
    """Draw the page; a bug becomes one logged incident and one sentence, never a trace."""
    try:
        main()
    except Exception:  # Streamlit's own stop/rerun signals are BaseExceptions: not caught
        incident = uuid.uuid4().hex[:8]
        logging.getLogger("skin_mlops.webapp").exception("page error %s", incident)
        st.error(
            f"Something went wrong while drawing this page (error {incident}, logged by the "
            "web app). Reload the page; if it happens again, report this id."
        )


run()
