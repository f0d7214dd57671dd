"""``pca-protect batch --ray`` on a local Ray cluster (``ray.init(num_cpus=2)``) with the demo model and
2 steps at 64 px: equal to ``--local`` byte for byte (manifest included), resume across ``--ray`` /
``--local``, and a Ray worker killed mid-run (the run completes, no partial file)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from pca_cli.batch import batch_command
from pca_cli.ray_batch import ProtectActor, RayBatchRunner
from pca_client.manifest import MANIFEST_NAME

REPO = Path(__file__).resolve().parents[2]
RELS = [  # a nested tree of 12 images, mixed formats, a duplicate basename
    "p0.png", "p1.jpg", "a/p2.png", "a/p3.webp", "a/b/p4.png", "a/b/p5.jpg",
    "a/b/c/p6.png", "a/b/c/p0.png", "d/p8.png", "d/p9.jpg", "d/e/p10.png", "d/e/p11.png",
]
ARGS = ["--model", "demo", "--device", "cpu", "--dtype", "fp32", "--steps", "2"]
CRASH_MARKER = "crash-once.txt"  # not an image: never planned


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'pca-protect[ray]'")
    pytest.importorskip("ray.data", reason="ray[data] is not installed: pip install 'pca-protect[ray]'")
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        yield ray
    finally:
        ray.shutdown()


def write_tree(root: Path, size: int = 64) -> None:
    for n, rel in enumerate(RELS):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.RandomState(n).randint(0, 256, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}[path.suffix])
        path.write_bytes(buf.getvalue())


def run_cli(*args: Any) -> Any:
    app = typer.Typer()
    app.command()(batch_command)
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def outputs(root: Path) -> dict[str, bytes]:
    """The protected files (certificates, which hold timings, are compared through the manifest)."""
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}
    images = {rel: p.read_bytes() for rel, p in files.items() if not rel.endswith(".json")}
    assert set(files) == set(images) | {f"{rel}.json" for rel in images}, "each output has its certificate beside it"
    return images


def manifest(dst: Path) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in (dst / MANIFEST_NAME).read_text().splitlines()]
    return {e["source"]: e for e in lines}


def without_times(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The entry minus its timestamps, and its certificate minus its timing."""
    cert = {k: v for k, v in (entry.get("certificate") or {}).items() if k != "elapsed_s"}
    rest = {k: v for k, v in entry.items() if k not in ("time", "elapsed_s", "certificate")}
    return rest, cert


class CrashOnceActor(ProtectActor):
    """Kills its own worker process (``os._exit``) on the first file of a folder holding the marker."""

    def protect(self, path: str) -> dict[str, Any]:
        try:
            os.unlink(Path(path).parent / CRASH_MARKER)  # only one actor wins the unlink
        except FileNotFoundError:
            return super().protect(path)
        os._exit(1)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("ray") / "src"
    write_tree(src)
    return src


@pytest.fixture(scope="module")
def local_run(tree: Path) -> Path:
    dst = tree.parent / "local"
    result = run_cli(tree, dst, "--local", *ARGS)
    assert result.exit_code == 0, result.output
    return dst


def test_ray_equals_local_byte_for_byte(ray_cluster: Any, tree: Path, local_run: Path) -> None:
    dst = tree.parent / "ray"
    result = run_cli(tree, dst, "--ray", "auto", "--jobs", "2", *ARGS)
    assert result.exit_code == 0, result.output
    ray_out, local_out = outputs(dst), outputs(local_run)
    assert len(local_out) == 12 and ray_out.keys() == local_out.keys()
    assert all(ray_out[k] == local_out[k] for k in local_out), "outputs differ"
    ray_m, local_m = manifest(dst), manifest(local_run)
    assert ray_m.keys() == local_m.keys() == set(RELS)
    for source in RELS:
        (ray_rest, ray_cert), (local_rest, local_cert) = without_times(ray_m[source]), without_times(local_m[source])
        assert ray_rest == local_rest, source
        assert ray_cert.keys() == local_cert.keys()
        # measured floats (KL, loss) are reductions whose last bits depend on the torch thread count
        floats = {k for k, v in local_cert.items() if isinstance(v, float)}
        assert {k: v for k, v in ray_cert.items() if k not in floats} == {
            k: v for k, v in local_cert.items() if k not in floats
        }, source
        for key in floats:
            assert ray_cert[key] == pytest.approx(local_cert[key], rel=1e-5, abs=1e-9), (source, key)


def test_resume_across_ray_and_local(ray_cluster: Any, tree: Path, local_run: Path) -> None:
    from pca_attack.options import ProtectOptions
    from pca_cli.local import local_processor
    from pca_client.runner import BatchRunner

    dst = tree.parent / "resume"
    options = ProtectOptions(steps=2)
    ray_runner = RayBatchRunner(tree, dst, options, model="demo", device="cpu", dtype="fp32", workers=2)
    first = ray_runner.run(only=[r for r in RELS if r.startswith("a/")])
    assert (first.done, first.skipped, first.failed) == (6, 0, [])
    proc = local_processor(options, "demo", "cpu", "fp32")
    local = BatchRunner(tree, dst, proc, settings=options.settings(), fmt=options.format).run()
    assert (local.done, local.skipped, local.failed) == (6, 6, [])
    again = RayBatchRunner(tree, dst, options, model="demo", device="cpu", dtype="fp32", workers=2).run()
    assert (again.done, again.skipped, again.failed) == (0, 12, [])
    assert outputs(dst) == outputs(local_run)
    assert {e["reason"] for e in manifest(dst).values()} == {"new"}


@pytest.mark.timeout(900)  # an actor's death and restart: 70 s alone, over 300 s on a 2-core box under load
def test_killed_ray_worker_is_retried_without_partial_files(ray_cluster: Any, tree: Path, local_run: Path) -> None:
    from pca_attack.options import ProtectOptions

    dst = tree.parent / "killed"
    marker = tree / "a" / "b" / CRASH_MARKER
    marker.write_text("the first actor protecting a file of this folder exits")
    runner = RayBatchRunner(
        tree, dst, ProtectOptions(steps=2), model="demo", device="cpu", dtype="fp32", workers=2,
        actor_cls=CrashOnceActor,
    )
    report = runner.run()
    assert not marker.exists(), "no worker was killed"
    assert (report.done, report.failed) == (12, [])
    assert not [p for p in dst.rglob("*") if p.name.startswith(".pca-tmp-")], "partial files left"
    assert outputs(dst) == outputs(local_run)
    assert set(manifest(dst)) == set(RELS)
