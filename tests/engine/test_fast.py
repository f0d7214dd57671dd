"""Fast mode (issue 18): the generator's output holds the budget on the bytes for any size, is deterministic,
``fast+N`` starts from it, the certificate names mode and generator, the training script runs, and the
shipped demo generator collapses a held-out photo crop more than random signs at the same budget."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pca_attack.attack.budget import make_budget, quantize
from pca_attack.attack.config import AttackConfig
from pca_attack.attack.pgd import Protector
from pca_attack.attack.updates import step_size
from pca_attack.errors import ConfigError
from pca_attack.fast.generator import (
    PerturbationNet,
    generator_image,
    parameter_count,
    perturbation,
    training_image,
)
from pca_attack.fast.modes import run_config
from pca_attack.fast.photos import HELD_OUT, centre_crop, load_photo
from pca_attack.fast.train import TrainSettings, train_generator
from pca_attack.fast.weights import load_generator, resolve_generator, save_generator
from pca_attack.io.images import decode_image
from pca_attack.models.encoder import load_encoder
from pca_attack.pipeline import Engine

ROOT = Path(__file__).resolve().parents[2]
EPS = 8.0
SHIPPED_DEMO = ROOT / "pca_attack" / "assets" / "generators" / "demo.safetensors"


@pytest.fixture(scope="module")
def saturated_generator(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random generator whose head is scaled up, so tanh saturates: the budget is pushed to its edge."""
    torch.manual_seed(0)
    net = PerturbationNet(width=8, blocks=1)
    with torch.no_grad():
        net.head.weight.normal_(0.0, 20.0)  # (the head starts at zero: the pattern alone)
    path = tmp_path_factory.mktemp("gen") / "g.safetensors"
    save_generator(net, path, {"model": "demo"})
    return str(path)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_spec("demo", with_decoder=False)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _linf_255(a: np.ndarray, b: np.ndarray, levels: int) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() * 255.0 / levels)


def test_generator_is_small_and_fully_convolutional() -> None:
    net = PerturbationNet()
    assert parameter_count(net) <= 3_000_000
    for size in ((1, 3, 17, 29), (2, 3, 64, 40)):
        x = torch.rand(size)
        out = generator_image(
            net, x, torch.zeros(size[0], dtype=torch.bool), torch.full((size[0],), 255.0), AttackConfig(eps=EPS)
        )
        assert out.shape == x.shape


@pytest.mark.parametrize("kind", ["odd_rgb", "gray8", "gray16"])
def test_fast_output_holds_the_budget_on_bytes(
    engine: Engine, saturated_generator: str, photo: Callable[..., np.ndarray], kind: str
) -> None:
    if kind == "odd_rgb":
        array = photo(37, 53)
    elif kind == "gray8":
        array = photo(31, 45)[..., 0]
    else:
        array = (np.linspace(0, 65535, 33 * 41).reshape(33, 41)).astype(np.uint16)
    source = decode_image(_png(array))
    out = engine.protect_bytes(_png(array), AttackConfig(eps=EPS, mode="fast", generator=saturated_generator))
    written = decode_image(out.data)
    linf = _linf_255(written.rgb, source.rgb, source.levels)
    assert linf <= EPS and out.certificate.budget_ok and linf >= EPS - 1  # saturated: it uses the budget
    assert written.levels == source.levels and written.grayscale == source.grayscale
    if source.grayscale:
        assert np.array_equal(written.rgb[..., 0], written.rgb[..., 2])
    assert out.certificate.mode == "fast" and out.certificate.steps == 0
    assert out.certificate.generator_id == load_generator(saturated_generator).generator_id


def test_fast_bytes_are_deterministic(
    engine: Engine, saturated_generator: str, photo: Callable[..., np.ndarray]
) -> None:
    data = _png(photo(40, 56, seed=3))
    config = AttackConfig(eps=EPS, mode="fast", generator=saturated_generator)
    assert engine.protect_bytes(data, config).data == engine.protect_bytes(data, config).data


def test_fast_plus_n_starts_from_the_fast_image(
    engine: Engine, saturated_generator: str, photo: Callable[..., np.ndarray]
) -> None:
    data = _png(photo(48, 64, seed=5))
    # the defaults (colour-neutral projection on): the fast image is projected as PGD's iterates are
    fast = engine.protect_bytes(data, AttackConfig(eps=EPS, mode="fast", generator=saturated_generator))
    refined = engine.protect_bytes(data, AttackConfig(eps=EPS, mode="fast+3", generator=saturated_generator))
    assert refined.certificate.mode == "fast+3" and refined.certificate.steps == 3 and len(refined.loss_trace) == 3
    assert refined.loss_trace[0] == pytest.approx(fast.certificate.loss_protected, rel=1e-4)
    assert refined.certificate.loss_protected < fast.certificate.loss_protected  # PGD went on from there
    for config in (AttackConfig(eps=EPS), AttackConfig(eps=EPS, budget="jnd")):  # projected as PGD's iterates
        _assert_projected_like_pgd(saturated_generator, config)


def test_run_config_sets_the_steps_of_each_mode() -> None:
    """pgd is untouched, fast runs no PGD step, fast+N runs N steps on the configured schedule."""
    default = AttackConfig()
    assert run_config(default) == default
    assert run_config(AttackConfig(mode="fast")).steps == 0
    refine = run_config(AttackConfig(mode="fast+5"))
    assert refine.steps == 5 and refine.mode == "fast+5"
    assert [step_size(refine, i) for i in range(5)] == [step_size(default.with_(steps=5), i) for i in range(5)]


def _assert_projected_like_pgd(generator: str, config: AttackConfig) -> None:
    """The generator's image is a fixed point of the budget's projection followed by rounding, and its
    perturbation has (almost) no mean colour shift under the colour-neutral default."""
    x = torch.round(torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(2)) * 255) / 255
    gray, levels = torch.zeros(1, dtype=torch.bool), torch.full((1,), 255.0)
    image = generator_image(load_generator(generator).net, x, gray, levels, config)
    budget = make_budget(config, x, gray)
    again = quantize(budget.project(image), x, budget.bound_255, levels)
    assert (again - image).abs().max() <= 1 / 255 + 1e-6  # at most one grey level of rounding apart
    assert ((image - x) * 255).abs().le(torch.as_tensor(budget.bound_255) + 1e-4).all()
    assert ((image - x) * 255).mean(dim=(2, 3)).abs().max() < 0.5  # colour-neutral: no mean shift per channel


def test_modes_are_validated_and_a_missing_generator_is_explained() -> None:
    for bad in ("fast+0", "fast+", "turbo", "pgd+3"):
        with pytest.raises(ConfigError, match="mode="):
            AttackConfig(mode=bad)
    assert AttackConfig().refine_steps is None and AttackConfig(mode="fast+5").refine_steps == 5
    with pytest.raises(ConfigError, match="train one with scripts/train_generator.py"):
        resolve_generator(None, "no-such-model")
    with pytest.raises(ConfigError, match="not found"):
        resolve_generator("/nonexistent/g.safetensors", "demo")


def test_pgd_certificate_records_the_default_mode(engine: Engine, photo: Callable[..., np.ndarray]) -> None:
    out = engine.protect_bytes(_png(photo(24, 32)), AttackConfig(eps=EPS, steps=1))
    assert out.certificate.mode == "pgd" and out.certificate.generator_id is None


def test_training_script_smoke(tmp_path: Path) -> None:
    out = tmp_path / "g.safetensors"
    command = [sys.executable, str(ROOT / "scripts" / "train_generator.py"), "--steps", "20", "--crop", "32",
               "--batch", "2", "--width", "8", "--blocks", "1", "--out", str(out), "--figure", str(tmp_path / "c.png")]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert len(summary["loss_ratio_curve"]) == 20 and (tmp_path / "c.png").is_file()
    assert load_generator(str(out)).generator_id == summary["generator_id"]


def test_training_is_deterministic_from_its_seed_and_colour_neutral() -> None:
    settings = TrainSettings(steps=2, batch=1, crop=32, width=8, blocks=1, pattern=8)
    (first, curve1), (second, curve2) = train_generator(settings), train_generator(settings)
    assert curve1 == curve2
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not torch.equal(first.pattern, torch.zeros_like(first.pattern))  # the pattern did learn
    x, gray = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(4)), torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        delta = training_image(first, x, gray, AttackConfig()) - x  # (2, 3, 40, 48)
    assert (delta.abs() <= 16 / 255 + 1e-6).all() and delta.mean(dim=(2, 3)).abs().max() < 0.5 / 255


def test_training_image_is_colour_neutral_over_its_windows() -> None:
    """The training image removes the perturbation's mean over the settings' windows (not only globally), as the
    attack's projection does on images >= 2 windows: what the generator learns survives that projection."""
    torch.manual_seed(0)
    net = PerturbationNet(8, 1)
    with torch.no_grad():
        net.head.weight.normal_(0.0, 20.0)  # saturated, image-dependent: local means far from 0
    blocks = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))  # 16-px flat blocks of colour
    x, gray = F.interpolate(blocks, scale_factor=16.0, mode="nearest"), torch.zeros(1, dtype=torch.bool)
    with torch.no_grad():
        local = {w: F.avg_pool2d(training_image(net, x, gray, AttackConfig(neutral_window=w)) - x, 16).abs().mean()
                 for w in (128, 8)}  # 16x16 tile means of the perturbation
    assert local[8] < 0.5 * local[128]
    assert TrainSettings().neutral_window < TrainSettings().crop // 2 + 1  # the default crop has >= 2 windows


def test_exact_training_image_is_the_attacks_projection_and_differentiable() -> None:
    """``exact``: the training image equals the budget's own projection of x + delta (the image the attack
    would use, before rounding) on a size with several windows, and gradients reach the network."""
    torch.manual_seed(0)
    net = PerturbationNet(8, 1, centred=True, pattern=8)
    with torch.no_grad():
        net.head.weight.normal_(0.0, 3.0)
    x, gray = torch.rand(1, 3, 70, 52), torch.zeros(1, dtype=torch.bool)
    config = AttackConfig(neutral_window=16)
    image = training_image(net, x, gray, config, exact=True)  # (1, 3, 70, 52)
    with torch.no_grad():
        projected = make_budget(config, x, gray).project(x + perturbation(net, x, gray, config.eps))
    assert torch.allclose(image, projected, atol=1e-6)
    image.sum().backward()
    assert net.head.weight.grad is not None and net.head.weight.grad.abs().sum() > 0


def test_shipped_demo_generator_beats_random_signs_on_a_held_out_crop() -> None:
    encoder = load_encoder("demo", device="cpu", dtype="float32")
    protector = Protector(encoder, AttackConfig())
    x = centre_crop(load_photo(HELD_OUT[0]), 128, 128)[None]  # (1, 3, 128, 128), never seen in training
    gray, levels = torch.zeros(1, dtype=torch.bool), torch.full((1,), 255.0)
    fast = generator_image(resolve_generator(None, "demo").net, x, gray, levels, AttackConfig())
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    random = quantize((x + signs * 16 / 255).clamp(0, 1), x, 16.0, levels)
    target = protector.target_variance(x)
    clean, loss_fast, loss_random = (float(protector.loss(im, target)[0]) for im in (x, fast, random))
    assert clean - loss_fast > clean - loss_random > -clean  # fast lowers the loss, by more than random signs
    assert loss_fast < clean
    assert load_generator(str(SHIPPED_DEMO)).metadata["model"] == "demo"


def test_centred_generator_cannot_answer_with_a_constant_shift() -> None:
    """A head bias that saturates every pixel to -eps (darken everything) is removed when centred."""
    torch.manual_seed(0)
    plain, centred = PerturbationNet(8, 1), PerturbationNet(8, 1, centred=True)
    centred.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for net in (plain, centred):
            net.head.bias.fill_(-100.0)
    x, gray = torch.rand(1, 3, 24, 24), torch.zeros(1, dtype=torch.bool)
    assert torch.allclose(perturbation(plain, x, gray, EPS), torch.full_like(x, -EPS / 255))
    assert perturbation(centred, x, gray, EPS).mean(dim=(2, 3)).abs().max() < EPS / 255 / 4


def test_fast_mode_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/fast_mode.py on one held-out photo cropped to 32 px: every method's budget holds on the
    integers and fast+5 starts exactly at the fast image."""
    out = tmp_path / "bench.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "fast_mode.py"), "--photos", "1", "--side", "32",
               "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300, cwd=ROOT)
    result = json.loads(out.read_text())
    row = result["photos"][HELD_OUT[0]]
    assert row["size"] == [32, 32] and row["fast5_first_loss_rel_gap"] == 0.0
    assert result["targets"]["budget_on_every_output"] and set(result["mean_collapse"]) == {
        "fast", "random", "pgd40", "pgd20", "fast+5"}


def test_fast_mode_benchmark_reuses_earlier_pgd_rows(tmp_path: Path) -> None:
    """--reuse-pgd copies pgd40/pgd20 from an earlier JSON of the same setting (marked) and refuses another."""
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    base = [sys.executable, str(ROOT / "benchmarks" / "fast_mode.py"), "--photos", "1", "--side", "32"]
    subprocess.run([*base, "--out", str(first)], check=True, capture_output=True, timeout=300, cwd=ROOT)
    subprocess.run([*base, "--reuse-pgd", str(first), "--out", str(second)], check=True, capture_output=True,
                   timeout=300, cwd=ROOT)
    old, new = (json.loads(p.read_text())["photos"][HELD_OUT[0]] for p in (first, second))
    assert new["pgd40"] == {**old["pgd40"], "reused": True} and new["pgd20"]["reused"]
    other = subprocess.run([*base[:-1], "40", "--reuse-pgd", str(first)], capture_output=True, timeout=300, cwd=ROOT)
    assert other.returncode != 0 and b"not the same setting" in other.stderr
