"""The Posterior Collapse Attack as a batched Linf PGD on the encoder's posterior.

Modelled on torchattacks' ``PGD``: hyper-parameters live in ``AttackConfig``; ``protect`` holds only the
loop; gradients come from ``torch.autograd.grad`` with respect to the input (the encoder is frozen); the
update rule (the default normalised-gradient step, sign-Rprop or the reference sign step) lives in
``pca_attack.attack.updates``.
Differences from the reference loop, all on purpose: the best iterate is kept (optional), images of any
size are reflect-padded to the encoder's multiple (by ``Encoder.posterior``) and cropped back, grayscale images get a
channel-tied perturbation (so they stay grayscale), each step's gradient may be low-passed first
(``smoothing``, ``pca_attack.attack.lowpass``: a coarser perturbation), and the result is rounded to the image's
integer grid with the budget re-enforced after rounding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pca_attack.attack.best import BestIterate
from pca_attack.attack.budget import Budget, make_budget, quantize
from pca_attack.attack.config import AttackConfig
from pca_attack.attack.losses import check_preset, objective_sign, posterior_variance
from pca_attack.attack.lowpass import lowpass
from pca_attack.attack.objective import combine
from pca_attack.attack.progress import ProgressCallback, StepProgress
from pca_attack.attack.shrink import Shrinker
from pca_attack.attack.tiling import TiledObjective, TileGrid
from pca_attack.attack.updates import make_update
from pca_attack.errors import ConfigError
from pca_attack.models.encoder import Encoder, Posterior
from pca_attack.models.ensemble import Ensemble, as_model

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class ProtectResult:
    """What ``Protector.protect`` returns for a batch of B images."""

    images: torch.Tensor  # (B, 3, H, W) float in [0, 1], on each image's integer grid
    loss_trace: torch.Tensor  # (B, steps) fp32: loss at the iterate each PGD step started from
    clean_loss: torch.Tensor  # (B,) loss of the clean images
    final_loss: torch.Tensor  # (B,) loss of the returned (quantised) images
    best_step: torch.Tensor  # (B,) int64: index of the iterate returned (steps = the last one)
    steps_run: int  # PGD steps actually run (fewer than configured after an early stop)
    elapsed_s: float
    # fp32 (mean, logvar) of ``images`` as the final loss measured them, each (B, C, h, w): what the certificate
    # of a lossless output reuses instead of encoding the same pixels again (None: ensembles)
    posterior: tuple[torch.Tensor, torch.Tensor | None] | None = None


class Protector:
    """Protect images against latent-diffusion editing by collapsing the VAE encoder's posterior."""

    def __init__(self, encoder: Encoder | Ensemble | Sequence[Encoder], config: AttackConfig | None = None) -> None:
        self.encoder = encoder = as_model(encoder)  # a list of one is the single-model path; more: an Ensemble
        self.config = config or AttackConfig()
        check_preset(encoder, self.config.loss_preset.name)  # deterministic encoders: no variance presets
        self._transform: Transform | None = None
        self._clean_start = True
        if self.config.eot:
            from pca_attack.attack.eot import build_eot

            self._transform = build_eot(self.config.eot)
        self.tiled = combine(  # several models: pca_attack.attack.objective.EnsembleObjective over their objectives
            encoder, self.config,
            lambda member: TiledObjective(
                member, self._transform, self.config.eot_samples, editor_resolution=self.config.editor_resolution,
                editor_spread=self.config.editor_spread,
            ),
        )

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Protector(model={self.encoder.name!r}, preset={c.preset!r}, eps={c.eps:g}/255, "
            f"step={c.step:g}/255 ({self._rule()}), steps={c.steps}, random_start={c.random_start}, seed={c.seed}, "
            f"keep_best={c.keep_best}, early_stop_patience={c.early_stop_patience}, eot={c.eot!r})"
        )

    def _rule(self) -> str:
        c = self.config
        if c.update == "rprop":
            return f"rprop x{c.rprop_init:g} etas={c.rprop_etas} range={c.rprop_range}"
        return f"{c.update}, {c.step_schedule}"

    # -- loss ----------------------------------------------------------------------------------------
    def loss(
        self, x_adv: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-image collapse loss (B,) fp32, averaged over EoT samples when EoT is on (no gradient);
        tiled when ``protect`` runs tiled, plus the editor-resolution term when configured."""
        return self.tiled.loss(x_adv, target, generator)

    def loss_and_posterior(
        self, x_adv: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Posterior | None]:
        """``loss`` and, for one model, the posterior of x_adv it encoded (``TiledObjective.loss_and_posterior``;
        None for an ensemble)."""
        if isinstance(self.tiled, TiledObjective):
            return self.tiled.loss_and_posterior(x_adv, target, generator)
        return self.tiled.loss(x_adv, target, generator), None

    def target_variance(self, x: torch.Tensor) -> float | torch.Tensor:
        """The preset's v; for 'adaptive', the clean posterior variance (detached), (B, C, h, w)."""
        v = self.config.loss_preset.target_variance
        if v is not None:
            return v
        _, logvar = self.tiled.posterior(x)  # tiled when the attack is
        return posterior_variance(logvar)

    def loss_and_grad(
        self, x_adv: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator, sign: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image loss (B,) and the gradient of the summed objective w.r.t. the input (B, 3, H, W):
        in one pass, or tile by tile (``pca_attack.attack.tiling``) with the memory of one tile."""
        return self.tiled.loss_and_grad(x_adv, target, generator, sign)

    # -- the loop ------------------------------------------------------------------------------------
    def protect(
        self,
        x: torch.Tensor,
        *,
        grayscale: torch.Tensor | None = None,
        levels: torch.Tensor | None = None,
        tiles: TileGrid | None = None,
        progress: ProgressCallback | None = None,
        start: torch.Tensor | None = None,
    ) -> ProtectResult:
        """Run the attack on a batch.

        x: (B, 3, H, W) float in [0, 1] (on the image grid for the budget guarantee).
        grayscale: (B,) bool; True ties the perturbation across channels (gray stays gray).
        levels: (B,) grid size per image, 255 (8-bit, default) or 65535 (16-bit sources).
        tiles: run each step tile by tile on this grid (see ``pca_attack.attack.memory.plan_attack``).
        progress: called after every tile of every step (``StepProgress``).
        start: (B, 3, H, W) first iterate (e.g. the fast generator's output), rounded onto the grid within the
            box (callers project it first: ``pca_attack.fast.generator.generator_image``);
            None: the clean image or the random start.
        """
        began = time.perf_counter()
        cfg = self.config
        self.tiled.grid = tiles
        x, gray, lv = self._prepare(x, grayscale, levels)  # (B, 3, H, W), (B,), (B,)
        sign = objective_sign(cfg.loss_preset.direction)
        target = self.target_variance(x)
        self.tiled.prepare(x, target)
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        budget = make_budget(cfg, x, gray)

        self._clean_start = start is None and not cfg.random_start  # the first traced loss is the clean one
        if start is None:
            x_adv = budget.start(cfg.random_start, generator)  # (B, 3, H, W)
        else:
            # a given start (the fast generator's image, already projected by this budget) is only held to the
            # box on the image grid, not re-projected: fast+N's first iterate is then exactly the fast image
            x_adv = quantize(start.detach().to(x.device, torch.float32).clamp(0, 1), x, budget.bound_255, lv)
        update = make_update(cfg, x_adv)
        tracker = BestIterate(x_adv, cfg)
        for step in range(cfg.steps):
            report = self._reporter(progress, step, began)
            loss, grad = self.loss_and_grad(x_adv, target, generator, sign)  # (B,), (B, 3, H, W)
            tracker.observe(step, x_adv, loss, sign)
            smooth = lowpass(grad, cfg.smoothing)  # (B, 3, H, W): the gradient itself when smoothing is off
            move = update.move(budget.tie_gradient(smooth), step)  # (B, 3, H, W), a new tensor
            del smooth, grad  # not kept beside the move, nor beside the next step's gradient (a new buffer when tiled)
            x_adv = budget.project(move.neg_().add_(x_adv))  # x_adv - move, in the move's memory (exactly)
            del move  # whole-image tensors the loop keeps: x, x_adv, the best iterate (loop_memory measures it)
            report(self.tiled.grid_tiles, float(loss.mean()))
            if tracker.should_stop():
                break
        self.tiled.on_tile = None
        return self._finish(budget, x_adv, lv, tracker, target, generator, sign, began)

    def _reporter(
        self, progress: ProgressCallback | None, step: int, start: float
    ) -> Callable[[int, float | None], None]:
        """report(tiles done, loss) for this step; per-tile reports come from the objective."""
        steps, tiles = self.config.steps, self.tiled.grid_tiles

        def report(done: int, loss: float | None = None) -> None:
            if progress is not None and (done < tiles or loss is not None):
                progress(StepProgress(step + 1, steps, done, tiles, time.perf_counter() - start, loss))

        self.tiled.on_tile = lambda done, _total: report(done)
        return report

    def _prepare(
        self, x: torch.Tensor, grayscale: torch.Tensor | None, levels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validate the batch; move images (fp32), grayscale flags and grid sizes to the encoder's device."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ConfigError("pixel values must be finite and inside [0, 1]")
        device, batch = self.encoder.device, x.shape[0]
        gray = grayscale if grayscale is not None else torch.zeros(batch, dtype=torch.bool)
        lv = levels if levels is not None else torch.full((batch,), 255.0)
        x = x.detach().to(device=device, dtype=torch.float32)
        return x, gray.to(device), lv.to(device, torch.float32)

    @torch.no_grad()
    def _finish(
        self,
        budget: Budget,
        x_adv: torch.Tensor,
        lv: torch.Tensor,
        tracker: BestIterate,
        target: float | torch.Tensor,
        generator: torch.Generator,
        sign: float,
        start: float,
    ) -> ProtectResult:
        """Pick the iterate to return, round it to the image grid (budget re-enforced) and measure it."""
        cfg = self.config
        # keep_best: the last iterate's loss (never evaluated in the loop), with the same estimator as the others;
        # tiled, it is measured on the image grid, so that it is also the final loss when the last is returned
        shared = cfg.keep_best and self._one_final_pass()
        q_last = budget.to_grid(x_adv, lv) if shared else x_adv  # (B, 3, H, W)
        last_loss: torch.Tensor | None = None  # (B,)
        last_kept: Posterior | None = None  # the posterior of q_last, the bytes the certificate may reuse
        if shared:
            last_loss, last_kept = self.loss_and_posterior(q_last, target, generator)
        elif cfg.keep_best:
            last_loss = self.loss(q_last, target, generator)
        last_obj = None if last_loss is None else sign * last_loss
        x = budget.x  # (B, 3, H, W)
        images = budget.to_grid(tracker.choose(x_adv, last_obj), lv)  # (B, 3, H, W) on the grid, budget held
        if cfg.shrink:  # the smallest perturbation keeping cfg.shrink of the collapse (attack/shrink.py)
            shrinker = Shrinker(budget, lv, lambda im: sign * self.loss(im, target))
            images = shrinker(images, lambda im: self.loss_and_grad(im, target, generator, sign)[1], cfg.shrink)
        first_is_clean = bool(tracker.trace) and self._clean_start and not self._drawn
        clean_loss = tracker.trace[0] if first_is_clean else self.loss(x, target).float().cpu()
        final_loss, kept = self._final_loss(images, target, q_last if shared else None, last_loss, last_kept)
        return ProtectResult(
            images=images.detach(),
            loss_trace=tracker.loss_trace(x.shape[0]),
            clean_loss=clean_loss,
            final_loss=final_loss,
            best_step=tracker.best_step.cpu(),
            steps_run=tracker.steps_run,
            elapsed_s=time.perf_counter() - start,
            posterior=kept,
        )

    def _one_final_pass(self) -> bool:
        """Tiled (each loss-only pass streams the whole-image statistics), without random draws (whose loss is not
        the final loss) and without shrink: one exact evaluation serves keep_best and the final loss."""
        grid = self.tiled.grid
        return grid is not None and len(grid) > 1 and not self._drawn and not self.config.shrink

    @property
    def _drawn(self) -> bool:
        """The objective draws at random (EoT, or the editor's size with ``editor_spread``): a pass with a
        generator measures one draw, not the loss of the returned images (measured without one)."""
        config = self.config
        return self._transform is not None or (config.editor_spread > 0 and config.editor_resolution is not None)

    @torch.no_grad()
    def _final_loss(
        self, images: torch.Tensor, target: float | torch.Tensor, q_last: torch.Tensor | None,
        last_loss: torch.Tensor | None, last_kept: Posterior | None,
    ) -> tuple[torch.Tensor, Posterior | None]:
        """(B,) loss of the returned images and their posterior (None: ensembles): those measured on the last
        iterate on the grid when it is exactly the returned images, else measured now."""
        if q_last is not None and last_loss is not None and torch.equal(images, q_last):
            return last_loss.float().cpu(), last_kept
        loss, posterior = self.loss_and_posterior(images, target)
        return loss.float().cpu(), posterior
