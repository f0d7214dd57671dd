"""Issue 11 item 3 (rest): a running /v1/protect whose client went away stops between PGD steps."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pca_attack import decode_image
from pca_attack.options import ProtectOptions
from service.worker import AbandonedError, ProtectRequest
from tests.service.conftest import png_bytes


def _request(steps: int) -> ProtectRequest:
    options = ProtectOptions(steps=steps)
    return ProtectRequest(decode_image(png_bytes(64, 64)), options.to_attack_config())


def _count_steps(client: TestClient, abandon_after: int | None, req: ProtectRequest) -> list[int]:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    original, steps = engine.protect, []

    def counting(*args: Any, progress: Any = None, **kwargs: Any) -> Any:
        def spy(indices: list[int], event: Any) -> None:
            if event.end_of_step:
                steps.append(event.step)
                if abandon_after is not None and event.step >= abandon_after:
                    req.abandoned.set()  # the route does this when the client disconnects
            progress(indices, event)

        return original(*args, progress=spy, **kwargs)

    engine.protect = counting
    return steps


def test_abandoned_request_stops_between_steps(client: TestClient) -> None:
    req = _request(steps=10)
    steps = _count_steps(client, abandon_after=2, req=req)
    future = client.app.state.worker.submit(req)  # type: ignore[attr-defined]
    with pytest.raises(AbandonedError, match="client went away"):
        future.result(timeout=60)
    assert steps == [1, 2]  # stopped right after the step during which it was abandoned, not at 10


def test_a_request_not_abandoned_runs_every_step(client: TestClient) -> None:
    req = _request(steps=4)
    steps = _count_steps(client, abandon_after=None, req=req)
    result = client.app.state.worker.submit(req).result(timeout=60)  # type: ignore[attr-defined]
    assert steps == [1, 2, 3, 4] and result.certificate.budget_ok


def test_batch_mates_of_an_abandoned_request_still_finish(client: TestClient) -> None:
    worker = client.app.state.worker  # type: ignore[attr-defined]
    gone, kept = _request(steps=3), _request(steps=3)
    gone.abandoned.set()
    gate = threading.Event()
    blocker = worker.call(lambda _engine: gate.wait(30))  # hold the worker so both share one micro-batch
    futures = worker.submit_many([gone, kept])
    gate.set()
    blocker.result(timeout=30)
    assert futures[1].result(timeout=60).certificate.budget_ok
