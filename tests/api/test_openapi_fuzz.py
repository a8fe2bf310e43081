"""schemathesis against the service's own OpenAPI spec (a live uvicorn server): zero 5xx.

Every operation gets generated requests (valid and invalid query values, random
multipart files, missing/odd bearer tokens); responses must not be 5xx and must match
the documented status codes, content types and schemas.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from skin_mlops.api.main import create_app
from utils.model_factory import publish_tiny_export
from utils.servers import make_settings, start_live_server, stop_live_server


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Iterator[str]:
    """Base URL of a live server for the tiny model."""
    link = tmp_path_factory.mktemp("fuzz") / "runs" / "skin5-current"
    publish_tiny_export(link, tiny_models.v1, "v1")
    live = start_live_server(make_settings(link, max_upload_bytes=256 * 1024))
    yield live.url
    stop_live_server(live)


# The spec does not depend on the model: build it from an app that is never started.
# (schemathesis' lazy ``from_fixture`` loader does not work with pytest 9.)
schema = schemathesis.openapi.from_dict(create_app(make_settings("unused-model-dir")).openapi())


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_server_errors_and_documented_responses(case: schemathesis.Case, live_url: str) -> None:
    case.call_and_validate(
        base_url=live_url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
