"""Memory admission in the service (issue 12): with PCA_MAX_MEMORY each micro-batch is planned against what
the process holds when it starts (warm-up, imports and earlier certificates included), and the heap is bounded
from the worker's start, as an explicit CPU budget does in the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

import service.worker as worker_module
from pca_attack import AttackConfig, Engine
from pca_attack.io.images import DecodedImage, decode_image
from service.worker import EngineWorker, ProtectRequest
from tests.service.conftest import png_bytes


def _image() -> DecodedImage:
    return decode_image(png_bytes(64, 48))


@pytest.mark.parametrize("explicit", [True, False])
def test_each_batch_is_planned_against_what_the_process_holds_now(
    tiny_vae: Path, monkeypatch: pytest.MonkeyPatch, explicit: bool
) -> None:
    engine = Engine.from_spec(str(tiny_vae), device="cpu", with_decoder=False)
    load_time = engine.baseline_memory
    if explicit:
        engine.max_memory = load_time + 2_000_000_000  # as service.app sets PCA_MAX_MEMORY, after the load
    bounded: list[bool] = []
    monkeypatch.setattr(worker_module, "bound_heap", lambda: bounded.append(True) or True)
    grown = load_time + 300_000_000  # e.g. 0.3 GB more since the load (imports, warm-up, earlier work)
    monkeypatch.setattr(worker_module, "memory_in_use", lambda device: grown)
    seen: list[float] = []
    plan = engine.plan
    monkeypatch.setattr(engine, "plan", lambda images, config: seen.append(engine.available_memory()) or plan(
        images, config))
    worker = EngineWorker(engine)
    worker.start()
    try:
        request = ProtectRequest(image=_image(), config=AttackConfig(steps=1))
        result = worker.submit(request).result(timeout=300)
    finally:
        worker.stop()
    assert result.certificate.budget_ok
    assert bounded == ([True] if explicit else [])
    if explicit:  # the budget less what the process holds now, not less what it held at load
        assert seen == [pytest.approx(2_000_000_000 - 300_000_000)]
    else:  # the default budget (no PCA_MAX_MEMORY): unchanged
        assert seen == [pytest.approx(engine.available_memory())] and engine.baseline_memory == load_time
