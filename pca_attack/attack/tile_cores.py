"""Which tile cores a tiled attack uses: the rows x columns cores that fit a tile's pixel allowance and make the
encoder read the fewest pixels per step.

The planner knows how many pixels one tile (core + halo on each side) may have. Square cores of the largest
side that fits are wasteful where the image does not divide well: a 4000x3000 photo with a 64-px halo and a
720-px allowance takes 7 x 6 = 42 tiles of 592-px cores, where 7 x 5 = 35 cores of 576 x 600 px fit the same
allowance and read 3% fewer pixels (the step's time follows the pixels read; a 1155x866 photo: 2 tiles instead
of 4, 13% fewer). ``balanced_cores`` tries every
number of tile rows, gives each row count its balanced core height (the latent rows shared out evenly), the
widest core that still fits the allowance beside it, balanced across the columns in turn, and keeps the grid
reading the fewest pixels (then the fewest tiles). The square core is one of the candidates, so the result
never reads more than the square grid would.
"""

from __future__ import annotations

import math

from pca_attack.attack.tiling import TileGrid


def balanced_cores(height: int, width: int, factor: int, halo: int, tile_pixels: float) -> tuple[int, int] | None:
    """(core height, core width) in pixels, multiples of ``factor``, whose tiles (core + ``halo`` on each side,
    clipped to the image) have at most ``tile_pixels`` pixels and read the fewest pixels per step; None when
    not even a one-latent core fits."""
    latent_rows, latent_cols = math.ceil(height / factor), math.ceil(width / factor)
    full = (factor * latent_rows, factor * latent_cols)  # a core never exceeds the (padded) image
    square = int((math.sqrt(max(0.0, tile_pixels)) - 2 * halo) // factor) * factor
    candidates = {(min(square, full[0]), min(square, full[1]))} if square >= factor else set()
    for rows in range(1, latent_rows + 1):
        core_height = factor * math.ceil(latent_rows / rows)
        core_width = _widest_core(width, factor, halo, tile_pixels / min(height, core_height + 2 * halo))
        if core_width >= factor:
            columns = math.ceil(latent_cols * factor / core_width)
            candidates.add((core_height, factor * math.ceil(latent_cols / columns)))

    def cost(cores: tuple[int, int]) -> tuple[int, int]:
        grid = TileGrid(height, width, factor, cores[0], halo, core_width=cores[1])
        return grid.pixels_read(), len(grid)

    return min(sorted(candidates), key=cost) if candidates else None  # sorted: ties go to the lower cores


def _widest_core(width: int, factor: int, halo: int, tile_width: float) -> int:
    """The widest core (multiple of ``factor``) whose tile fits in ``tile_width`` pixels: the whole latent width
    when the tile may span the image."""
    if tile_width >= width:
        return factor * math.ceil(width / factor)
    return int((tile_width - 2 * halo) // factor) * factor
