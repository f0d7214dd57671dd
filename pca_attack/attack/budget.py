"""Where the perturbation may live: the budget around the clean image, and rounding to the image grid.

A budget owns everything the PGD loop needs to know about the feasible set: the optional random start, tying
the gradient across channels for grayscale images, and the projection after each update. Three budgets share
that interface:

* ``LinfBudget``: |x_adv - x| <= eps per pixel and channel (a scalar, or a per-pixel map), x_adv in [0, 1];
* ``JndBudget``: the same box with a per-pixel bound from a just-noticeable-difference (JND) model of the
  image itself (``jnd_map``), never above eps, so the L-inf certificate still holds;
* ``PsnrBudget``: the eps box intersected with an L2 ball whose radius is a target pixel PSNR (an RMS bound):
  the energy goes where the encoder is sensitive instead of to every pixel (PSNR is an L2 measure). Its
  projection is exact (``project_box_ball``) and its rounding (``fit_ball_on_grid``) keeps the ball on the bytes;
* ``ColourNeutral``: wraps any of them and also keeps the perturbation's mean per channel near zero, globally and
  over large windows (alternating projections), so the output gets no colour cast.

``quantize`` rounds to the image grid and re-enforces the (scalar or per-pixel) bound on the integers, so the
budget holds on the returned bytes; ``Budget.to_grid`` is that rounding plus, for ``PsnrBudget``, the ball.

The JND model is the classic pixel-domain one: background-luminance adaptation and texture (spatial) masking of
Chou & Li, "A perceptually tuned subband image coder based on the measure of just-noticeable-distortion
profile", IEEE TCSVT 5(6), 1995 (their 5x5 operators and constants), combined with the nonlinear additivity
model of Yang et al., "Motion-compensated residue preprocessing in video coding based on just-noticeable-
distortion profile", IEEE TCSVT 15(6), 2005 (``JND = T_l + T_t - 0.3 min(T_l, T_t)``). Change is masked in
dark and textured regions (large JND) and visible in flat mid-to-bright regions (small JND). Two choices are
this project's, not the papers': chroma saturation raises the bound by up to ``SATURATION_GAIN`` (colour
changes in saturated areas are less visible than in neutral ones such as skin or sky), and the JND is
mapped to the budget as ``eps * clamp(JND / JND_FULL, FLOOR_SHARE, 1)`` then smoothed, so a pixel whose JND
reaches ``JND_FULL`` grey levels may use the whole eps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from pca_attack.attack.lowpass import gaussian_kernel

if TYPE_CHECKING:
    from pca_attack.attack.config import AttackConfig

Bound = float | torch.Tensor  # a scalar, or a (B, 1, H, W) map; on the 0-255 scale or on [0, 1] as named

JND_FULL = 12.0  # JND (grey levels) at which a pixel may use the whole eps
FLOOR_SHARE = 0.25  # the smallest share of eps any pixel keeps (flat, mid-grey areas)
SATURATION_GAIN = 0.5  # bound x (1 + gain * saturation), saturation in [0, 1]
SMOOTH_SIGMA = 1.5  # Gaussian smoothing of the map, in pixels (no seams between masked and unmasked areas)
QUANTIZE_ROWS = 64  # rows per band of ``quantize``'s scratch

_BACKGROUND = torch.tensor([
    [1, 1, 1, 1, 1], [1, 2, 2, 2, 1], [1, 2, 0, 2, 1], [1, 2, 2, 2, 1], [1, 1, 1, 1, 1],
], dtype=torch.float32) / 32.0
_GRADIENTS = torch.tensor([
    [[0, 0, 0, 0, 0], [1, 3, 8, 3, 1], [0, 0, 0, 0, 0], [-1, -3, -8, -3, -1], [0, 0, 0, 0, 0]],
    [[0, 0, 1, 0, 0], [0, 8, 3, 0, 0], [1, 3, 0, -3, -1], [0, 0, -3, -8, 0], [0, 0, -1, 0, 0]],
    [[0, 0, 1, 0, 0], [0, 0, 3, 8, 0], [-1, -3, 0, 3, 1], [0, -8, -3, 0, 0], [0, 0, -1, 0, 0]],
    [[0, 1, 0, -1, 0], [0, 3, 0, -3, 0], [0, 8, 0, -8, 0], [0, 3, 0, -3, 0], [0, 1, 0, -1, 0]],
], dtype=torch.float32) / 16.0


def _filter(image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) filtered by K 5x5 kernels (K, 5, 5) with reflect padding -> (B, K, H, W)."""
    weight = kernels.to(image.device, image.dtype).unsqueeze(1)  # (K, 1, 5, 5)
    return F.conv2d(F.pad(image, (2, 2, 2, 2), mode="replicate"), weight)


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W)."""
    g = gaussian_kernel(sigma, image.device, image.dtype)  # (2r+1,)
    radius = g.numel() // 2
    out = F.conv2d(F.pad(image, (radius, radius, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), g.view(1, 1, -1, 1))


def jnd_levels(x: torch.Tensor) -> torch.Tensor:
    """Just-noticeable difference per pixel, in grey levels (0-255): (B, 3, H, W) in [0, 1] -> (B, 1, H, W)."""
    rgb = x.float() * 255.0
    luma = (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3])  # (B, 1, H, W)
    background = _filter(luma, _BACKGROUND[None])  # (B, 1, H, W) weighted local mean
    max_gradient = _filter(luma, _GRADIENTS).abs().amax(dim=1, keepdim=True)  # (B, 1, H, W)
    luminance = torch.where(
        background <= 127,
        17.0 * (1.0 - torch.sqrt(background.clamp(min=0) / 127.0)) + 3.0,
        3.0 / 128.0 * (background - 127.0) + 3.0,
    )  # Chou & Li's visibility threshold of the background luminance
    texture = (max_gradient * (0.0001 * background + 0.115) + (0.5 - 0.01 * background)).clamp(min=0)
    return luminance + texture - 0.3 * torch.minimum(luminance, texture)  # Yang et al.'s NAMM


def jnd_map(x: torch.Tensor, eps_255: float) -> torch.Tensor:
    """Per-pixel budget on the 0-255 scale, (B, 1, H, W) within [FLOOR_SHARE * eps, eps]: larger where
    change is masked (texture, dark, saturated), smaller in flat bright or neutral areas."""
    levels = jnd_levels(x)  # (B, 1, H, W)
    saturation = (x.amax(dim=1, keepdim=True) - x.amin(dim=1, keepdim=True)).float()  # (B, 1, H, W) in [0, 1]
    share = (levels / JND_FULL * (1.0 + SATURATION_GAIN * saturation)).clamp(FLOOR_SHARE, 1.0)
    return (eps_255 * _gaussian_blur(share, SMOOTH_SIGMA)).clamp(FLOOR_SHARE * eps_255, eps_255)


def budget_map_image(x: torch.Tensor, eps_255: float) -> torch.Tensor:
    """The JND budget map of one image x (3, H, W) as an 8-bit grey picture (H, W) uint8: 255 = the whole eps
    (save it with ``PIL.Image.fromarray(m.numpy())``)."""
    share = jnd_map(x[None], eps_255)[0, 0] / eps_255  # (H, W) in [FLOOR_SHARE, 1]
    return torch.round(share * 255.0).clamp(0, 255).to(torch.uint8)


class Budget(Protocol):
    """The feasible set the PGD loop and the shrink pass work in."""

    x: torch.Tensor  # (B, 3, H, W) clean images

    @property
    def bound_255(self) -> Bound: ...

    def start(self, random: bool, generator: torch.Generator) -> torch.Tensor: ...

    def tie_gradient(self, grad: torch.Tensor) -> torch.Tensor: ...

    def project(self, x_adv: torch.Tensor) -> torch.Tensor: ...

    def to_grid(self, x_adv: torch.Tensor, levels: torch.Tensor) -> torch.Tensor: ...


class LinfBudget:
    """|x_adv - x| <= eps (per pixel, per channel) and x_adv in [0, 1]; grayscale images move channel-tied.

    ``eps_255`` is a scalar or a per-pixel map (B, 1, H, W) on the 0-255 scale."""

    def __init__(self, x: torch.Tensor, eps_255: Bound, grayscale: torch.Tensor) -> None:
        self.x = x  # (B, 3, H, W) clean images in [0, 1]
        self._bound_255 = eps_255
        self.eps = eps_255 / 255.0  # scalar or (B, 1, H, W) on [0, 1]
        self.gray = grayscale.view(-1, 1, 1, 1)  # (B, 1, 1, 1) bool

    @property
    def bound_255(self) -> Bound:
        """The bound on the 0-255 scale, scalar or (B, 1, H, W): what ``quantize`` re-enforces on integers."""
        return self._bound_255

    def start(self, random: bool, generator: torch.Generator) -> torch.Tensor:
        """The first iterate: the clean image, or uniform noise inside the budget (channel-tied for gray)."""
        if not random:
            return self.x.clone()
        noise = torch.empty(self.x.shape).uniform_(-1.0, 1.0, generator=generator).to(self.x.device)
        return self.project(self.x + self.tie(noise * self.eps))

    def tie(self, t: torch.Tensor) -> torch.Tensor:
        """Make a (B, 3, H, W) step direction channel-tied on grayscale images (gray stays gray)."""
        return torch.where(self.gray, t[:, :1].expand_as(t), t)

    def tie_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """Gradient of the channel-tied perturbation: the channel sum, broadcast back (B, 3, H, W)."""
        if not bool(self.gray.any()):
            return grad  # no copy of a whole-image tensor when there is nothing to tie
        return torch.where(self.gray, grad.sum(dim=1, keepdim=True).expand_as(grad), grad)

    def project(self, x_adv: torch.Tensor) -> torch.Tensor:
        """Back into the box around x and into [0, 1]; detached."""
        eps = torch.as_tensor(self.eps, dtype=x_adv.dtype, device=x_adv.device)
        eta = (x_adv.detach() - self.x).clamp_(min=-eps, max=eps)  # (B, 3, H, W): one image, edited in place
        return eta.add_(self.x).clamp_(min=0.0, max=1.0)

    def to_grid(self, x_adv: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """x_adv (B, 3, H, W) rounded to each image's grid (levels (B,)) with the bound re-enforced: the bytes."""
        return quantize(x_adv, self.x, self.bound_255, levels)


class JndBudget(LinfBudget):
    """The L-inf box with a per-pixel bound from the image's JND map (``jnd_map``), never above eps."""

    def __init__(self, x: torch.Tensor, eps_255: float, grayscale: torch.Tensor) -> None:
        super().__init__(x, jnd_map(x, eps_255), grayscale)


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm of (B, ...) in float64 -> (B,)."""
    return t.double().pow(2).flatten(1).sum(dim=1).sqrt()


def _ball_scale(v: torch.Tensor, low: torch.Tensor, high: torch.Tensor, radius: float) -> float:
    """The exact t in [0, 1) with ||clip(t v, low, high)||_2 = radius, for one image whose clipped v is outside.

    Value i is clipped once t |v_i| >= c_i (c_i the bound on its side). For a set A of clipped values the
    squared norm is C_A + t^2 V_A (C_A: their c^2; V_A: the free values' v^2), so t_A = sqrt((r^2 - C_A) / V_A).
    Starting from the values clipped at t = 1, each t_A is <= the answer (the model over-counts the values that
    are not yet clipped) and the next clipped set is that of t_A: t grows monotonically, always feasible, and
    stops, exact, when the clipped set no longer changes (a few passes over the image, no sort)."""
    a = v.abs()  # (3, H, W)
    c = torch.where(v >= 0, high, -low)  # (3, H, W) the bound in v's direction, >= 0
    a_sq, c_sq = a.double().pow(2), c.double().pow(2)  # (3, H, W) float64, computed once
    total_sq = float(a_sq.sum())
    clipped = a >= c  # (3, H, W) clipped at t = 1
    t = 0.0
    for _ in range(64):
        clipped_sq = float(torch.where(clipped, c_sq, 0.0).sum())
        free_sq = total_sq - float(torch.where(clipped, a_sq, 0.0).sum())
        t = min(math.sqrt(max(radius**2 - clipped_sq, 0.0) / free_sq), 1.0) if free_sq > 0 else 0.0
        now = t * a >= c
        if torch.equal(now, clipped):
            break
        clipped = now
    return t * (1.0 - 4 * torch.finfo(v.dtype).eps)  # a hair inside: float rounding never lands outside


def project_box_ball(v: torch.Tensor, low: torch.Tensor, high: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each image's v (B, 3, H, W) onto {low <= e <= high} ∩ {||e||_2 <= radius}.

    ``low <= 0 <= high`` (broadcastable to v), radius (B,). The KKT conditions give the solution
    ``clip(t v, low, high)`` with t = 1 / (1 + mu) in (0, 1]: t = 1 when the clipped v is inside the ball, else
    the t where the clipped image's norm reaches the radius (``_ball_scale``: exact, by active-set updates)."""
    inside = torch.minimum(torch.maximum(v, low), high)  # (B, 3, H, W) the box projection (t = 1)
    over = _norms(inside) > radius.double()  # (B,)
    if not bool(over.any()):
        return inside
    low, high = low.expand_as(v), high.expand_as(v)
    out = []
    for b in range(v.shape[0]):
        t = _ball_scale(v[b], low[b], high[b], float(radius[b])) if bool(over[b]) else 1.0
        out.append(torch.minimum(torch.maximum(v[b] * t, low[b]), high[b]))
    return torch.stack(out)


def fit_ball_on_grid(
    q: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor, radius: torch.Tensor, levels: torch.Tensor,
    grayscale: torch.Tensor,
) -> torch.Tensor:
    """Keep the rounded images q (B, 3, H, W, on the grid) inside the L2 ball of ``radius`` (B,) on [0, 1].

    Rounding to nearest adds about 1/12 grid step squared per value, so an iterate on the ball's surface lands
    just outside. Where it does, values that rounding moved away from x are moved one grid step back toward it,
    those whose rounding was closest to a tie first (the least extra error), until the norm fits: truncating
    every one of them would give a norm <= ||x_adv - x||. Moves toward x keep the box and [0, 1]; grayscale
    images move all three channels together. Returns (B, 3, H, W) on the grid."""
    out = []
    for b in range(q.shape[0]):
        lv = float(levels[b])
        d = torch.round((q[b] - x[b]) * lv)  # (3, H, W) integer perturbation
        cont = (x_adv[b] - x[b]) * lv  # (3, H, W) before rounding, grid units
        limit = (float(radius[b]) * lv) ** 2
        if bool(grayscale[b]):
            d, cont = d[:1], cont[:1]
        weight = 3.0 if bool(grayscale[b]) else 1.0  # a gray value stands for three
        excess = weight * float(d.double().pow(2).sum()) - limit
        if excess > 0:
            grown = d.abs() - cont.abs()  # > 0 where rounding moved away from x
            candidate = (grown > 0) & (d != 0)
            saving = torch.where(candidate, weight * (2 * d.abs() - 1), 0.0).flatten().double()  # norm^2 saved
            order = torch.argsort(torch.where(candidate, grown, -1.0).flatten(), descending=True)
            needed = torch.cumsum(saving[order], 0) < excess  # (N,) prefix still short of the excess
            count = min(int(needed.sum()) + 1, int(candidate.sum()))
            flat = d.flatten().clone()
            chosen = order[:count]
            flat[chosen] -= torch.sign(flat[chosen])
            d = flat.view_as(d)
        out.append((torch.round(x[b] * lv) + d.expand(3, -1, -1)) / lv)  # exactly on the grid, as quantize
    return torch.stack(out)


class PsnrBudget(LinfBudget):
    """The eps box (and [0, 1]) intersected with an L2 ball: the perturbation's pixel PSNR stays >= ``psnr_db``
    (its root-mean-square on [0, 1] <= 10^(-psnr_db / 20)), measured over all 3 x H x W values of each image."""

    def __init__(self, x: torch.Tensor, eps_255: float, grayscale: torch.Tensor, psnr_db: float) -> None:
        super().__init__(x, eps_255, grayscale)
        self.psnr_db = psnr_db
        rms = 10.0 ** (-psnr_db / 20.0)
        self.radius = torch.full((x.shape[0],), rms * math.sqrt(x[0].numel()), device=x.device)  # (B,) on [0, 1]

    def project(self, x_adv: torch.Tensor) -> torch.Tensor:
        """Exact projection onto box ∩ [0, 1] ∩ ball (``project_box_ball``); detached."""
        eps = torch.as_tensor(self.eps, dtype=x_adv.dtype, device=x_adv.device)
        low, high = torch.maximum(-eps, -self.x), torch.minimum(eps, 1.0 - self.x)  # (B, 3, H, W), 0 inside
        eta = project_box_ball(x_adv.detach() - self.x, low, high, self.radius)
        return (self.x + eta).clamp(0.0, 1.0)

    def to_grid(self, x_adv: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """Rounded with the box re-enforced, then held inside the ball on the grid (``fit_ball_on_grid``)."""
        q = quantize(x_adv, self.x, self.bound_255, levels)
        return fit_ball_on_grid(q, self.x, x_adv, self.radius, levels, self.gray.view(-1))


class ColourNeutral:
    """Wraps a budget: after its projection, the perturbation's mean per channel is removed globally and over
    ``window`` x ``window`` tiles (bilinearly interpolated), alternating with the inner projection
    ``rounds`` times; the inner projection comes last, so the box always holds."""

    def __init__(self, inner: LinfBudget, window: int = 128, rounds: int = 3) -> None:
        self.inner = inner
        self.x = inner.x
        self.window = window
        self.rounds = rounds

    @property
    def bound_255(self) -> Bound:
        return self.inner.bound_255

    def start(self, random: bool, generator: torch.Generator) -> torch.Tensor:
        return self.project(self.inner.start(random, generator)) if random else self.x.clone()

    def tie_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        return self.inner.tie_gradient(grad)

    def to_grid(self, x_adv: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return self.inner.to_grid(x_adv, levels)

    def neutralise(self, eta: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """(B, 3, H, W) perturbation minus its local (tile) means and its global mean per channel. ``in_place``
        (no gradient): edits eta instead of making two more whole-image tensors."""
        h, w = eta.shape[-2:]
        if min(h, w) >= 2 * self.window:
            tiles = F.avg_pool2d(eta, self.window, ceil_mode=True)  # (B, 3, ~H/window, ~W/window)
            if in_place:
                subtract_upsampled_(eta, tiles)
            else:
                eta = eta - F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)  # (B, 3, H, W)
        mean = eta.mean(dim=(2, 3), keepdim=True)  # (B, 3, 1, 1)
        return eta.sub_(mean) if in_place else eta - mean

    def project(self, x_adv: torch.Tensor) -> torch.Tensor:
        x_adv = self.inner.project(x_adv)  # a new, detached tensor: edited in place below
        for _ in range(self.rounds):
            x_adv = self.inner.project(self.neutralise(x_adv.sub_(self.x), in_place=True).add_(self.x))
        return x_adv


def subtract_upsampled_(eta: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """eta -= ``coarse`` upsampled bilinearly to eta's size (``F.interpolate``, align_corners=False), in place
    and in bands of ``QUANTIZE_ROWS`` rows: no whole-image scratch. (``F.interpolate`` on the CPU holds a hidden
    whole-size buffer beside its output: two images more, 290 MB at 12 MP.) eta: (B, C, H, W); coarse: (B, C, h, w).
    The same sums as ``F.interpolate``: across the width first (a (B, C, h, W) strip), then down the rows."""
    height, width = eta.shape[-2:]
    strip = F.interpolate(coarse, size=(coarse.shape[-2], width), mode="bilinear", align_corners=False)  # (B, C, h, W)
    scale = coarse.shape[-2] / height
    source = ((torch.arange(height, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0.0)  # (H,) source rows
    upper = source.floor().long().clamp(max=coarse.shape[-2] - 1)  # (H,)
    lower = (upper + 1).clamp(max=coarse.shape[-2] - 1)  # (H,)
    weight = (source - upper).to(eta.device, eta.dtype).view(-1, 1)  # (H, 1): the lower row's share
    upper, lower = upper.to(eta.device), lower.to(eta.device)  # indices where the image is (CUDA, MPS)
    for top in range(0, height, QUANTIZE_ROWS):
        rows = slice(top, top + QUANTIZE_ROWS)
        band = strip[..., upper[rows], :].mul_(1.0 - weight[rows])  # (B, C, rows, W), a gathered copy
        eta[..., rows, :].sub_(band.addcmul_(strip[..., lower[rows], :], weight[rows]))
    return eta


def make_budget(config: AttackConfig, x: torch.Tensor, grayscale: torch.Tensor) -> LinfBudget | ColourNeutral:
    """The budget named by ``config.budget`` ('linf', 'jnd' or 'psnr'), colour-neutral when
    ``config.colour_neutral``."""
    inner: LinfBudget
    if config.budget == "jnd":
        inner = JndBudget(x, config.eps, grayscale)
    elif config.budget == "psnr":
        inner = PsnrBudget(x, config.eps, grayscale, config.target_psnr)
    else:
        inner = LinfBudget(x, config.eps, grayscale)
    return ColourNeutral(inner, config.neutral_window) if config.colour_neutral else inner


def quantize(x_adv: torch.Tensor, x: torch.Tensor, eps: Bound, levels: torch.Tensor) -> torch.Tensor:
    """Round to each image's grid (levels = 255 or 65535) and re-enforce |q - x| <= eps (0-255 scale; a scalar
    or a per-pixel map (B, 1, H, W)).

    x_adv, x: (B, 3, H, W) in [0, 1]; levels: (B,) float. Returns (B, 3, H, W) on the grid. Works in bands of
    ``QUANTIZE_ROWS`` rows, so its scratch is a band's, not two more whole images (a 12 MP photo: 290 MB).
    """
    lv = levels.view(-1, 1, 1, 1).to(x.dtype)  # (B, 1, 1, 1)
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    budget = torch.floor(eps_t / 255.0 * lv + 1e-6)  # (B, 1, 1, 1) or (B, 1, H, W) in grid steps
    out = torch.empty_like(x_adv)  # (B, 3, H, W)
    for top in range(0, x.shape[-2], QUANTIZE_ROWS):
        rows = slice(top, top + QUANTIZE_ROWS)
        band = budget[..., rows, :] if budget.shape[-2] > 1 else budget
        x_int = (x[..., rows, :] * lv).round_()  # (B, 3, rows, W)
        q_int = (x_adv[..., rows, :] * lv).round_()  # integers in float: the in-place steps below are exact
        q_int.sub_(x_int).clamp_(min=-band, max=band).add_(x_int).clamp_(min=0)
        torch.minimum(q_int, lv, out=q_int)
        out[..., rows, :] = q_int.div_(lv)
    return out
