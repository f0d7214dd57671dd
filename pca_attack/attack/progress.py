"""Progress of an attack, reported per PGD step (and per tile inside a tiled step).

``Protector.protect(..., progress=callback)`` calls ``callback(StepProgress)`` after every tile of every
step; the event that ends a step has ``tile == tiles``, so a listener that only wants steps filters on
``end_of_step``. The engine forwards these to the CLI's progress bar and to the service's job rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StepProgress:
    """Where an attack on one micro-batch is."""

    step: int  # PGD steps begun, 1-based (the step this event belongs to)
    steps: int  # PGD steps configured
    tile: int  # tiles of this step done (== tiles at the end of the step)
    tiles: int  # tiles per step (1 when untiled)
    elapsed_s: float  # since the attack began
    loss: float | None = None  # mean loss over the batch at the iterate this step started from (end of step)

    @property
    def end_of_step(self) -> bool:
        return self.tile == self.tiles

    @property
    def steps_done(self) -> int:
        """PGD steps finished (the current one counts once its last tile is done)."""
        return self.step if self.end_of_step else self.step - 1

    @property
    def fraction(self) -> float:
        """Share of the configured work done, in [0, 1]."""
        return min(1.0, ((self.step - 1) + self.tile / self.tiles) / max(1, self.steps))

    def eta_s(self) -> float | None:
        """Seconds left at the pace so far (None before any work is done)."""
        done = self.fraction
        return None if done <= 0 else self.elapsed_s * (1.0 - done) / done

    def summary(self) -> dict[str, int | float | None]:
        """Plain-JSON view for job rows and APIs: steps done of steps, tiles done of the current step's tiles,
        the share done and the seconds left at the pace so far."""
        eta = self.eta_s()
        return {
            "steps_done": self.steps_done, "steps": self.steps, "tiles_done": self.tile, "tiles": self.tiles,
            "fraction": round(self.fraction, 4), "eta_s": None if eta is None else round(eta, 1),
        }


ProgressCallback = Callable[[StepProgress], None]
