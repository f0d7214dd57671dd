"""``pca_client.runner`` with a fake processor (no model): planning, atomic writes, resume rules,
manifest repair, Ctrl-C, fatal aborts, in-place mode and watch mode."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pca_attack.io.files import atomic_write
from pca_client.manifest import MANIFEST_NAME
from pca_client.plan import BatchError, check_folders, plan_tasks, wanted
from pca_client.runner import BatchRunner
from tests.client.conftest import manifest_lines, temp_files, visible_files, write_images

SETTINGS = {"steps": 2, "format": "png"}


class Fake:
    """Processor returning the source bytes reversed; records calls; can fail or interrupt."""

    def __init__(self, fail: set[str] | None = None, interrupt_after: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or set()
        self.interrupt_after = interrupt_after
        self.lock = threading.Lock()

    def __call__(self, path: Path, data: bytes) -> tuple[bytes, str, dict[str, Any]]:
        with self.lock:
            self.calls.append(path.name)
            n = len(self.calls)
        if self.interrupt_after is not None and n > self.interrupt_after:
            raise KeyboardInterrupt
        if path.name in self.fail:
            raise ValueError(f"cannot protect {path.name}")
        return data[::-1], ".png", {"linf_255": 1.0, "budget_ok": True}


def runner(src: Path, dst: Path, proc: Any, **kw: Any) -> BatchRunner:
    return BatchRunner(src, dst, proc, settings=kw.pop("settings", SETTINGS), **kw)


def test_planning_rules(tmp_path: Path) -> None:
    assert wanted("a/b/x.JPG") and not wanted("a/x.txt") and not wanted(".pca-manifest.jsonl")
    assert not wanted("raw/x.png", exclude=["raw/*"]) and wanted("x.png", include=["*.png"])
    assert not wanted("a/x.jpg", include=["*.png"]) and wanted("a/b/x.png", include=["a/*"])
    tasks = plan_tasks(tmp_path, tmp_path / "o", ["d/x.jpg", "d/x.png", "e/x.jpeg", "y.webp"], "png")
    assert [t.out_rel for t in tasks] == ["d/x.jpg.png", "d/x.png", "e/x.png", "y.png"]
    with pytest.raises(BatchError):
        check_folders(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "s").mkdir()
    for dst in (tmp_path / "s", tmp_path / "s" / "o"):
        with pytest.raises(BatchError, match="--in-place"):
            check_folders(tmp_path / "s", dst)
        check_folders(tmp_path / "s", dst, in_place=True)


def test_resume_skips_done_and_redoes_changed_source_or_settings(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, ["a.png", "b/c.png", "b/d.jpg"])
    fake = Fake()
    report = runner(src, dst, fake, jobs=3).run()
    assert (report.done, report.skipped, len(report.failed)) == (3, 0, 0)
    assert (dst / "b/c.png").read_bytes() == (src / "b/c.png").read_bytes()[::-1]
    report = runner(src, dst, fake).run()
    assert (report.done, report.skipped) == (0, 3) and len(fake.calls) == 3

    (src / "a.png").write_bytes((src / "b/c.png").read_bytes())
    report = runner(src, dst, fake).run()
    assert report.done == 1 and fake.calls[-1] == "a.png"
    assert manifest_lines(dst)[-1]["reason"] == "source changed"
    report = runner(src, dst, fake, settings={**SETTINGS, "steps": 3}).run()
    assert report.done == 3 and {e["reason"] for e in manifest_lines(dst)[-3:]} == {"settings changed"}
    assert runner(src, dst, fake, settings={**SETTINGS, "steps": 3}).dry_run().todo == []
    dry = runner(src, dst, fake).dry_run()
    assert {why for _, why in dry.todo} == {"settings changed"} and len(fake.calls) == 7


def test_failures_are_recorded_and_retried(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, ["ok.png", "bad.png"])
    report = runner(src, dst, Fake(fail={"bad.png"})).run()
    assert [f.rel for f in report.failed] == ["bad.png"] and not report.ok
    assert visible_files(dst) == {"ok.png", "ok.png.json"}  # the certificate beside its output
    report = runner(src, dst, Fake()).run()
    assert report.done == 1 and report.skipped == 1 and report.ok


def test_torn_manifest_line_is_ignored_and_repaired(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, ["a.png", "b.png"])
    runner(src, dst, Fake(), jobs=1).run()
    manifest = dst / MANIFEST_NAME
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # kill -9 in the middle of a line
    report = runner(src, dst, Fake()).run()
    assert (report.done, report.skipped) == (1, 1)
    assert len(manifest_lines(dst)) == 2 and manifest.read_text().count("\n") == 3


def test_interrupt_leaves_no_partial_files_and_resumes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    rels = [f"f{i:02d}.png" for i in range(12)]
    write_images(src, rels)
    (dst / "sub").mkdir(parents=True)
    (dst / ".pca-tmp-stale.part").write_bytes(b"half")  # left by a killed run
    report = runner(src, dst, Fake(interrupt_after=4), jobs=2, grace_s=2).run()
    assert report.interrupted and report.done <= 4
    recorded = {e["source"] for e in manifest_lines(dst)}
    assert visible_files(dst) == recorded | {f"{r}.json" for r in recorded} and not temp_files(dst)
    fake = Fake()
    report = runner(src, dst, fake, jobs=2).run()
    assert report.ok and report.done == 12 - len(recorded)
    assert sorted(e["source"] for e in manifest_lines(dst)) == rels


def test_atomic_write_cancelled_before_rename(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InterruptedError):
        atomic_write(target, b"new", cancel)
    assert target.read_bytes() == b"old" and not temp_files(tmp_path)


def test_fatal_processor_error_aborts_the_batch(tmp_path: Path) -> None:
    class Fatal(Exception):
        fatal = True

    def proc(path: Path, data: bytes) -> tuple[bytes, str, dict[str, Any]]:
        raise Fatal("server gone")

    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, [f"{i}.png" for i in range(6)])
    report = runner(src, dst, proc, jobs=2).run()
    assert report.aborted == "server gone" and report.done == 0 and manifest_lines(dst) == []


def test_in_place_does_not_reprotect_outputs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_images(src, ["a.jpg", "b.png", "sub/c.png"])
    original = (src / "b.png").read_bytes()
    fake = Fake()
    assert runner(src, src, fake, in_place=True).run().done == 3
    assert (src / "b.png").read_bytes() == original[::-1] and (src / "a.png").exists()
    report = runner(src, src, fake, in_place=True).run()
    assert report.done == 0 and report.skipped == 3 and len(fake.calls) == 3
    inner = src / "protected"
    assert runner(src, inner, fake, in_place=True).run().done == 4  # a.jpg, a.png(output), b.png, sub/c
    assert runner(src, inner, fake, in_place=True).run().done == 0


def test_watch_protects_new_files(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, ["first.png"])
    r = runner(src, dst, Fake())
    r.run()
    stop = threading.Event()
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.setdefault("report", r.watch(stop=stop, debounce_ms=100)))
    thread.start()
    time.sleep(1.0)
    write_images(src, ["new/second.png"], seed0=5)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (dst / "new/second.png").exists():
        time.sleep(0.1)
    stop.set()
    thread.join(timeout=10)
    assert (dst / "new/second.png").exists()
    assert box["report"].done == 1
    digest = hashlib.sha256((src / "new/second.png").read_bytes()).hexdigest()
    assert manifest_lines(dst)[-1]["source_sha256"] == digest
