"""Per-step progress of job items: written by the runner (throttled), shown by ``GET /v1/jobs/{id}`` while an
item runs, shared through the database by every replica, cleared when the item finishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from pca_attack.attack.progress import StepProgress
from service import job_runner
from service.app import create_app
from service.job_runner import ProgressRecorder
from service.job_store import JobStore
from service.routes.jobs import job_model
from tests.service.conftest import make_settings, png_bytes
from tests.service.test_jobs import wait_done


def _running_job(store: JobStore, items: int = 2) -> str:
    job = store.create([(f"{i}.png", b"x" * 10) for i in range(items)], {"steps": 4})
    assert len(store.claim(items)) == items  # the runner's side: items now running
    return job.id


def test_progress_of_a_running_item_is_in_the_job_and_cleared_when_done(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, retention_s=60)
    job_id = _running_job(store)
    recorder = ProgressRecorder(store, job_id, 0, interval_s=0.0)
    recorder(StepProgress(step=3, steps=4, tile=2, tiles=4, elapsed_s=5.0))  # mid-step 3 of a tiled attack
    body = job_model(store.get(job_id)).model_dump()  # type: ignore[arg-type]
    shown = body["items"][0]["progress"]
    assert shown["steps_done"] == 2 and shown["steps"] == 4 and (shown["tiles_done"], shown["tiles"]) == (2, 4)
    assert shown["fraction"] == pytest.approx(2.5 / 4) and shown["eta_s"] == pytest.approx(3.0)
    assert body["items"][1]["progress"] is None  # no event yet
    assert body["progress"]["running"] == 2 and body["progress"]["fraction"] == pytest.approx(2.5 / 4 / 2)
    store.finish_item(job_id, 0, status="done")
    body = job_model(store.get(job_id)).model_dump()  # type: ignore[arg-type]
    assert body["items"][0]["progress"] is None and body["progress"]["running"] == 1
    assert body["progress"]["fraction"] == pytest.approx(0.5)
    assert not store.set_progress(job_id, 0, {"steps_done": 1})  # a finished item takes no more progress


def test_progress_writes_are_throttled_per_item(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, retention_s=60)
    job_id = _running_job(store, items=1)
    recorder = ProgressRecorder(store, job_id, 0, interval_s=60.0)
    for step in range(1, 41):
        recorder(StepProgress(step=step, steps=40, tile=1, tiles=1, elapsed_s=0.01 * step))
    assert recorder.writes == 1  # the first event only, within the interval
    assert store.get(job_id).items[0].progress["steps_done"] == 1  # type: ignore[union-attr,index]


def test_another_replica_reads_the_progress(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    writer, reader = JobStore(url, tmp_path, retention_s=60), JobStore(url, tmp_path, retention_s=60)
    job_id = _running_job(writer, items=1)
    writer.set_progress(job_id, 0, StepProgress(step=1, steps=2, tile=1, tiles=1, elapsed_s=1.0).summary())
    assert reader.get(job_id).items[0].progress["steps_done"] == 1  # type: ignore[union-attr,index]


def test_a_database_without_the_progress_column_is_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    old = JobStore(url, tmp_path, retention_s=60)
    job_id = old.create([("a.png", b"x")], {"steps": 1}).id
    with old.engine.begin() as conn:  # as a database written before progress existed
        conn.execute(text("ALTER TABLE items DROP COLUMN progress_json"))
    old.close()
    store = JobStore(url, tmp_path, retention_s=60)
    assert store.get(job_id).items[0].progress is None  # type: ignore[union-attr]
    store.claim(1)
    assert store.set_progress(job_id, 0, {"steps_done": 0})


def test_a_job_reports_every_step_of_each_item(
    tiny_vae: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the app: the runner's listener sees steps 1..N of each item, and the job as GET shows it at
    that moment carries the item's progress (captured from inside the attack)."""
    monkeypatch.setattr(job_runner, "PROGRESS_INTERVAL_S", 0.0)
    seen: list[tuple[int, dict[str, Any] | None]] = []
    original = JobStore.set_progress

    def spy(self: JobStore, job_id: str, index: int, progress: dict[str, Any]) -> bool:
        written = original(self, job_id, index, progress)
        item = job_model(self.get(job_id)).items[index]  # type: ignore[arg-type]
        seen.append((index, None if item.progress is None else item.progress.model_dump()))
        return written

    monkeypatch.setattr(JobStore, "set_progress", spy)
    with TestClient(create_app(make_settings(tiny_vae, tmp_path / "data"))) as client:
        files = [("files", (f"{i}.png", png_bytes(32, 24, seed=i), "image/png")) for i in range(2)]
        job = client.post("/v1/jobs", files=files, data={"steps": "3", "eps": "8"}).json()
        body = wait_done(client, job["id"])
    assert body["status"] == "done" and body["progress"]["fraction"] == 1.0
    assert all(item["progress"] is None for item in body["items"])
    for index in (0, 1):
        steps = [p["steps_done"] for i, p in seen if i == index and p is not None]
        assert steps == [1, 2, 3], seen
        assert all(p["steps"] == 3 and p["tiles"] == 1 for i, p in seen if i == index and p is not None)
