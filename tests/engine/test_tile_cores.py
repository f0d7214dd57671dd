"""Tile cores (``pca_attack.attack.tile_cores``): rows x columns cores within a tile's pixel allowance that read
the fewest pixels, never more than the square cores the planner used before."""

from __future__ import annotations

import math

import pytest

from pca_attack.attack.memory import Line, MemoryModel, plan_attack
from pca_attack.attack.tile_cores import balanced_cores
from pca_attack.attack.tiling import TileGrid

CASES = [(3000, 4000, 8, 64, 720), (1500, 2000, 8, 64, 376), (866, 1155, 8, 64, 896), (768, 1024, 8, 64, 560),
         (6000, 8000, 8, 64, 200), (301, 517, 4, 12, 60), (4000, 3000, 32, 0, 1280), (100, 3000, 8, 16, 96)]


@pytest.mark.parametrize(("height", "width", "factor", "halo", "side"), CASES)
def test_balanced_cores_fit_the_allowance_and_read_no_more_than_square_cores(
    height: int, width: int, factor: int, halo: int, side: int
) -> None:
    cores = balanced_cores(height, width, factor, halo, side * side)
    assert cores is not None and cores[0] % factor == 0 and cores[1] % factor == 0
    grid = TileGrid(height, width, factor, cores[0], halo, core_width=cores[1])
    assert math.prod(grid.tile_shape) <= side * side  # within the tile's memory
    square_core = min(int((side - 2 * halo) // factor) * factor, factor * math.ceil(max(height, width) / factor))
    square = TileGrid(height, width, factor, square_core, halo)
    assert grid.pixels_read() <= square.pixels_read()
    assert len(grid) <= len(square) or grid.pixels_read() < square.pixels_read()


def test_a_phone_photo_takes_35_tiles_where_square_cores_took_42() -> None:
    """TAEF2's 12 MP plan under the default budget: a 720-px allowance, 64-px halo. Square 592-px cores: 7 x 6
    tiles; balanced 576 x 600-px cores: 7 x 5, 3% fewer pixels read."""
    cores = balanced_cores(3000, 4000, 8, 64, 720 * 720)
    grid = TileGrid(3000, 4000, 8, *cores[:1], 64, core_width=cores[1]) if cores else None
    assert grid is not None and len(grid) == 35 and grid.tile_shape == (728, 704)
    assert grid.pixels_read() < 0.98 * TileGrid(3000, 4000, 8, 592, 64).pixels_read()


def test_no_cores_when_not_even_one_latent_fits() -> None:
    assert balanced_cores(1000, 1000, 8, 64, (8 + 2 * 64) ** 2 - 1) is None
    assert balanced_cores(1000, 1000, 8, 64, (8 + 2 * 64) ** 2) == (8, 8)


def test_the_planner_uses_balanced_cores_and_describes_their_shape() -> None:
    model = MemoryModel(step=Line(112.0, 2018.0), forward=Line(0.0, 1036.0), loop=Line(137.0, 2042.0),
                        seconds_per_pixel=1.1e-5, factor=8, halo=64, forward_seconds_per_pixel=4.7e-6,
                        tile_overhead=1.04, loop_image_per_pixel=72.0, loop_tile_per_pixel=52.0)
    plan = plan_attack(model, 3000, 4000, steps=2, available=2.06e9)
    assert plan.grid is not None and plan.grid.core_width not in (0, plan.grid.core)
    height, width = plan.grid.tile_shape
    assert f"{plan.tiles} tiles of {width}x{height} px" in plan.describe()
    assert plan.tile_side == max(height, width)
