"""The web app's HTTP client against real servers.

Success paths and the API's own refusals use the real API app (uvicorn on loopback,
serving the tiny model); faults the API never produces on purpose (slow answers, 5xx,
broken JSON) use a stdlib HTTP server; "connection refused" uses a port nobody listens on.
"""

from __future__ import annotations

import json

import pytest

from skin_mlops.api.schemas import LabelProbability
from skin_mlops.webapp.client import (
    ApiBadResponse,
    ApiClient,
    ApiRefused,
    ApiServerError,
    ApiTimeout,
    ApiUnreachable,
    UploadFile,
    top_k,
)
from utils.images import encode, two_tone
from utils.model_factory import LABELS
from utils.servers import FaultServer, Reply, free_port


def photo(label: str, fmt: str = "PNG") -> UploadFile:
    return UploadFile(
        f"{label}.{fmt.lower()}", encode(two_tone(label), fmt), f"image/{fmt.lower()}"
    )


# --- top_k ---------------------------------------------------------------------------------


def test_top_k_ranks_a_mapping_most_probable_first() -> None:
    ranked = top_k({"a": 0.1, "b": 0.6, "c": 0.3}, 2)
    assert [(r.label, r.probability) for r in ranked] == [("b", 0.6), ("c", 0.3)]


def test_top_k_breaks_ties_by_label_and_caps_at_the_label_count() -> None:
    items = [LabelProbability(label=name, probability=0.25) for name in ("d", "b", "c", "a")]
    assert [r.label for r in top_k(items, 10)] == ["a", "b", "c", "d"]


def test_top_k_refuses_k_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        top_k({"a": 1.0}, 0)


# --- the real API ------------------------------------------------------------------------


def test_predict_returns_the_typed_prediction(live_api: str) -> None:
    with ApiClient(live_api) as client:
        prediction = client.predict(photo("red"), top_k=3)
    assert prediction.label == "red"
    assert prediction.model_version == "v1"
    assert [p.label for p in prediction.top_k][0] == "red"
    assert len(prediction.top_k) == 3
    probabilities = [p.probability for p in prediction.top_k]
    assert probabilities == sorted(probabilities, reverse=True)
    assert prediction.confidence == pytest.approx(probabilities[0])


def test_asking_for_every_label_lets_top_k_rerank_without_a_call(live_api: str) -> None:
    with ApiClient(live_api) as client:
        prediction = client.predict(photo("green"), top_k=100)
    assert sorted(p.label for p in prediction.top_k) == sorted(LABELS)
    assert sum(p.probability for p in prediction.top_k) == pytest.approx(1.0, abs=1e-4)
    assert top_k(prediction.top_k, 1)[0].label == "green"


def test_predict_batch_answers_each_file_and_keeps_a_bad_one_apart(live_api: str) -> None:
    files = [photo("red"), UploadFile("notes.txt", b"not an image", "text/plain"), photo("blue")]
    with ApiClient(live_api) as client:
        batch = client.predict_batch(files, top_k=2)
    assert (batch.succeeded, batch.failed) == (2, 1)
    by_index = {item.index: item for item in batch.items}
    assert by_index[0].prediction is not None and by_index[0].prediction.label == "red"
    assert by_index[2].prediction is not None and by_index[2].prediction.label == "blue"
    assert by_index[1].status_code == 415 and "not a supported image" in (by_index[1].error or "")


def test_status_reports_ready_with_the_model_version_and_labels(live_api: str) -> None:
    with ApiClient(live_api) as client:
        status = client.status()
        info = client.model_info()
    assert status.reachable and status.ready
    assert status.model_version == "v1" == info.model_version
    assert status.labels == tuple(LABELS)
    assert status.image_size == info.image_size


@pytest.mark.parametrize(
    ("data", "status_code", "words"),
    [
        (b"plain text, not a photo", 415, "not a supported image"),
        (encode(two_tone("red"), "JPEG")[:200], 422, "corrupt"),
        (b"", 422, "empty"),
    ],
)
def test_the_apis_refusals_carry_its_own_words(
    live_api: str, data: bytes, status_code: int, words: str
) -> None:
    with ApiClient(live_api) as client, pytest.raises(ApiRefused) as caught:
        client.predict(UploadFile("x.jpg", data, "image/jpeg"))
    assert caught.value.status_code == status_code
    assert words in caught.value.detail


def test_an_oversized_upload_is_refused_with_413(live_api: str) -> None:
    big = UploadFile("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * 1024 * 1024), "image/png")
    with ApiClient(live_api) as client, pytest.raises(ApiRefused) as caught:
        client.predict(big)
    assert caught.value.status_code == 413
    assert "limit" in caught.value.detail


def test_a_request_validation_error_becomes_one_line(live_api: str) -> None:
    with ApiClient(live_api) as client, pytest.raises(ApiRefused) as caught:
        client.predict(photo("red"), top_k=0)
    assert caught.value.status_code == 422
    assert "top_k" in caught.value.detail and "\n" not in caught.value.detail


def test_fastapis_list_detail_becomes_one_line(fault_server: FaultServer) -> None:
    body = {"detail": [{"loc": ["query", "top_k"], "msg": "Input should be >= 1"}, {"msg": "x"}]}
    fault_server.replies["/predict"] = Reply(422, json.dumps(body).encode())
    with ApiClient(fault_server.url) as client, pytest.raises(ApiRefused) as caught:
        client.predict(photo("red"))
    assert caught.value.detail == "query.top_k: Input should be >= 1"


# --- faults --------------------------------------------------------------------------------


def test_connection_refused_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with ApiClient(url) as client:
        with pytest.raises(ApiUnreachable) as caught:
            client.predict(photo("red"))
        status = client.status()
    assert "connection refused" in caught.value.detail
    assert url in caught.value.detail
    assert caught.value.status_code is None
    assert not status.reachable and not status.ready and "connection refused" in status.detail


def test_a_slow_prediction_times_out_and_is_not_resent(fault_server: FaultServer) -> None:
    fault_server.replies["/predict"] = Reply(200, b"{}", delay_s=1.5)
    with ApiClient(fault_server.url, read_timeout_s=0.3) as client:
        with pytest.raises(ApiTimeout) as caught:
            client.predict(photo("red"))
    assert "within 0.3 s" in caught.value.detail
    assert fault_server.hits["/predict"] == 1, (
        "a POST that may have reached the model is not resent"
    )


def test_a_slow_read_is_retried_once_then_times_out(fault_server: FaultServer) -> None:
    fault_server.replies["/model"] = Reply(200, b"{}", delay_s=1.0)
    with ApiClient(fault_server.url, read_timeout_s=0.2) as client, pytest.raises(ApiTimeout):
        client.model_info()
    assert fault_server.hits["/model"] == 2


@pytest.mark.parametrize("status_code", [413, 415, 422])
def test_4xx_with_a_json_detail_is_refused_with_that_detail(
    fault_server: FaultServer, status_code: int
) -> None:
    detail = f"refused for a reason ({status_code})"
    fault_server.replies["/predict"] = Reply(status_code, json.dumps({"detail": detail}).encode())
    with ApiClient(fault_server.url) as client, pytest.raises(ApiRefused) as caught:
        client.predict(photo("red"))
    assert (caught.value.status_code, caught.value.detail) == (status_code, detail)


def test_5xx_is_a_server_error_with_the_body_or_reason(fault_server: FaultServer) -> None:
    fault_server.replies["/predict"] = Reply(500, b"Internal Server Error", "text/plain")
    with ApiClient(fault_server.url) as client, pytest.raises(ApiServerError) as caught:
        client.predict(photo("red"))
    assert caught.value.status_code == 500
    assert caught.value.detail == "Internal Server Error"
    assert fault_server.hits["/predict"] == 1


def test_a_503_read_is_retried_once(fault_server: FaultServer) -> None:
    fault_server.replies["/model"] = Reply(503, b'{"detail": "no model loaded yet"}')
    with ApiClient(fault_server.url) as client, pytest.raises(ApiServerError) as caught:
        client.model_info()
    assert caught.value.detail == "no model loaded yet"
    assert fault_server.hits["/model"] == 2


def test_ready_503_is_an_answer_not_an_error(fault_server: FaultServer) -> None:
    body = json.dumps({"ready": False, "detail": "model loading"}).encode()
    fault_server.replies["/ready"] = Reply(503, body)
    with ApiClient(fault_server.url) as client:
        status = client.status()
    assert status.reachable and not status.ready and status.detail == "model loading"


@pytest.mark.parametrize(
    ("body", "words"),
    [(b'{"label": "red", "confid', "not JSON"), (b'{"label": "red"}', "not a valid Prediction")],
)
def test_malformed_json_is_a_bad_response(
    fault_server: FaultServer, body: bytes, words: str
) -> None:
    fault_server.replies["/predict"] = Reply(200, body)
    with ApiClient(fault_server.url) as client, pytest.raises(ApiBadResponse) as caught:
        client.predict(photo("red"))
    assert words in caught.value.detail
