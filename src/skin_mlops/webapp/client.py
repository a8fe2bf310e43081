"""The web app's only way to the prediction API: one ``httpx.Client`` and typed answers.

Results are the API's own pydantic response models (:mod:`skin_mlops.api.schemas`, plain
pydantic: importing them pulls in neither FastAPI nor ONNX Runtime), so the page and the
service cannot drift apart. Every failure is one :class:`ApiError` subclass that carries
the HTTP status (when there was one) and the API's own ``detail`` line:

=========================  ==============================================================
:class:`ApiUnreachable`    nothing listens (connection refused, unknown host)
:class:`ApiTimeout`        connected, but no answer within the read timeout
:class:`ApiRefused`        4xx: the API refused this input (413, 415, 422, ...)
:class:`ApiServerError`    5xx: the API failed or has no model loaded (503)
:class:`ApiBadResponse`    an answer that is not the JSON the API's schema promises
=========================  ==============================================================

Retries: a refused connection is retried for every method (nothing reached the server, so
even a ``POST`` is safe to resend); reads (``GET``) are also retried once after a timeout
or a 502/503/504. A ``POST /predict`` that timed out is *not* resent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from skin_mlops.api.schemas import (
    BatchPrediction,
    Health,
    LabelProbability,
    ModelInfo,
    Prediction,
    Readiness,
)

__all__ = [
    "ApiBadResponse",
    "ApiClient",
    "ApiError",
    "ApiRefused",
    "ApiServerError",
    "ApiStatus",
    "ApiTimeout",
    "ApiUnreachable",
    "BatchPrediction",
    "LabelProbability",
    "ModelInfo",
    "Prediction",
    "UploadFile",
    "top_k",
]

#: What a call ended as; the ``status`` label of ``webapp_prediction_latency_seconds``.
CallStatus = Literal["ok", "refused", "server_error", "timeout", "unreachable", "bad_response"]
CALL_STATUSES: tuple[CallStatus, ...] = (
    "ok",
    "refused",
    "server_error",
    "timeout",
    "unreachable",
    "bad_response",
)

_Model = TypeVar("_Model", bound=BaseModel)
_RETRYABLE_READ_STATUS = frozenset({502, 503, 504})


class ApiError(Exception):
    """A call to the prediction API did not give the expected answer.

    Attributes:
        detail: one line saying what went wrong (the API's own words when it sent some).
        status_code: the HTTP status, or ``None`` when no response arrived.
    """

    status: CallStatus = "server_error"

    def __init__(self, detail: str, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code


class ApiUnreachable(ApiError):
    """Nothing answers at the API's address."""

    status: CallStatus = "unreachable"


class ApiTimeout(ApiError):
    """The API took longer than the read timeout."""

    status: CallStatus = "timeout"


class ApiRefused(ApiError):
    """The API refused the request (4xx): the input is at fault."""

    status: CallStatus = "refused"


class ApiServerError(ApiError):
    """The API failed (5xx), e.g. 503 while no model is loaded."""

    status: CallStatus = "server_error"


class ApiBadResponse(ApiError):
    """The API answered, but not with the JSON its schema promises."""

    status: CallStatus = "bad_response"


@dataclass(frozen=True)
class UploadFile:
    """One photo to send: its name, bytes and MIME type."""

    name: str
    data: bytes
    mime_type: str = "application/octet-stream"


@dataclass(frozen=True)
class ApiStatus:
    """What the sidebar shows: can we reach the API, is a model ready, which one."""

    reachable: bool
    ready: bool
    model_version: str | None = None
    labels: tuple[str, ...] = ()
    image_size: int | None = None
    detail: str | None = None


def top_k(
    probabilities: Mapping[str, float] | Iterable[LabelProbability], k: int
) -> list[LabelProbability]:
    """The ``k`` most probable labels, most probable first (ties: alphabetical).

    Args:
        probabilities: ``{label: probability}`` or the API's ``LabelProbability`` items.
        k: how many to keep; values above the label count keep them all.

    Raises:
        ValueError: ``k`` is below 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    if isinstance(probabilities, Mapping):
        items = [LabelProbability(label=lab, probability=p) for lab, p in probabilities.items()]
    else:
        items = list(probabilities)
    return sorted(items, key=lambda item: (-item.probability, item.label))[:k]


def _detail_of(response: httpx.Response) -> str:
    """The API's ``detail`` (one line), else a short rendering of what came back."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str) and detail.strip():
        return detail.strip().splitlines()[0][:500]
    if isinstance(detail, list) and detail:  # FastAPI request validation: [{loc, msg}, ...]
        first = detail[0]
        if isinstance(first, dict) and "msg" in first:
            where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
            return f"{where}: {first['msg']}" if where else str(first["msg"])
    text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    return text or f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _parse(response: httpx.Response, model: type[_Model]) -> _Model:
    """A 2xx response -> ``model``, or :class:`ApiBadResponse`."""
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        kind = "not JSON" if "json_invalid" in str(exc) else f"not a valid {model.__name__}"
        raise ApiBadResponse(
            f"the API answered HTTP {response.status_code} with a body that is {kind}",
            response.status_code,
        ) from None


class ApiClient:
    """Typed calls to the prediction API over one pooled ``httpx.Client``.

    Args:
        base_url: e.g. ``http://localhost:8000`` (``API_BASE_URL``).
        read_timeout_s: how long one call may wait for its answer.
        connect_timeout_s: how long to wait for the TCP connection.
        transport: an ``httpx`` transport (tests pass ``httpx.MockTransport``); by default
            a real one that retries refused connections ``connect_retries`` times.
    """

    def __init__(
        self,
        base_url: str,
        *,
        read_timeout_s: float = 30.0,
        connect_timeout_s: float = 3.0,
        connect_retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport or httpx.HTTPTransport(retries=connect_retries),
            headers={"Accept": "application/json", "User-Agent": "skin-mlops-webapp"},
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- transport ------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, int] | None = None,
        files: Any = None,
    ) -> httpx.Response:
        """One request; transport failures become :class:`ApiError` subclasses."""
        attempts = 2 if method == "GET" else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http.request(method, path, params=params, files=files)
            except httpx.ConnectTimeout:
                raise ApiUnreachable(
                    f"the prediction API at {self.base_url} did not accept a connection within "
                    f"{self._http.timeout.connect:g} s"
                ) from None
            except httpx.TimeoutException:
                if last:
                    raise ApiTimeout(
                        f"the prediction API did not answer within {self._http.timeout.read:g} s"
                    ) from None
                continue
            except (httpx.ConnectError, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise ApiUnreachable(
                    f"cannot reach the prediction API at {self.base_url} ({_reason(exc)})"
                ) from None
            except httpx.TransportError as exc:  # reset mid-answer, protocol error
                if last:
                    raise ApiUnreachable(
                        f"the connection to the prediction API at {self.base_url} broke "
                        f"({_reason(exc)})"
                    ) from None
                continue
            if response.status_code in _RETRYABLE_READ_STATUS and not last:
                time.sleep(0.2)
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _checked(self, response: httpx.Response) -> httpx.Response:
        """Raise the error class for a non-2xx response, carrying the API's ``detail``."""
        if response.is_success:
            return response
        detail = _detail_of(response)
        if response.status_code >= 500:
            raise ApiServerError(detail, response.status_code)
        raise ApiRefused(detail, response.status_code)

    # --- reads ----------------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /health``: the API process answers."""
        return _parse(self._checked(self._send("GET", "/health")), Health)

    def ready(self) -> Readiness:
        """``GET /ready``: a model is loaded (a 503 with its reason is a valid answer)."""
        response = self._send("GET", "/ready")
        if response.status_code == 503:
            return _parse(response, Readiness)
        return _parse(self._checked(response), Readiness)

    def model_info(self) -> ModelInfo:
        """``GET /model``: the served model's version, labels and metrics."""
        return _parse(self._checked(self._send("GET", "/model")), ModelInfo)

    def status(self) -> ApiStatus:
        """Reachability, readiness and the served model, for display; never raises."""
        try:
            readiness = self.ready()
        except ApiError as exc:
            return ApiStatus(
                reachable=not isinstance(exc, ApiUnreachable | ApiTimeout),
                ready=False,
                detail=exc.detail,
            )
        if not readiness.ready:
            return ApiStatus(reachable=True, ready=False, detail=readiness.detail)
        try:
            info = self.model_info()
        except ApiError as exc:
            return ApiStatus(
                reachable=True, ready=True, model_version=readiness.model_version, detail=exc.detail
            )
        return ApiStatus(
            reachable=True,
            ready=True,
            model_version=info.model_version,
            labels=tuple(info.labels),
            image_size=info.image_size,
        )

    # --- predictions ----------------------------------------------------------------------

    def predict(self, upload: UploadFile, *, top_k: int = 3) -> Prediction:
        """``POST /predict`` one photo; ``top_k`` labels ranked in the answer."""
        response = self._send(
            "POST",
            "/predict",
            params={"top_k": top_k},
            files={"file": (upload.name, upload.data, upload.mime_type)},
        )
        return _parse(self._checked(response), Prediction)

    def predict_batch(self, uploads: Sequence[UploadFile], *, top_k: int = 3) -> BatchPrediction:
        """``POST /predict/batch`` several photos; a bad photo gets its own item error."""
        if not uploads:
            raise ValueError("predict_batch needs at least one file")
        files = [("files", (u.name, u.data, u.mime_type)) for u in uploads]
        response = self._send("POST", "/predict/batch", params={"top_k": top_k}, files=files)
        return _parse(self._checked(response), BatchPrediction)


def _reason(exc: Exception) -> str:
    """A short reason for a transport error (``Connection refused`` rather than errno text)."""
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text.split("] ")[-1][:120]
