"""The collapse objective over several encoders (an ensemble): one perturbation for every listed editor.

One encoder: ``Protector`` uses the single-model objective (``pca_attack.attack.tiling.TiledObjective``)
as it always did (same numbers, same bytes); ``combine`` returns it untouched. Several encoders: each
member keeps its own single-model objective (tiling, EoT, editor-resolution term included), its loss is
divided by its own loss on the clean image (scale-free: a 32-channel f8 latent and a 4-channel f16 one weigh
the same), and the normalised losses are aggregated per image

    mean  (default):  L = sum_m w_m * L_m(x) / L_m(x_clean)            (w normalised to sum 1)
    worst:            L = the member whose normalised loss is furthest from the goal (the largest when
                          minimising, the smallest when maximising): a min-max objective. Its step follows
                          the gradient of a smooth maximum, T * log sum_m exp(L_m / T) with T =
                          WORST_TEMPERATURE, i.e. the members' gradients weighted by a soft-max of their
                          normalised losses. Hard switching to the one worst member (T = 0) flips the
                          gradient between members from step to step, which stalls sign-Rprop: on TAEF2 +
                          TAESana (4 photos, 128 px, eps 16, 40 steps) it kept 85.8% of the weaker member's
                          single-model mean-energy reduction, T = 0.05 keeps 91.4% (T = 0.02: 90.9%,
                          T = 0.1: 91.6%; 92.7% on 8 photos at 256 px, docs/transfer.json); the
                          reported loss stays the hard maximum.

Memory: ``loss_and_grad`` runs the members ONE AFTER ANOTHER, each with its own forward and backward pass,
and adds their input gradients, so the peak is that of the largest member, not the sum. Every member sees
the same input, padded once (reflect) to the least common multiple of the members' spatial factors, and,
with EoT, the same random draws (the generator is rewound before each member).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import get_args, get_type_hints

import torch

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.losses import check_preset, objective_sign, posterior_variance
from pca_attack.attack.memory import Line, MemoryModel, memory_model
from pca_attack.attack.tiling import TileCallback, TiledObjective, TileGrid
from pca_attack.errors import ConfigError
from pca_attack.models.encoder import Encoder, pad_to_multiple
from pca_attack.models.ensemble import Ensemble, padding_multiple

CLEAN_FLOOR = 1e-12  # a clean loss of exactly 0 (an all-zero latent) must not divide by zero
WORST_TEMPERATURE = 0.05  # 'worst': soft-max temperature on normalised losses (0 = the hard maximum)
ACCUMULATED_IMAGES = 4  # whole-image fp32 tensors loss_and_grad holds beside a member's step (memory model)
MemberFactory = Callable[[Encoder], TiledObjective]


def combine(
    model: Encoder | Ensemble, config: AttackConfig, make: MemberFactory
) -> TiledObjective | EnsembleObjective:
    """The single-model objective of an Encoder (unchanged), or the ensemble objective of its members."""
    if isinstance(model, Encoder):
        return make(model)
    return EnsembleObjective([make(m) for m in model.members], config)


def ensemble_facts(ensemble: Ensemble, config: AttackConfig | None = None) -> dict[str, object]:
    """The ensemble as ``GET /v1/models`` and ``pca-protect models list`` show it: its name, padding multiple,
    the aggregation and the normalised member weights ``config`` runs with (default: the engine defaults)."""
    config = config or AttackConfig()
    names = [m.name for m in ensemble.members]
    weights = config.model_weights or (1.0,) * len(names)
    return {
        "name": ensemble.name, "padding_multiple": ensemble.downsample_factor, "aggregation": config.aggregation,
        "aggregations": list(get_args(get_type_hints(AttackConfig)["aggregation"])),
        "weights": {n: round(float(w) / float(sum(weights)), 6) for n, w in zip(names, weights, strict=True)},
    }


def ensemble_memory_model(ensemble: Ensemble) -> MemoryModel:
    """The memory model of an ensemble attack, from its members' measured ones (``memory.memory_model``).

    Members run one after another, so a step peaks at the LARGEST member's step (plus the few whole-image
    tensors the accumulation holds: the padded input, the summed gradient, a member's gradient and its
    scaled copy); the loop keeps the largest member's state; time adds up. Tiles are cut on the least
    common multiple of the factors, with the widest member halo rounded up to it."""
    models = [memory_model(m) for m in ensemble.members]
    lcm = ensemble.downsample_factor
    accumulation = ACCUMULATED_IMAGES * 3 * 4  # bytes per pixel: fp32 (3, Hp, Wp) tensors
    step = Line(max(m.step.fixed for m in models), max(m.step.per_pixel for m in models) + accumulation)
    state = max(m.state_per_pixel for m in models)
    forward_s = sum(m.forward_seconds_per_pixel for m in models)  # members' statistics passes add up, in time too
    return MemoryModel(
        step=step,
        forward=Line(max(m.forward.fixed for m in models), max(m.forward.per_pixel for m in models)),
        loop=Line(max(m.loop.fixed for m in models), step.per_pixel + state),
        seconds_per_pixel=sum(m.seconds_per_pixel for m in models),
        factor=lcm,
        halo=_round_up(max(m.halo for m in models), lcm),
        forward_seconds_per_pixel=forward_s,
        context_layers=sum(m.context_layers for m in models),
        stream_passes=sum(m.stream_passes * m.forward_seconds_per_pixel for m in models) / max(forward_s, 1e-30),
        attention_seconds=sum(m.attention_seconds for m in models),
        tile_overhead=max(m.tile_overhead for m in models),
        context_per_pixel=sum(m.context_per_pixel for m in models),  # every member's recorded context is kept
    )


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class EnsembleObjective:
    """Aggregate loss (B,) and input gradient (B, 3, H, W) over the members' single-model objectives.

    Has the single-model objective's interface (``loss``, ``loss_and_grad``, ``posterior``, ``prepare``,
    ``grid``, ``grid_tiles``, ``on_tile``), so ``Protector`` runs either without knowing which it has.
    """

    def __init__(self, members: Sequence[TiledObjective], config: AttackConfig) -> None:
        encoders = [m.encoder for m in members]
        for encoder in encoders:
            check_preset(encoder, config.loss_preset.name)
        if config.aggregation not in ("mean", "worst"):
            raise ConfigError(f"aggregation={config.aggregation!r}; use 'mean' (default) or 'worst'")
        weights = config.model_weights or (1.0,) * len(members)
        if len(weights) != len(members):
            names = ",".join(e.name for e in encoders)
            raise ConfigError(f"{len(weights)} model weights for {len(members)} models ({names}); give one each")
        self.members = list(members)
        self.aggregation = config.aggregation
        self.weights = [float(w) / float(sum(weights)) for w in weights]
        self.sign = objective_sign(config.loss_preset.direction)
        self.fixed_target = config.loss_preset.target_variance  # None: 'adaptive', each member's own
        self.multiple = padding_multiple(encoders)
        self.temperature = WORST_TEMPERATURE
        self.targets: list[float | torch.Tensor] = []  # per member, set by prepare()
        self.clean: list[torch.Tensor] = []  # per member, (B,) clean loss, set by prepare()
        self._grid: TileGrid | None = None

    # -- the interface Protector uses --------------------------------------------------------------------
    @property
    def grid(self) -> TileGrid | None:
        return self._grid

    @grid.setter
    def grid(self, grid: TileGrid | None) -> None:
        """Tile every member on the padded image, its core and halo rounded up to the member's factor."""
        self._grid = grid
        for member in self.members:
            member.grid = None if grid is None else self._member_grid(grid, member.encoder.downsample_factor)

    def _member_grid(self, grid: TileGrid, factor: int) -> TileGrid:
        return replace(
            grid, height=_round_up(grid.height, self.multiple), width=_round_up(grid.width, self.multiple),
            factor=factor, core=_round_up(grid.core, factor), halo=_round_up(grid.halo, factor),
            core_width=_round_up(grid.core_width, factor),
        )

    @property
    def grid_tiles(self) -> int:
        """Tiles per step over all members."""
        return sum(m.grid_tiles for m in self.members)

    @property
    def on_tile(self) -> TileCallback | None:
        return self.members[0].on_tile

    @on_tile.setter
    def on_tile(self, callback: TileCallback | None) -> None:
        """Per-member tile reports become one count over all members' tiles of the step."""
        offset = 0
        for member in self.members:
            member.on_tile = None if callback is None else self._shifted(callback, offset)
            offset += member.grid_tiles

    def _shifted(self, callback: TileCallback, offset: int) -> TileCallback:
        return lambda done, _total: callback(offset + done, self.grid_tiles)

    @torch.no_grad()
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first member's posterior (``Protector.target_variance``); ``prepare`` sets every member's own."""
        return self.members[0].posterior(self._pad(x))

    @torch.no_grad()
    def prepare(self, x: torch.Tensor, target: float | torch.Tensor) -> None:
        """Each member's target (the preset's v, or for 'adaptive' its own clean variance) and clean loss."""
        padded = self._pad(x)  # (B, 3, Hp, Wp)
        self.targets, self.clean = [], []
        for member in self.members:
            own: float | torch.Tensor = (
                self.fixed_target if self.fixed_target is not None
                else posterior_variance(member.posterior(padded)[1])  # (B, C, h, w)
            )
            member.prepare(padded, own)
            self.targets.append(own)
            self.clean.append(member.loss(padded, own, None).clamp_min(CLEAN_FLOOR))  # (B,)

    def loss(
        self, x: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Aggregate of the normalised member losses (B,) fp32, no gradient (``target``: see ``prepare``)."""
        padded = self._pad(x.detach())
        state = generator.get_state() if generator is not None else None
        normed = []
        for index, member in enumerate(self.members):
            if generator is not None and state is not None:
                generator.set_state(state)  # every member sees the same EoT draws
            normed.append(member.loss(padded, self.targets[index], generator) / self.clean[index])  # (B,)
        stacked = torch.stack(normed)  # (M, B)
        if self.aggregation == "mean":
            return (torch.tensor(self.weights, device=stacked.device)[:, None] * stacked).sum(dim=0)
        return stacked.gather(0, (self.sign * stacked).argmax(dim=0)[None])[0]

    def loss_and_grad(
        self, x: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator, sign: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Aggregate loss (B,) and the gradient of ``sign * aggregate.sum()`` w.r.t. x (B, 3, H, W).

        Members run one after another; each member's gradient is scaled per image by weight / clean loss
        (images of a batch do not interact in an encoder, so this is the normalised loss's gradient)."""
        leaf = x.detach().requires_grad_(True)
        padded = pad_to_multiple(leaf, self.multiple)  # (B, 3, Hp, Wp), keeps the graph of the pad
        loss = torch.zeros(x.shape[0], device=x.device)  # (B,)
        grad_padded = torch.zeros_like(padded)  # (B, 3, Hp, Wp)
        smooth = SmoothMax(x.shape[0], x.device, self.temperature)  # worst: the running soft-max over members
        state = generator.get_state()
        for index, member in enumerate(self.members):
            generator.set_state(state)  # every member sees the same EoT draws
            raw, g = member.loss_and_grad(padded.detach(), self.targets[index], generator, sign)  # (B,), grad
            scale = 1.0 / self.clean[index]  # (B,)
            normed = raw * scale
            if self.aggregation == "mean":
                loss = loss + self.weights[index] * normed
                grad_padded += g * (scale * self.weights[index])[:, None, None, None]
                continue
            loss = torch.where(sign * normed > sign * loss, normed, loss) if index else normed
            grad_padded = smooth.add(sign * normed, g * scale[:, None, None, None], grad_padded)
        del g
        (grad,) = torch.autograd.grad(padded, leaf, grad_padded)  # (B, 3, H, W): through the reflect pad
        return loss, grad

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return pad_to_multiple(x, self.multiple)  # (B, 3, Hp, Wp)


class SmoothMax:
    """The gradient of a log-sum-exp over members seen one at a time, without keeping their gradients.

    ``T * log sum_m exp(s_m / T)`` has the gradient ``sum_m softmax(s / T)_m * grad s_m``; the running
    maximum score rescales what was accumulated so far (the online soft-max), so memory stays that of one
    member. ``temperature`` 0 is the hard maximum (the gradient of the one member furthest from the goal).
    """

    def __init__(self, batch: int, device: torch.device, temperature: float) -> None:
        self.temperature = temperature
        self.top = torch.full((batch,), -torch.inf, device=device)  # (B,) largest score so far
        self.total = torch.zeros(batch, device=device)  # (B,) sum of exp((score - top) / T)

    def add(self, score: torch.Tensor, grad: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """Fold one member's score (B,) and gradient (B, 3, Hp, Wp) into ``acc``; returns the new average."""
        top = torch.maximum(self.top, score)  # (B,)
        if self.temperature <= 0:  # hard maximum: keep the gradient of the member with the top score
            take = (score > self.top)[:, None, None, None]  # ties: the first member, as argmax
            self.top = top
            return torch.where(take, grad, acc)
        old = torch.exp((self.top - top) / self.temperature) * self.total  # (B,) previous mass, rescaled
        new = torch.exp((score - top) / self.temperature)  # (B,)
        self.top, self.total = top, old + new
        mix = (new / self.total)[:, None, None, None]  # share of this member in the soft-max average
        return acc * (1 - mix) + grad * mix

