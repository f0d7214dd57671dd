"""``pca-protect batch`` against a live uvicorn with the tiny model: tree mirroring, manifest, failures,
resume, kill -9 of the client, server restart mid-batch, and --local == --server byte for byte."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.client.conftest import (
    CLI_SCRIPT,
    REPO,
    SIZE,
    LiveServer,
    failed_lines,
    latest,
    manifest_lines,
    temp_files,
    visible_files,
    write_images,
)

FOLDERS = ["", "a/", "a/b/", "a/b/c/", "d/", "e/f/"]
GOOD = (
    [f"{f}photo.png" for f in FOLDERS]  # duplicate basenames in different folders
    + ["d/photo.jpg"]  # collides with d/photo.png once both become .png
    + ["img00.jpg", "img01.png", "a/img02.jpeg", "a/img03.png", "a/b/img04.webp", "a/b/img05.png"]
    + ["a/b/c/img06.bmp", "a/b/c/img07.png", "d/img08.png", "d/img09.tif", "e/img10.png", "e/f/img11.jpg"]
    + ["e/f/img12.png", "e/f/g/img13.png", "e/f/g/img14.png", "a/b/c/img15.png", "e/f/g/img16.jpg"]
)
BAD = ["a/fake.png", "a/b/truncated.jpg", "d/gone.png"]  # text, truncated JPEG, dangling symlink
IGNORED = ["README.txt", "a/b/notes.md", "e/data.json"]  # not images: never sent, never listed
STEPS = "2"


def expected_output(rel: str) -> str:
    if rel == "d/photo.jpg":  # beside d/photo.png, which keeps its name (pca_attack.io.names)
        return f"{rel}.png"
    return rel.rsplit(".", 1)[0] + ".png"


def with_certificates(outputs: set[str]) -> set[str]:
    """Every output and its certificate ``<output>.json`` beside it."""
    return outputs | {f"{rel}.json" for rel in outputs}


def images(root: Path) -> set[str]:
    return {rel for rel in visible_files(root) if not rel.endswith(".json")}


def build_tree(root: Path) -> None:
    write_images(root, GOOD)
    (root / "a/fake.png").write_text("this is not an image")
    (root / "a/b/truncated.jpg").write_bytes((root / "img00.jpg").read_bytes()[:60])
    os.symlink(root / "does-not-exist.png", root / "d/gone.png")
    for rel in IGNORED:
        (root / rel).write_text("not an image")


@pytest.fixture(scope="module")
def served_tree(live_server: LiveServer, run_cli: Any, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tree")
    src, dst = root / "src", root / "out"
    build_tree(src)
    files = [p for p in src.rglob("*") if p.is_file() or p.is_symlink()]
    assert len(files) == 30
    result = run_cli(src, dst, "--server", live_server.url, "--steps", STEPS, "--jobs", "3", "--csv")
    return {"src": src, "dst": dst, "result": result, "lines": manifest_lines(dst)}


def test_tree_is_mirrored_with_manifest_and_failures(served_tree: dict) -> None:
    src, dst, result = served_tree["src"], served_tree["dst"], served_tree["result"]
    assert result.exit_code == 1, result.output
    assert failed_lines(result.output) == set(BAD)
    assert visible_files(dst) == with_certificates({expected_output(r) for r in GOOD})
    for rel in GOOD:
        with Image.open(dst / expected_output(rel)) as im:
            assert im.format == "PNG" and im.size == (SIZE[1], SIZE[0])
    entries = latest(dst)
    assert set(entries) == set(GOOD) | set(BAD)
    fingerprints = {e["settings_fingerprint"] for e in entries.values()}
    assert len(fingerprints) == 1
    for rel in GOOD:
        e = entries[rel]
        assert e["status"] == "done" and e["error"] is None
        assert e["output"] == expected_output(rel)
        assert e["source_sha256"] == hashlib.sha256((src / rel).read_bytes()).hexdigest()
        assert e["output_sha256"] == hashlib.sha256((dst / e["output"]).read_bytes()).hexdigest()
        assert e["certificate"]["budget_ok"] is True and e["certificate"]["steps"] == int(STEPS)
        assert e["settings"]["steps"] == int(STEPS)
    for rel in BAD:
        assert entries[rel]["status"] == "failed" and entries[rel]["error"]
        assert entries[rel]["output"] is None
    assert "unsupported_image" in entries["a/fake.png"]["error"]
    assert "cannot read" in entries["d/gone.png"]["error"]
    csv_text = (dst / ".pca-manifest.csv").read_text().splitlines()
    assert len(csv_text) == 1 + len(GOOD) + len(BAD)
    assert not temp_files(dst)


def test_rerun_skips_done_and_redoes_changed(served_tree: dict, live_server: LiveServer, run_cli: Any) -> None:
    src, dst = served_tree["src"], served_tree["dst"]
    result = run_cli(src, dst, "--server", live_server.url, "--steps", STEPS, "--jobs", "3")
    assert result.exit_code == 1
    assert failed_lines(result.output) == set(BAD)
    done_lines = [e for e in manifest_lines(dst) if e["status"] == "done"]
    assert sorted(e["source"] for e in done_lines) == sorted(GOOD)  # nothing was redone

    changed = src / "a/b/img05.png"
    changed.write_bytes((src / "a/img03.png").read_bytes())
    (dst / expected_output("e/img10.png")).unlink()
    result = run_cli(src, dst, "--server", live_server.url, "--steps", STEPS, "--jobs", "3")
    assert result.exit_code == 1
    redone = [e for e in manifest_lines(dst) if e["status"] == "done"][len(GOOD) :]
    assert {(e["source"], e["reason"]) for e in redone} == {
        ("a/b/img05.png", "source changed"),
        ("e/img10.png", "output missing"),
    }


def test_local_matches_server_byte_for_byte(served_tree: dict, tiny_model: Path, run_cli: Any, tmp_path: Path) -> None:
    src, dst = served_tree["src"], served_tree["dst"]
    local_dst = tmp_path / "local"
    result = run_cli(
        src,
        local_dst,
        "--local",
        "--model",
        tiny_model,
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--steps",
        STEPS,
        "--include",
        "a/b/c/*",
        "--exclude",
        "*.bmp",
    )
    assert result.exit_code == 0, result.output
    produced = images(local_dst)
    assert produced == {"a/b/c/img07.png", "a/b/c/photo.png", "a/b/c/img15.png"}
    assert visible_files(local_dst) == with_certificates(produced)
    for rel in produced:
        assert (local_dst / rel).read_bytes() == (dst / rel).read_bytes(), rel
    local_fp = {e["settings_fingerprint"] for e in manifest_lines(local_dst)}
    assert local_fp == {served_tree["lines"][0]["settings_fingerprint"]}


def test_dst_inside_src_is_refused(tmp_path: Path, run_cli: Any) -> None:
    src = tmp_path / "src"
    write_images(src, ["x.png"])
    for dst in (src, src / "out", src / "a" / ".." / "out2"):
        result = run_cli(src, dst, "--server", "http://127.0.0.1:9", "--steps", STEPS)
        assert result.exit_code == 2
        assert "--in-place" in result.output
    assert sorted(p.name for p in src.iterdir()) == ["x.png"]


def _many(root: Path, n: int) -> list[str]:
    rels = [f"part{i % 3}/sub{i % 2}/img{i:02d}.png" for i in range(n)]
    write_images(root, rels, seed0=100)
    return rels


def _wait_for_done(dst: Path, count: int, timeout: float, alive: Any) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        if sum(e["status"] == "done" for e in manifest_lines(dst)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} files done before the deadline or the end of the run")


def test_client_killed_then_rerun_does_each_file_once(live_server: LiveServer, run_cli: Any, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    good = _many(src, 16)
    script = tmp_path / "batch_cli.py"
    script.write_text(CLI_SCRIPT)
    args = [sys.executable, str(script), str(src), str(dst), "--server", live_server.url, "--steps", "8", "--jobs", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_done(dst, 3, 180, lambda: proc.poll() is None)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = [e["source"] for e in manifest_lines(dst) if e["status"] == "done"]
    assert 3 <= len(before) < len(good), "the client must be killed mid-run"
    for rel in images(dst):  # whatever is visible is complete: renamed only after fsync
        with Image.open(dst / rel) as im:
            im.load()

    result = run_cli(src, dst, "--server", live_server.url, "--steps", "8", "--jobs", "2")
    assert result.exit_code == 0, result.output
    done = [e["source"] for e in manifest_lines(dst) if e["status"] == "done"]
    assert sorted(done) == sorted(good)  # every good file exactly once, the first run's ones not redone
    assert done[: len(before)] == before
    assert visible_files(dst) == with_certificates(set(good))
    assert not temp_files(dst)


def test_server_restart_mid_batch_finishes_through_retries(
    live_server: LiveServer, run_cli: Any, tmp_path: Path
) -> None:
    src, dst = tmp_path / "src", tmp_path / "out"
    good = _many(src, 10)
    box: dict[str, Any] = {}

    def run() -> None:
        box["result"] = run_cli(src, dst, "--server", live_server.url, "--steps", "8", "--jobs", "2", "--retries", "12")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _wait_for_done(dst, 2, 180, thread.is_alive)
    live_server.stop(signal.SIGKILL)
    live_server.start()
    thread.join(timeout=400)
    assert not thread.is_alive()
    live_server.wait_ready()
    result = box["result"]
    assert result.exit_code == 0, result.output
    done = [e["source"] for e in manifest_lines(dst) if e["status"] == "done"]
    assert sorted(done) == sorted(good)
    assert visible_files(dst) == with_certificates(set(good))


def test_outputs_are_valid_images(served_tree: dict) -> None:
    dst = served_tree["dst"]
    for rel in images(dst):
        data = (dst / rel).read_bytes()
        assert Image.open(io.BytesIO(data)).format == "PNG"
