"""Fault injection into the served model through its own seam: the ONNX Runtime session.

:class:`FaultySession` wraps the real session of a loaded tiny model. It counts the images
that reached the model, and can block (until released), raise, or return the wrong number
of rows. :func:`inject` puts it behind the model an app is serving.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np
from fastapi import FastAPI

from skin_mlops.api.model_runtime import LoadedModel
from skin_mlops.api.services import Services


class FaultySession:
    """An ``onnxruntime.InferenceSession`` stand-in around a real one."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls = 0
        self.images = 0
        self.error: BaseException | None = None
        self.drop_a_row = False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def block(self) -> threading.Event:
        """Make ``run`` wait until the returned event is set (30 s at most)."""
        self.gate = threading.Event()
        return self.gate

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (batch,) = feeds.values()
        self.calls += 1
        self.images += len(batch)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.error is not None:
            raise self.error
        outputs = self.inner.run(output_names, feeds)
        if self.drop_a_row:
            outputs = [np.asarray(out)[:-1] for out in outputs]
        return outputs

    def get_inputs(self):  # noqa: ANN201
        return self.inner.get_inputs()

    def get_outputs(self):  # noqa: ANN201
        return self.inner.get_outputs()


class BrokenPostprocessing(LoadedModel):
    """A loaded model whose probabilities step raises (post-processing fault)."""

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        raise ValueError("injected post-processing failure")


def faulty(model: LoadedModel) -> tuple[LoadedModel, FaultySession]:
    """A copy of ``model`` running on a :class:`FaultySession` around its session."""
    session = FaultySession(model.session)
    return dataclasses.replace(model, session=session), session


def services_of(app: FastAPI) -> Services:
    return app.state.services


def inject(app: FastAPI) -> FaultySession:
    """Serve the app's current model through a :class:`FaultySession`; return the session."""
    services = services_of(app)
    assert services.runtime.current is not None, "the app serves no model yet"
    model, session = faulty(services.runtime.current)
    services.runtime.current = model
    return session


def wait_until(check: Callable[[], bool], timeout_s: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} not met within {timeout_s:g} s"
        time.sleep(0.02)
