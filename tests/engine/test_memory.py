"""Memory model and planning: estimates against measured peaks, sizes, refusal before the attack, and a large
image protected under a small budget in a memory-capped subprocess."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.memory import (
    Line,
    MemoryBudgetError,
    MemoryModel,
    measure_peak,
    memory_model,
    parse_size,
    plan_attack,
)
from pca_attack.attack.pgd import Protector
from pca_attack.attack.tiling import TileGrid
from pca_attack.errors import ConfigError, ImageTooLargeError
from pca_attack.models.encoder import Encoder, load_encoder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def encoder(tiny_vae_dir: Path) -> Encoder:
    return load_encoder(str(tiny_vae_dir), device="cpu")


def test_parse_size() -> None:
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("800 MB") == 800_000_000
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size(4096) == 4096
    for bad in ("lots", "-1GB", "1.5XB", "0"):
        with pytest.raises(ConfigError, match="memory size"):
            parse_size(bad)


@pytest.mark.parametrize("tiled", [False, True])
def test_estimate_within_30_percent_of_the_measured_peak_at_two_sizes(encoder: Encoder, tiled: bool) -> None:
    model = memory_model(encoder)
    assert model.step.per_pixel > 0 and model.loop.per_pixel >= model.step.per_pixel
    for height, width in ((136, 200), (264, 328)):
        x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        # whole_pass: the planner's choice wherever a no-grad pass of the whole image fits (it does here)
        grid = TileGrid(height, width, model.factor, 128, model.halo, whole_pass=True) if tiled else None
        attack = Protector(encoder, AttackConfig(steps=2))
        measured = measure_peak(lambda x=x, grid=grid, attack=attack: attack.protect(x, tiles=grid), encoder.device)
        estimate = model.estimate(height, width) if grid is None else model.estimate_grid(grid)
        assert abs(estimate - measured) <= 0.3 * measured, (height, width, estimate, measured)


MODEL = MemoryModel(
    step=Line(1e6, 1000.0), forward=Line(1e6, 300.0), loop=Line(1e6, 1100.0), seconds_per_pixel=1e-6, factor=8, halo=32
)


def test_plan_untiled_when_it_fits_tiled_when_not() -> None:
    whole = MODEL.estimate(1000, 800)
    untiled = plan_attack(MODEL, 1000, 800, steps=2, available=2 * whole)
    assert untiled.grid is None and untiled.tiles == 1 and untiled.tile_side is None
    tiled = plan_attack(MODEL, 1000, 800, steps=2, available=whole / 3)
    assert tiled.grid is not None and tiled.tiles > 1
    assert tiled.estimated_bytes * 1.2 <= tiled.budget_bytes
    assert "tiles of" in tiled.describe() and "1000" not in tiled.describe().split(":")[1]


def test_checkpointing_lowers_the_step_and_its_estimate_is_within_30_percent(encoder: Encoder) -> None:
    model = memory_model(encoder)
    assert model.checkpointed is not None and model.checkpoint_time >= 1.0
    assert model.checkpointed.per_pixel < model.step.per_pixel
    height, width = 264, 328
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    plan = plan_attack(model, height, width, steps=2, available=1e12)
    checkpointed = replace(plan, checkpoint=True, factor=model.factor)
    grid = checkpointed.run_grid
    assert grid is not None and len(grid) == 1 and grid.checkpoint and checkpointed.grid is None
    attack = Protector(encoder, AttackConfig(steps=2))
    measured = measure_peak(lambda: attack.protect(x, tiles=grid), encoder.device)
    estimate = model.estimate(height, width, checkpoint=True)
    assert abs(estimate - measured) <= 0.3 * measured, (estimate, measured)
    assert estimate < model.estimate(height, width)


CHECKPOINTED = replace(MODEL, checkpointed=Line(1e6, 400.0), checkpoint_time=1.3)


def test_plans_use_checkpointing_for_bigger_tiles_or_none() -> None:
    height, width = 1000, 800
    between = (CHECKPOINTED.estimate(height, width, checkpoint=True) + CHECKPOINTED.estimate(height, width)) / 2
    untiled = plan_attack(CHECKPOINTED, height, width, steps=2, available=between * 1.2)
    assert untiled.checkpoint and untiled.grid is None and "checkpointed" in untiled.describe()
    assert untiled.run_grid is not None and len(untiled.run_grid) == 1
    small = CHECKPOINTED.estimate(height, width, 1, 0) * 1.2 + 1.2 * 400.0 * 300**2
    plain = plan_attack(MODEL, height, width, steps=2, available=small)
    with_ckpt = plan_attack(CHECKPOINTED, height, width, steps=2, available=small)
    assert with_ckpt.checkpoint and with_ckpt.grid is not None and plain.grid is not None
    assert with_ckpt.tiles < plain.tiles and with_ckpt.estimated_s < plain.estimated_s
    assert with_ckpt.estimated_bytes * 1.2 <= small


def test_a_budget_too_small_for_one_tile_is_refused_with_the_limit_and_the_fix() -> None:
    with pytest.raises(MemoryBudgetError) as caught:
        plan_attack(MODEL, 4000, 3000, steps=2, available=5e6)
    message = str(caught.value)
    assert "3000x4000" in message and "5 MB" in message  # width x height
    assert "--max-memory" in message and "PCA_MAX_MEMORY" in message and "downscale" not in message
    assert isinstance(caught.value, ImageTooLargeError)  # CLI exit 2, HTTP 413
    with pytest.raises(MemoryBudgetError, match="downscale it to about"):  # state fits a smaller image
        plan_attack(MODEL, 4000, 3000, steps=2, available=1e9)


def test_engine_refuses_before_the_attack(
    tiny_vae_dir: Path, monkeypatch: pytest.MonkeyPatch, photo: object
) -> None:
    from pca_attack.io.images import decode_image
    from pca_attack.pipeline import Engine
    from tests.conftest import to_bytes

    real = Protector.protect

    def no_attack(self: Protector, *args: Any, **kwargs: Any) -> Any:
        if self.encoder.family == "stub":  # planning measures the loop itself on a stub (attack/loop_memory.py)
            return real(self, *args, **kwargs)
        raise AssertionError("the attack started although the image cannot fit")

    engine = Engine.from_spec(str(tiny_vae_dir), device="cpu", max_memory=parse_size("1MB"))
    memory_model(engine.encoder)  # measured once per loaded model by probes that run attacks: not watched here
    monkeypatch.setattr(Protector, "protect", no_attack)
    from PIL import Image

    image = decode_image(to_bytes(Image.fromarray(photo(64, 64))))  # type: ignore[operator]
    with pytest.raises(MemoryBudgetError, match="--max-memory"):
        engine.protect([image], AttackConfig(steps=1))


BIG_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, numpy as np
    from PIL import Image
    import io
    from pca_attack.attack.config import AttackConfig
    from pca_attack.attack.memory import parse_size
    from pca_attack.io.images import decode_image
    from pca_attack.pipeline import Engine
    side, folder = int(sys.argv[1]), sys.argv[2]
    yy, xx = np.mgrid[0:side, 0:side] / side
    pixels = (0.5 + 0.3 * np.sin(9 * xx) * np.cos(7 * yy))[..., None] * np.array([1.0, 0.8, 0.6])
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).astype(np.uint8)).save(buffer, "PNG")
    image = decode_image(buffer.getvalue(), max_pixels=side * side)
    engine = Engine.from_spec(folder, device="cpu", with_decoder=False)
    engine.max_memory = engine.baseline_memory + parse_size(sys.argv[3])
    steps = []
    out = engine.protect([image], AttackConfig(steps=2), progress=lambda i, e: steps.append(e.end_of_step))
    cert = out[0].certificate
    print(json.dumps({"tiles": cert.tiles, "tile_size": cert.tile_size, "budget_ok": cert.budget_ok,
                      "steps": sum(steps), "linf": cert.linf_255}))
    """
)


@pytest.mark.parametrize(
    ("side", "budget", "model"),
    [pytest.param(512, "30MB", "tiny_ae_dir", id="512px"),
     pytest.param(2500, "800MB", "tiny_vae_dir", id="2500px", marks=[pytest.mark.slow, pytest.mark.timeout(1200)])],
)
def test_large_image_under_a_small_budget_in_a_memory_capped_process(
    request: pytest.FixtureRequest, side: int, budget: str, model: str
) -> None:
    """Untiled, the attack would need more than twice the work budget: it runs in tiles, and the process,
    capped in address space, finishes and perturbs the image within eps (512 px: a convolution-only tiny
    autoencoder, ~12 s; 2500x2500 with the GroupNorm + attention VAE takes minutes on two shared cores: slow)."""
    folder = request.getfixturevalue(model)
    assert model_estimate(folder, side) > 2 * parse_size(budget)
    cap = ["prlimit", f"--as={8 * 2**30}"]
    command = [*cap, sys.executable, "-c", BIG_SCRIPT, str(side), str(folder), budget]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["tiles"] > 1 and report["tile_size"] < side
    assert report["budget_ok"] and report["linf"] <= 16
    # the tiny autoencoder's attack moves the pixels; the random GroupNorm VAE's best iterate can be the clean image
    assert report["linf"] > 0 or model == "tiny_vae_dir"
    assert report["steps"] == 2


def model_estimate(folder: Path, side: int) -> float:
    """The untiled attack's estimated peak for a side x side image with the model in ``folder``."""
    return memory_model(load_encoder(str(folder), device="cpu")).estimate(side, side)


def test_service_answers_413_with_the_limit_when_an_image_cannot_fit(tiny_vae_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    from tests.service.conftest import png_bytes

    with pytest.raises(ValueError, match="memory size"):
        Settings(max_memory="plenty")
    settings = Settings(
        model=str(tiny_vae_dir), device="cpu", dtype="fp32", offline=True, data_dir=tmp_path, max_memory="1MB"
    )
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/protect", files={"file": ("a.png", png_bytes(64, 64), "image/png")},
                             data={"steps": "1"})
    assert answer.status_code == 413, answer.text
    assert "PCA_MAX_MEMORY" in answer.text


def test_an_explicit_cpu_budget_bounds_the_heap(tiny_vae_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc otherwise keeps freed large blocks resident: RSS would exceed what the plan counts."""
    import pca_attack.pipeline as pipeline
    from pca_attack.attack.sizes import bound_heap

    calls: list[bool] = []
    monkeypatch.setattr(pipeline, "bound_heap", lambda: calls.append(True) or True)
    pipeline.Engine.from_spec(str(tiny_vae_dir), device="cpu", with_decoder=False)
    assert calls == []
    pipeline.Engine.from_spec(str(tiny_vae_dir), device="cpu", with_decoder=False, max_memory=parse_size("2GB"))
    assert calls == [True]
    assert isinstance(bound_heap(), bool)  # glibc: True; elsewhere a no-op


def test_a_tiled_plan_under_the_default_budget_bounds_the_heap(
    tiny_vae_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: without a --max-memory the heap was left unbounded, so a tiled run's RSS grew past the default
    budget (demo, 1200x900 under 500 MB: 1.72 GB peak). Once a plan needs tiles the budget binds: bound it."""
    import pca_attack.pipeline as pipeline
    from pca_attack.io.images import decode_image
    from tests.service.conftest import png_bytes

    calls: list[bool] = []
    monkeypatch.setattr(pipeline, "bound_heap", lambda: calls.append(True) or True)
    engine = pipeline.Engine.from_spec(str(tiny_vae_dir), device="cpu", with_decoder=False)
    engine._default_budget = engine.baseline_memory + parse_size("50MB")  # the default budget, small
    small = decode_image(png_bytes(32, 24), max_pixels=10**6)
    assert all(plan.grid is None and not plan.checkpoint for _, plan in engine.plan([small], AttackConfig()))
    assert calls == []  # an untiled plan keeps the faster, unbounded heap
    large = decode_image(png_bytes(512, 512), max_pixels=10**6)
    [(_, plan)] = engine.plan([large], AttackConfig(steps=1))
    assert plan.grid is not None or plan.checkpoint
    assert calls and all(calls)


def test_the_plan_counts_the_decoded_inputs_it_keeps(tiny_vae_dir: Path) -> None:
    """The decoded images of a call stay alive through every attack of it (a 12 MP photo: 36 MB of 8-bit
    pixels): what the attacks may add is the budget less them (--max-memory 1.5GB at 12 MP peaked at 1.504 GB
    without this)."""
    from pca_attack.io.images import decode_image
    from pca_attack.pipeline import Engine
    from tests.service.conftest import png_bytes

    engine = Engine.from_spec(str(tiny_vae_dir), device="cpu", with_decoder=False, max_memory=parse_size("2GB"))
    images = [decode_image(png_bytes(64, 48, seed=seed), max_pixels=10**6) for seed in range(3)]
    held = sum(image.rgb.nbytes for image in images)
    assert held == 3 * 64 * 48 * 3
    plans = engine.plan(images, AttackConfig(steps=1))
    assert {plan.budget_bytes for _, plan in plans} == {int(engine.available_memory() - held)}


TIMED = replace(MODEL, forward_seconds_per_pixel=4e-7, context_layers=15, stream_passes=9.0)


def test_the_time_estimate_counts_the_statistics_passes_of_the_tiled_path() -> None:
    """Each exact statistics pass (a whole no-grad pass, or the measured streaming passes) adds its time;
    lagged statistics stream once and before each loss-only pass; untiled and one-tile grids have none."""
    height, width = 1000, 800
    small = TIMED.estimate(height, width, 1, 0) * 1.2 + 1.2 * 1000.0 * 300**2
    plan = plan_attack(TIMED, height, width, steps=2, available=small)
    grid = plan.grid
    assert grid is not None and len(grid) > 1 and not grid.whole_pass and grid.stats == "lagged"
    bare = replace(TIMED, context_layers=0)  # no GroupNorm / attention: no statistics to measure
    work = bare.attack_seconds(grid, height, width, steps=2)
    stream = TIMED.statistics_seconds(grid)
    assert stream == pytest.approx(9.0 * 4e-7 * grid.pixels_read())
    assert plan.estimated_s == pytest.approx(work + (1 + 2) * stream)  # once, then before 2 loss-only passes
    shared = plan_attack(TIMED, height, width, steps=2, available=small, tiled_evaluations=1)  # keep_best + final
    assert shared.estimated_s == pytest.approx(bare.attack_seconds(grid, height, width, steps=2, evaluations=1)
                                               + (1 + 1) * stream)
    exact = replace(grid, stats="exact")
    whole = replace(grid, stats="exact", whole_pass=True)
    seconds = {name: TIMED.attack_seconds(g, height, width, steps=5)
               for name, g in (("lagged", grid), ("exact", exact), ("whole", whole))}
    assert seconds["exact"] == pytest.approx(bare.attack_seconds(grid, height, width, steps=5) + (5 + 2) * stream)
    assert seconds["whole"] < seconds["exact"] and seconds["lagged"] < seconds["exact"]
    assert TIMED.statistics_seconds(whole) == pytest.approx(4e-7 * height * width)
    for steps in (1, 4, 16):  # every step of an exact tiled attack adds a step's work and one statistics pass
        grown = TIMED.attack_seconds(exact, height, width, steps=steps + 1) - TIMED.attack_seconds(
            exact, height, width, steps=steps)
        assert grown == pytest.approx(TIMED.seconds_per_pixel * grid.pixels_read() + stream)
    one_tile = TileGrid(height, width, 8, 1000, 0)
    assert len(one_tile) == 1 and TIMED.statistics_seconds(one_tile) == 0.0
    untiled = plan_attack(TIMED, height, width, steps=2, available=1e12)
    assert untiled.grid is None
    assert untiled.estimated_s == pytest.approx(bare.attack_seconds(None, height, width, steps=2))


def test_loss_evaluations_follow_the_config() -> None:
    from pca_attack.attack.memory import loss_evaluations

    assert loss_evaluations(AttackConfig()) == 2  # the final loss and the last iterate (keep_best)
    assert loss_evaluations(AttackConfig(keep_best=False)) == 1
    assert loss_evaluations(AttackConfig(random_start=True)) == 3  # the clean loss is not traced by step 1
    assert loss_evaluations(AttackConfig(preset="adaptive")) == 3  # the clean posterior sets the target
    assert loss_evaluations(AttackConfig(), tiled=True) == 1  # one pass: the last iterate is the final image
    assert loss_evaluations(AttackConfig(keep_best=False), tiled=True) == 1
    assert loss_evaluations(AttackConfig(eot="jpeg"), tiled=True) == 3  # EoT: its last-iterate loss is an average


def test_the_probe_times_the_statistics_of_a_groupnorm_encoder(encoder: Encoder) -> None:
    model = memory_model(encoder)
    assert model.context_layers > 0 and model.forward_seconds_per_pixel > 0
    assert model.stream_passes > 1.0  # one partial forward per layer: more than one forward's work
    assert model.attention_seconds > 0  # its mid-block self-attention, timed per (query, key) pair
    assert model.tile_overhead > 1.05  # a tile's step with the whole-image statistics costs more than a plain one
    plain = replace(model, tile_overhead=1.0)
    height = width = 2048
    room = plain.estimate(height, width, 1, 0) * 1.2 + 1.2 * model.step.per_pixel * 400**2
    tiled, naive = (plan_attack(m, height, width, available=room) for m in (model, plain))
    assert tiled.grid is not None and naive.grid is not None
    assert math.prod(tiled.grid.tile_shape) < math.prod(naive.grid.tile_shape)  # smaller tiles in the same room
    assert tiled.estimated_bytes == pytest.approx(naive.estimated_bytes, rel=0.05)  # the same room, filled


def test_the_time_estimate_counts_the_self_attention_quadratically() -> None:
    """A whole-image self-attention costs T^2 over T latent tokens (untiled: 3 T^2 per step, T^2 per loss-only
    pass; tiled: each tile's tokens against all T keys per step, plus T^2 per statistics measurement): at
    12 MP (T = 187,500 at f8) it dominates a per-pixel estimate."""
    pair = 7e-9  # seconds per (query, key) pair: the demo's mid-block on one unloaded thread, ~250 s at 12 MP
    quadratic = replace(TIMED, attention_seconds=pair)
    tokens = 125 * 100  # 1000x800 at f8
    untiled = quadratic.attack_seconds(None, 1000, 800, steps=2) - TIMED.attack_seconds(None, 1000, 800, steps=2)
    assert untiled == pytest.approx(pair * tokens**2 * (3 * 2 + 2))
    grid = TileGrid(1000, 800, 8, 304, 48, stats="lagged")
    tiled = quadratic.attack_seconds(grid, 1000, 800, steps=2) - TIMED.attack_seconds(grid, 1000, 800, steps=2)
    local = sum(((t.rows.stop - t.rows.start) * (t.cols.stop - t.cols.start) / 64) ** 2 for t in grid.tiles())
    assert tiled == pytest.approx(pair * (2 * (grid.pixels_read() / 64 * tokens + 3 * local) + (2 + 1) * tokens**2))
    big = replace(DEMO, attention_seconds=pair)
    photo = plan_attack(big, 3000, 4000, steps=2, available=2.1e9, tiled_evaluations=1)
    assert photo.estimated_s > 2 * plan_attack(DEMO, 3000, 4000, steps=2, available=2.1e9,
                                                tiled_evaluations=1).estimated_s


def test_measurements_are_sized_by_what_is_free_in_the_budget_at_the_time(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate holds copies of the image before it encodes it: the tiles of its posterior are sized by
    the budget less what the process holds then, not by what was free when the scope opened."""
    import pca_attack.attack.memory as memory

    device = torch.device("cpu")
    in_use = memory.memory_in_use(device)
    assert memory.MeasureScope(1e9).now() == 1e9
    assert memory.MeasureScope(1e9, limit=in_use + 5e8, device=device).now() == pytest.approx(5e8, rel=0.2)
    assert memory.MeasureScope(1e9, limit=in_use - 1e9, device=device).now() == 2.5e8  # a quarter at least
    assert memory.MeasureScope(1e9, limit=in_use + 1e12, device=device).now() == 1e9
    model = memory_model(encoder)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    whole = model.forward(256 * 256) * memory.HEADROOM
    grids: list[int] = []
    stitch = memory.tiled_posterior
    monkeypatch.setattr(memory, "tiled_posterior", lambda e, x, grid, norm=None: grids.append(len(grid)) or stitch(
        e, x, grid, norm))
    with memory.memory_scope(2 * whole):
        memory.posterior_in_budget(encoder, x)
    assert grids == []  # room enough when the scope opened, and no limit: one pass
    with memory.memory_scope(2 * whole, limit=memory.memory_in_use(device) + 0.9 * whole, device=device):
        memory.posterior_in_budget(encoder, x)
    assert len(grids) == 1 and grids[0] > 1  # what is free in the budget now: tiles


# the bundled demo model's measured memory model (``memory_model(load_encoder("demo"))``, this machine)
DEMO = MemoryModel(step=Line(297608.0, 1680.06), forward=Line(11050.7, 665.33), loop=Line(297637.0, 1716.06),
                   seconds_per_pixel=4.66e-6, factor=8, halo=48, checkpointed=Line(273466.7, 1338.08),
                   checkpoint_time=1.395, forward_seconds_per_pixel=1.75e-6, context_layers=15, stream_passes=11.76)


def test_the_default_cpu_budget_is_capped_so_a_phone_photo_stays_within_2_5_gb(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Default budget: DEFAULT_FRACTION of the free memory beyond what the process holds, capped on the CPU
    (not on CUDA). Under the cap a 12 MP photo runs in tiles planned within it (the demo model's memory model:
    with its ~0.44 GB baseline, <= 2.5 GB), while a ~1 MP photo still runs untiled."""
    import pca_attack.attack.sizes as sizes

    free = {"value": 24e9}
    monkeypatch.setattr(sizes, "memory_in_use", lambda device: 440_000_000)
    monkeypatch.setattr(sizes, "memory_free", lambda device: int(free["value"]))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert sizes.default_budget(cpu) == 440_000_000 + sizes.DEFAULT_CPU_CAP  # 24 GB free: the cap binds
    assert sizes.default_budget(cuda) == 440_000_000 + int(sizes.DEFAULT_FRACTION * 24e9)  # VRAM: uncapped
    free["value"] = 8e9
    assert sizes.default_budget(cpu) == 440_000_000 + int(sizes.DEFAULT_FRACTION * 8e9)  # below the cap
    available = sizes.DEFAULT_CPU_CAP  # what an attack may add under the default budget on a 24 GB machine
    photo = plan_attack(DEMO, 3000, 4000, steps=2, available=available)
    assert photo.grid is not None and 440_000_000 + photo.estimated_bytes <= 2.5e9
    assert plan_attack(DEMO, 866, 1155, steps=2, available=available).grid is None


def test_the_certificate_measures_pixel_distances_without_whole_image_float64_copies() -> None:
    """The certificate's pixel fields (linf, L2, PSNR, SSIM) are summed in row bands and SSIM tiles: the numpy
    scratch of a 2048x1024 pair stays below ONE whole-image float64 copy (the old path held four), with the
    same values as the whole-image formulas."""
    import tracemalloc

    import numpy as np

    from pca_attack.certify.report import _pixel_fields

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + rng.integers(-4, 5, a.shape), 0, 255).astype(np.uint8)
    tracemalloc.start()
    fields = _pixel_fields(a, b, 255.0, 16.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < a.size * 8  # one float64 copy of the image: 50 MB
    diff = (b.astype(np.float64) - a) / 255.0
    assert fields["l2"] == pytest.approx(float(np.sqrt(np.sum(diff**2))), rel=1e-12)
    assert fields["psnr_db"] == pytest.approx(float(10 * np.log10(1.0 / np.mean(diff**2))), rel=1e-12)
    assert fields["linf_255"] == pytest.approx(4.0) and fields["budget_ok"]


def test_a_tiled_plan_holds_the_editor_copy_in_its_tiles() -> None:
    """The editor-resolution copy of a tiled attack is encoded in the image's own tiles (``editor_term``), so it
    adds no memory to a tiled plan: 12 MP with a 1000x750 copy gets the same tiles as without (it was refused
    under this budget when the copy was encoded whole: ~1.9 GB with TAEF2); an untiled plan still counts the
    copy's whole pass, and its time counts the copy in both."""
    available = 2e9
    plain = plan_attack(MODEL, 3000, 4000, steps=2, available=available)
    editor = plan_attack(MODEL, 3000, 4000, steps=2, available=available, extra_pixels=1000 * 750)
    assert plain.grid is not None and editor.grid == plain.grid
    assert editor.estimated_bytes == plain.estimated_bytes and editor.estimated_s > plain.estimated_s
    small = plan_attack(MODEL, 300, 400, steps=2, available=available)
    small_editor = plan_attack(MODEL, 300, 400, steps=2, available=available, extra_pixels=200 * 150)
    assert small.grid is None and small_editor.grid is None
    copy = MODEL.step.per_pixel * 200 * 150
    assert small_editor.estimated_bytes == pytest.approx(small.estimated_bytes + copy, abs=1)
