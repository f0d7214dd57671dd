"""``editor_spread``: the editor-resolution term drawn at five sizes around N, because an editor's exact working
size is not known (1 MP is 1024 px long for a square photo, 1182 px for a 4:3 one)."""

from __future__ import annotations

import pytest
import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.editor_term import editor_pixels
from pca_attack.attack.eot import editor_sizes
from pca_attack.attack.pgd import Protector
from pca_attack.attack.tiling import TiledObjective, TileGrid
from pca_attack.errors import ConfigError
from tests.engine.test_tiling import HALO, conv_encoder, image


def test_the_sizes_are_spaced_evenly_in_log_scale_around_n() -> None:
    assert editor_sizes(1024) == (1024,) == editor_sizes(1024, 0.0)
    sizes = editor_sizes(256, 0.25)
    assert sizes == (205, 229, 256, 286, 320)  # 256 / 1.25 .. 256 * 1.25, ratios 1.118 between neighbours
    assert sizes[2] == 256 and sizes[0] * sizes[-1] == pytest.approx(256 * 256, rel=0.01)
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="editor_spread"):
            AttackConfig(editor_spread=bad)


def _encoded_sides(objective: TiledObjective, x: torch.Tensor, target: float | torch.Tensor,
                   generator: torch.Generator | None, passes: int) -> set[tuple[int, int]]:
    """The (h, w) of every input the encoder saw over ``passes`` gradient (generator) or loss-only passes."""
    seen: set[tuple[int, int]] = set()
    hook = objective.encoder.register_forward_pre_hook(lambda _m, args: seen.add(tuple(args[0].shape[-2:])))
    try:
        for _ in range(passes):
            if generator is None:
                objective.loss(x, target, None)
            else:
                objective.loss_and_grad(x, target, generator, 1.0)
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("preset", ["pca-", "adaptive"])
def test_gradient_passes_draw_the_sizes_and_a_loss_without_generator_measures_n(preset: str) -> None:
    encoder, x = conv_encoder(), image(192, 128, batch=1)
    target = Protector(encoder, AttackConfig(preset=preset)).target_variance(x)
    objective = TiledObjective(encoder, editor_resolution=96, editor_spread=0.25)
    objective.prepare(x, target)
    drawn = _encoded_sides(objective, x, target, torch.Generator().manual_seed(0), passes=24)
    copies = {side for side in drawn if side != (192, 128)}
    padded = {-(-side // 4) * 4 for side in editor_sizes(96, 0.25)}  # the f4 encoder pads to its factor
    assert {max(side) for side in copies} == padded  # every size drawn, each copy encoded whole
    assert _encoded_sides(objective, x, target, None, passes=3) == {(192, 128), (96, 64)}  # the final loss: N
    if preset == "adaptive":  # each size has the clean copy's own variance as its target, kept once measured
        assert objective.editor is not None
        targets = objective.editor._targets
        assert sorted(targets) == sorted(editor_sizes(96, 0.25))
        assert {tuple(t.shape[-2:]) for t in targets.values() if t is not None} == {
            (h // 4, w // 4) for h, w in copies}  # one latent per 4x4 pixels of each (padded) copy


def test_spread_zero_is_the_plain_term_and_a_tiled_spread_matches_the_untiled_one() -> None:
    encoder, x = conv_encoder(), image(192, 128, batch=1)
    target = Protector(encoder, AttackConfig()).target_variance(x)
    results = []
    for spread in (0.0, 0.25):
        for grid in (None, TileGrid(192, 128, factor=4, core=24, halo=HALO)):
            objective = TiledObjective(encoder, grid=grid, editor_resolution=96, editor_spread=spread)
            objective.prepare(x, target)
            results.append(objective.loss_and_grad(x, target, torch.Generator().manual_seed(5), 1.0))
    (plain, _), (plain_tiled, _), (drawn, grad), (drawn_tiled, grad_tiled) = results
    torch.testing.assert_close(plain_tiled, plain, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(drawn_tiled, drawn, rtol=1e-5, atol=0.0)  # the same draw, tiled or not
    torch.testing.assert_close(grad_tiled, grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max()))
    assert not torch.equal(drawn, plain)  # seed 5 draws another size than N


def test_the_memory_plan_counts_the_largest_copy_that_downscales() -> None:
    assert editor_pixels(2000, 1500, 1024, 0.25) == 1280 * 960 > editor_pixels(2000, 1500, 1024) == 1024 * 768
    assert editor_pixels(1100, 800, 1024, 0.25) == editor_pixels(1100, 800, 1024)  # 1145 px would not downscale
    assert editor_pixels(1000, 800, 1024, 0.25) == 0  # not larger than N: no term at any size


def test_protect_with_spread_measures_the_clean_and_final_loss_at_n() -> None:
    """The trace's losses are draws; the reported clean and final losses are measured at N, as the final loss
    of a plain editor term is, so the collapse compares like with like."""
    encoder, x = conv_encoder(), image(96, 64, batch=1)
    config = AttackConfig(steps=3, editor_resolution=64, editor_spread=0.25)
    protector = Protector(encoder, config)
    result = protector.protect(x)
    target = protector.target_variance(x)
    plain = Protector(encoder, AttackConfig(steps=3, editor_resolution=64))
    torch.testing.assert_close(result.clean_loss, plain.loss(x, target).cpu(), rtol=1e-6, atol=0.0)
    torch.testing.assert_close(result.final_loss, plain.loss(result.images, target).cpu(), rtol=1e-6, atol=0.0)
    assert float(result.final_loss[0]) < float(result.clean_loss[0])  # the attack still collapses the posterior
