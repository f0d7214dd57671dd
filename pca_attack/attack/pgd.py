"""The Posterior Collapse Attack as a batched Linf sign-PGD on the encoder's posterior.

Modelled on torchattacks' ``PGD``: hyper-parameters live in ``AttackConfig``; ``protect`` holds only the
loop; gradients come from ``torch.autograd.grad`` with respect to the input (the encoder is frozen); the
update rule (reference sign step, or the default per-pixel sign-Rprop) lives in ``pca_attack.attack.updates``.
Differences from the reference loop, all on purpose: the best iterate is kept (optional), images of any
size are reflect-padded to the encoder's multiple and cropped back, grayscale images get a
channel-tied perturbation (so they stay grayscale), and the result is rounded to the image's integer
grid with the budget re-enforced after rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pca_attack.attack.config import AttackConfig
from pca_attack.attack.losses import objective_sign, pca_loss
from pca_attack.attack.updates import make_update
from pca_attack.errors import ConfigError
from pca_attack.models.encoder import Encoder

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


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad (B, C, H, W) on the bottom/right so H and W become multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def quantize(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, levels: torch.Tensor
) -> torch.Tensor:
    """Round to each image's grid (levels = 255 or 65535) and re-enforce |q - x| <= eps (0-255 scale).

    x_adv, x: (B, 3, H, W) in [0, 1]; levels: (B,) float. Returns (B, 3, H, W) on the grid.
    """
    lv = levels.view(-1, 1, 1, 1).to(x.dtype)  # (B, 1, 1, 1)
    budget = torch.floor(eps / 255.0 * lv + 1e-6)  # (B, 1, 1, 1) in grid steps
    x_int = torch.round(x * lv)  # (B, 3, H, W)
    q_int = torch.round(x_adv * lv)
    q_int = torch.minimum(torch.maximum(q_int, x_int - budget), x_int + budget).clamp(min=0)
    q_int = torch.minimum(q_int, lv)
    return q_int / lv


class Protector:
    """Protect images against latent-diffusion editing by collapsing the VAE encoder's posterior."""

    def __init__(self, encoder: Encoder, config: AttackConfig | None = None) -> None:
        self.encoder = encoder
        self.config = config or AttackConfig()
        self._transform: Transform | None = None
        if self.config.eot:
            from pca_attack.attack.eot import build_eot

            self._transform = build_eot(self.config.eot)

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
        return f"sign, {c.step_schedule}"

    # -- loss ----------------------------------------------------------------------------------------
    def posterior(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of (B, 3, H, W) images of any size (padded here): mean, logvar (B, C, h, w)."""
        return self.encoder(pad_to_multiple(x01, self.encoder.downsample_factor))

    def loss(
        self, x_adv: torch.Tensor, target: float | torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-image collapse loss (B,) fp32, averaged over EoT samples when EoT is on."""
        if self._transform is None or generator is None:
            mean, logvar = self.posterior(x_adv)
            return pca_loss(mean, logvar, target)
        total = torch.zeros(x_adv.shape[0], device=x_adv.device)
        for _ in range(self.config.eot_samples):
            mean, logvar = self.posterior(self._transform(x_adv, generator))
            total = total + pca_loss(mean, logvar, target)
        return total / self.config.eot_samples

    def target_variance(self, x: torch.Tensor) -> float | torch.Tensor:
        """The preset's v; for 'adaptive', the clean posterior variance (detached), (B, C, h, w)."""
        v = self.config.loss_preset.target_variance
        if v is not None:
            return v
        with torch.no_grad():
            _, logvar = self.posterior(x)
        return logvar.float().exp().detach()

    # -- the loop ------------------------------------------------------------------------------------
    def protect(
        self,
        x: torch.Tensor,
        *,
        grayscale: torch.Tensor | None = None,
        levels: torch.Tensor | None = None,
    ) -> ProtectResult:
        """Run the attack on a batch.

        x: (B, 3, H, W) float in [0, 1] (on the image grid for the budget guarantee).
        grayscale: (B,) bool; True ties the perturbation across channels (gray stays gray).
        levels: (B,) grid size per image, 255 (8-bit, default) or 65535 (16-bit sources).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ConfigError("pixel values must be finite and inside [0, 1]")
        start = time.perf_counter()
        cfg = self.config
        device = self.encoder.device
        x = x.detach().to(device=device, dtype=torch.float32)  # (B, 3, H, W)
        batch = x.shape[0]
        gray = (grayscale if grayscale is not None else torch.zeros(batch, dtype=torch.bool)).to(device)
        lv = (levels if levels is not None else torch.full((batch,), 255.0)).to(device, torch.float32)
        eps = cfg.eps / 255.0
        sign = objective_sign(cfg.loss_preset.direction)
        target = self.target_variance(x)
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed)

        x_adv = x.clone()  # (B, 3, H, W)
        update = make_update(cfg, x_adv)
        if cfg.random_start:
            noise = torch.empty(x.shape).uniform_(-eps, eps, generator=generator).to(device)
            noise = torch.where(gray.view(-1, 1, 1, 1), noise[:, :1].expand_as(noise), noise)
            x_adv = (x + noise).clamp(0.0, 1.0)

        trace: list[torch.Tensor] = []
        best = x_adv.clone()
        best_obj = torch.full((batch,), math.inf, device=device)
        best_step = torch.zeros(batch, dtype=torch.long, device=device)
        stale = torch.zeros(batch, dtype=torch.long, device=device)
        steps_run = 0
        for step in range(cfg.steps):
            x_adv.requires_grad_(True)
            loss = self.loss(x_adv, target, generator)  # (B,)
            (grad,) = torch.autograd.grad((sign * loss).sum(), x_adv)  # (B, 3, H, W)
            obj = (sign * loss).detach()
            trace.append(loss.detach().float().cpu())
            improved = obj < best_obj - cfg.early_stop_tol * best_obj.abs().clamp(min=1e-12)
            stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
            better = obj < best_obj
            best = torch.where(better.view(-1, 1, 1, 1), x_adv.detach(), best)
            best_obj = torch.where(better, obj, best_obj)
            best_step = torch.where(better, torch.full_like(best_step, step), best_step)

            grad = torch.where(gray.view(-1, 1, 1, 1), grad.sum(dim=1, keepdim=True).expand_as(grad), grad)
            x_adv = x_adv.detach() - update.move(grad, step)
            eta = torch.clamp(x_adv - x, min=-eps, max=eps)
            x_adv = torch.clamp(x + eta, min=0.0, max=1.0).detach()
            steps_run = step + 1
            if cfg.early_stop_patience and bool((stale >= cfg.early_stop_patience).all()):
                break

        with torch.no_grad():
            if cfg.keep_best:
                # loss of the last iterate (never evaluated above), with the same estimator as the others
                last_obj = sign * self.loss(x_adv, target, generator)
                take_last = last_obj < best_obj
                chosen = torch.where(take_last.view(-1, 1, 1, 1), x_adv, best)
            else:  # the last iterate is returned as is: no need to pay a forward pass for its loss
                take_last = torch.ones(batch, dtype=torch.bool, device=device)
                chosen = x_adv
            best_step = torch.where(take_last, torch.full_like(best_step, steps_run), best_step)
            images = quantize(chosen, x, cfg.eps, lv)
            final_loss = self.loss(images, target).float().cpu()
            clean_loss = (
                trace[0] if trace and not cfg.random_start and self._transform is None
                else self.loss(x, target).float().cpu()
            )
        loss_trace = torch.stack(trace, dim=1) if trace else torch.zeros(batch, 0)
        return ProtectResult(
            images=images.detach(),
            loss_trace=loss_trace,
            clean_loss=clean_loss,
            final_loss=final_loss,
            best_step=best_step.cpu(),
            steps_run=steps_run,
            elapsed_s=time.perf_counter() - start,
        )
