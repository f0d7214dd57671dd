"""Whole-image GroupNorm statistics for tiled passes: every tile is normalised as the whole image would be.

A GroupNorm normalises each (image, group) by the mean and variance over ALL spatial positions, so an
encoder run on a tile alone normalises by the tile's statistics, not the image's (the approximation of
diffusers' tiled VAE). ``WholeImageNorm`` swaps every ``nn.GroupNorm`` of an encoder for one that uses
*frozen* per-(image, group) statistics of the whole image, and records the sums that give them:

* **exact statistics** (``measure``): either one no-grad forward of the whole image (when it fits the memory
  budget: ``TileGrid.whole_pass``), or a streaming pass per GroupNorm layer, in forward order: layer k's
  statistics are summed over every tile's *core* (the cores partition the padded image at every
  resolution, since core borders are multiples of the encoder's factor), with layers < k already frozen
  and the forward stopped right after layer k. That costs one partial tile pass per layer, once per image.
* **exact before every pass** (``TileGrid.stats="exact"``, the default, and the plan whenever the whole
  no-grad pass fits): what the untiled encoder computes, at the cost of that pass per evaluation.
* **lagged statistics** (``"lagged"``: images too large for a whole pass, where streaming every step would
  multiply the step's cost): each gradient pass records the sums (and attention context) of its own tiles'
  cores while normalising with the previous pass's; the next step uses them, one step stale. Loss-only
  evaluations (best iterate, final loss) are still measured exactly. Measured on tiny random models with
  tiny tiles and a large first step, a stale step can misjudge the loss by 5-15%.

Gradients: the untiled gradient also flows through each layer's mean and variance, a sum over the whole
image (1/N per position) that a tile cannot see, and through every position's attention keys. Tiles hand
each other those terms: a GroupNorm's backward sums every tile's latest gradient sums
(``pca_attack.attack.norm_gradients``), and a self-attention's gradient pass attends over the whole image's
keys (the tile's core live) and hands the gradient of the other positions' keys to their own tiles
(``pca_attack.attack.key_gradients``). Where a tile's core does not map onto a layer's grid, the
straight-through estimate ``frozen + (tile statistic - tile statistic.detach())`` stands in (the tile's own
statistics' gradient, 1/n over its n positions). The loss values are the untiled ones wherever the halo
covers the receptive field of the convolutions. ``Encoder.checkpointing``
recomputes forwards in backward: recording and the keys' exchange are off in the re-run (``paused``).

Self-attention in a pass without gradient (loss-only evaluations, the streaming passes after the
attention layer, tiled certificates): every tile crops its positions from ONE evaluation of the layer over
the whole image's context (``pca_attack.attack.context_attention.whole_term``, computed once per context),
not one attention of its queries against every key of the image per tile and per pass.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pca_attack.attack.context_attention import Processor, attend, finish, whole_term
from pca_attack.attack.key_gradients import KeyGradients
from pca_attack.attack.norm_gradients import ExchangedNorm, NormGradients
from pca_attack.models.encoder import Encoder

Stats = tuple[torch.Tensor, torch.Tensor]  # mean (B, G), var (B, G), fp32
Layer = nn.GroupNorm | nn.Module  # a GroupNorm, or a diffusers self-attention (its context is whole-image)


@dataclass(frozen=True)
class Region:
    """A tile's core inside the tile's own padded encoder input, and where that input sits (pixels)."""

    rows: tuple[int, int]  # core rows, relative to the tile input
    cols: tuple[int, int]
    height: int  # padded tile input
    width: int
    top: int = 0  # tile input's first row and column in the padded image
    left: int = 0
    full: tuple[int, int] = (0, 0)  # padded image height and width (0, 0: the tile is the image)

    def factor(self, h: int, w: int) -> int | None:
        """A layer's spatial factor d for an activation of h x w, when the core maps onto its grid."""
        if h == 0 or w == 0 or self.height % h or self.width % w or self.height // h != self.width // w:
            return None
        d = self.height // h
        aligned = all(v % d == 0 for v in (*self.rows, *self.cols, self.top, self.left))
        return d if aligned else None

    def core(self, d: int) -> tuple[slice, slice]:
        """The core within the tile's activation at factor d."""
        return slice(self.rows[0] // d, self.rows[1] // d), slice(self.cols[0] // d, self.cols[1] // d)

    def image_size(self) -> tuple[int, int]:
        """The padded image's height and width (the tile's own where the tile is the image)."""
        return self.full if self.full != (0, 0) else (self.height, self.width)

    def in_image(self, d: int) -> tuple[slice, slice]:
        """The core within the whole image's activation at factor d."""
        top, left = self.top // d, self.left // d
        return (slice(top + self.rows[0] // d, top + self.rows[1] // d),
                slice(left + self.cols[0] // d, left + self.cols[1] // d))


_PATCH_LOCK = threading.RLock()  # one tiled pass patches a shared encoder at a time


class StopForward(Exception):
    """Raised by the layer being measured: the rest of the forward is not needed."""


def _is_self_attention(module: nn.Module) -> bool:
    """A diffusers ``Attention`` with a GroupNorm of its own (the VAE mid-block's), used as self-attention."""
    return (type(module).__name__ == "Attention" and isinstance(getattr(module, "group_norm", None), nn.GroupNorm)
            and hasattr(module, "to_k") and not getattr(module, "is_cross_attention", False))


@torch.no_grad()
def context_layers(encoder: Encoder) -> list[Layer]:
    """GroupNorm and self-attention layers in the order a forward completes them (registration order
    differs: diffusers registers a mid-block's attention before its ResNets); found on a tiny image."""
    layers = [m for m in encoder.modules() if isinstance(m, nn.GroupNorm) or _is_self_attention(m)]
    if not layers:
        return []
    order: list[Layer] = []

    def seen(module: nn.Module, *_: object) -> None:
        if module not in order:
            order.append(module)

    hooks = [m.register_forward_pre_hook(seen) if isinstance(m, nn.GroupNorm) else m.register_forward_hook(seen)
             for m in layers]
    try:
        side = 2 * encoder.downsample_factor
        encoder.posterior(torch.zeros(1, 3, side, side, device=encoder.device))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def _straight_through(x: torch.Tensor, groups: int, mean: torch.Tensor, var: torch.Tensor) -> Stats:
    """The frozen statistics in value, the tile's own statistics in gradient (B, G) each."""
    grouped = x.float().reshape(x.shape[0], groups, -1)  # (B, G, n)
    var_t, mean_t = torch.var_mean(grouped, dim=-1, correction=0)  # (B, G)
    return mean + (mean_t - mean_t.detach()), var + (var_t - var_t.detach())


def _normalise(x: torch.Tensor, module: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """GroupNorm of x (B, C, h, w) with given per-(image, group) statistics (B, G), as one affine op; under
    autograd the gradient through the statistics is the tile's own (``_straight_through``)."""
    if x.requires_grad:
        mean, var = _straight_through(x, module.num_groups, mean, var)
    per = x.shape[1] // module.num_groups
    scale = torch.rsqrt(var + module.eps).repeat_interleave(per, dim=1)  # (B, C)
    shift = -mean.repeat_interleave(per, dim=1) * scale  # (B, C)
    if module.affine:
        scale, shift = scale * module.weight.float(), shift * module.weight.float() + module.bias.float()
    shape = (*scale.shape, *[1] * (x.dim() - 2))  # (B, C, 1, 1), or (B, C, 1) for attention's (B, C, h*w)
    return torch.addcmul(shift.reshape(shape).to(x.dtype), x, scale.reshape(shape).to(x.dtype))


class WholeImageNorm:
    """Frozen whole-image statistics (GroupNorm) and context (self-attention) of an encoder, and their recorder.

    Layers are indexed in forward order (``context_layers``); ``frozen`` holds a GroupNorm's (mean, var),
    ``context`` a self-attention's normalised input (B, C, h, w) over the whole image.
    """

    def __init__(self, encoder: Encoder) -> None:
        self.layers = context_layers(encoder)
        self.frozen: dict[int, Stats] = {}  # GroupNorm index -> statistics used by the patched layer
        self.context: dict[int, torch.Tensor] = {}  # attention index -> (B, C, h, w) whole-image keys' input
        self.terms: dict[int, torch.Tensor] = {}  # attention index -> (B, C, h, w) its term at every position
        self.key_grads = KeyGradients()  # gradients tiles send to each other's attention keys (kept by ``reset``)
        self.norm_grads = NormGradients()  # each tile's sums of its GroupNorm gradients (kept by ``reset``)
        self.draw = 0  # the EoT draw being encoded (its GroupNorm sums pair with the same draw of other tiles)
        self.recording: frozenset[int] = frozenset()
        self.stop_after: int | None = None
        self.region: Region | None = None
        self._sums: dict[int, list[torch.Tensor]] = {}  # index -> [sum (B, G), sum of squares (B, G), count]
        self._maps: dict[int, torch.Tensor] = {}  # attention index -> recorded (B, C, h, w)
        self._paused = False
        self._depth = 0
        self._owner = 0  # the thread that installed the patch

    def __bool__(self) -> bool:
        return bool(self.layers)

    def reset(self) -> None:
        self.frozen, self.context, self.terms, self._sums, self._maps = {}, {}, {}, {}, {}

    def forget_gradients(self) -> None:
        """A new image: what tiles sent each other for the last one is dropped."""
        self.key_grads.forget()
        self.norm_grads.forget()

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Inside: GroupNorms use ``frozen`` statistics and attentions ``context`` (native where none), and
        the layers in ``recording`` record. The patch is on the (shared, cached) encoder's modules: one thread
        holds it at a time (``_PATCH_LOCK``), and forwards on other threads meanwhile run natively."""
        _PATCH_LOCK.acquire()
        self._depth += 1
        self._owner = threading.get_ident()
        saved: dict[int, Any] = {}
        if self._depth == 1:
            for index, layer in enumerate(self.layers):
                if isinstance(layer, nn.GroupNorm):
                    layer.forward = partial(self._norm_forward, index, layer)  # type: ignore[method-assign]
                else:
                    saved[index] = getattr(layer, "processor")  # noqa: B009 (a diffusers Attention)
                    setattr(layer, "processor", Processor(partial(self._attention, index, saved[index])))  # noqa: B010
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                for index, layer in enumerate(self.layers):
                    if isinstance(layer, nn.GroupNorm):
                        del layer.forward
                    elif index in saved:
                        setattr(layer, "processor", saved[index])  # noqa: B010
            _PATCH_LOCK.release()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No recording inside (a checkpointed backward re-runs forwards: record once)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def _records(self, index: int) -> bool:
        return index in self.recording and self.region is not None and not self._paused

    def _norm_forward(self, index: int, layer: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if threading.get_ident() != self._owner:  # another thread's forward: the plain layer
            return F.group_norm(x, layer.num_groups, layer.weight, layer.bias, layer.eps)
        if self._records(index):
            self._record_sums(index, layer, x)
        if self.stop_after == index:
            raise StopForward
        stats = self.frozen.get(index)
        if stats is None:
            return F.group_norm(x, layer.num_groups, layer.weight, layer.bias, layer.eps)
        exchanged = self._exchanged(index, layer, x, stats) if x.requires_grad else None
        return _normalise(x, layer, *stats) if exchanged is None else exchanged

    def _exchanged(self, index: int, layer: nn.GroupNorm, x: torch.Tensor, stats: Stats) -> torch.Tensor | None:
        """GroupNorm of a tile's x (B, C, h, w) or (B, C, h*w) whose backward carries the whole image's
        statistics term (``norm_gradients``); None where the tile's core does not map onto x."""
        found = self._spatial(x) if self.region is not None else None
        if found is None:
            return None
        assert self.region is not None
        spatial, d = found  # (B, C, h, w)
        rows, cols = self.region.core(d)
        core = torch.zeros(spatial.shape[-2:], device=x.device)  # (h, w): 1 on the tile's core
        core[rows, cols] = 1.0
        height, width = self.region.image_size()
        count = x.shape[1] // layer.num_groups * (height // d) * (width // d)  # values per group, whole image
        key = (index, (self.region.top + self.region.rows[0], self.region.left + self.region.cols[0], self.draw))
        rstd = torch.rsqrt(stats[1] + layer.eps)  # (B, G)
        x_hat = ExchangedNorm.apply(spatial, stats[0], rstd, core, self.norm_grads, key, count)  # (B, C, h, w)
        if layer.affine:
            x_hat = x_hat * layer.weight.reshape(1, -1, 1, 1) + layer.bias.reshape(1, -1, 1, 1)
        return x_hat.reshape(x.shape)

    def _spatial(self, x: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        """x as (B, C, h, w) with its factor d, for (B, C, h, w) or attention's (B, C, h*w); None if unmapped."""
        assert self.region is not None
        if x.dim() == 3:
            d = math.isqrt(self.region.height * self.region.width // max(1, x.shape[-1]))
            if d == 0 or (self.region.height // d) * (self.region.width // d) != x.shape[-1]:
                return None
            x = x.reshape(*x.shape[:2], self.region.height // d, self.region.width // d)
        d_found = self.region.factor(x.shape[-2], x.shape[-1])
        return None if d_found is None else (x, d_found)

    def _record_sums(self, index: int, layer: nn.GroupNorm, x: torch.Tensor) -> None:
        """Add the core region's sums of x (B, C, h, w); skipped where the region does not map onto x."""
        found = self._spatial(x)
        if found is None:
            return
        x, d = found
        rows, cols = self.region.core(d) if self.region is not None else (slice(None), slice(None))
        grouped = x.detach()[..., rows, cols].double().reshape(x.shape[0], layer.num_groups, -1)  # (B, G, n)
        sums = self._sums.setdefault(index, [torch.zeros(()), torch.zeros(()), torch.zeros(())])
        sums[0] = sums[0] + grouped.sum(-1)
        sums[1] = sums[1] + grouped.square().sum(-1)
        sums[2] = sums[2] + grouped.shape[-1]

    def _attention(self, index: int, native: Callable[..., torch.Tensor], attn: Any,
                   hidden: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """Self-attention whose keys and values come from the whole image's context (the tile's own core
        spliced in, live); queries are the tile's. Native when there is no context and nothing to record."""
        mine = threading.get_ident() == self._owner
        found = self._spatial(hidden) if mine and hidden.dim() == 4 and self.region is not None else None
        context = self.context.get(index)
        if found is None or (context is None and not self._records(index)):
            return native(attn, hidden, *args, **kwargs)
        assert self.region is not None
        batch, channels, h, w = hidden.shape
        normed = attn.group_norm(hidden.reshape(batch, channels, h * w)).reshape(hidden.shape)  # (B, C, h, w)
        d, rows, cols = found[1], *self.region.core(found[1])
        if self._records(index):
            self._record_map(index, normed.detach()[..., rows, cols], d)
        if self.stop_after == index:
            raise StopForward
        if context is None:
            return native(attn, hidden, *args, **kwargs)
        if not hidden.requires_grad and not self._records(index):  # a loss-only pass: crop the whole image's
            return finish(attn, self._whole_term(index, attn, d, hidden), hidden)
        where, core = self.region.in_image(d), normed[..., rows, cols]  # core: (B, C, ch, cw)
        sends = hidden.requires_grad and not self._paused  # (a checkpointed backward's re-run: sent already)
        if sends:
            core = self.key_grads.take(index, core, where)  # plus what other tiles sent to its keys
        keys_in = context.to(normed.dtype).clone()  # (B, C, H/d, W/d): the whole image, this tile's core live
        keys_in[(..., *where)] = core
        if sends:
            keys_in.register_hook(self.key_grads.recorder(index, context, where))  # to the other tiles' keys
        return attend(attn, hidden, normed, keys_in)  # (B, C, h, w)

    def _whole_term(self, index: int, attn: Any, d: int, hidden: torch.Tensor) -> torch.Tensor:
        """The tile's part (B, C, h, w) of the attention term over the whole image, computed once per context
        (``context_attention.whole_term``): exactly what the untiled layer computes at these positions."""
        assert self.region is not None
        term = self.terms.get(index)
        if term is None:
            term = self.terms[index] = whole_term(attn, self.context[index])  # (B, C, H/d, W/d)
        top, left = self.region.top // d, self.region.left // d
        return term[..., top : top + hidden.shape[-2], left : left + hidden.shape[-1]].to(hidden.dtype)

    def _record_map(self, index: int, core: torch.Tensor, d: int) -> None:
        assert self.region is not None
        height, width = self.region.image_size()
        if index not in self._maps:
            self._maps[index] = torch.zeros(*core.shape[:2], height // d, width // d, device=core.device)
        self._maps[index][(..., *self.region.in_image(d))] = core.float()

    def start(self, layers: frozenset[int] | None = None) -> None:
        """Begin recording ``layers`` (all by default) into fresh sums and maps."""
        self._sums, self._maps = {}, {}
        self.recording = frozenset(range(len(self.layers))) if layers is None else layers

    def adopt(self) -> None:
        """Stop recording; what was recorded replaces the frozen statistics and contexts."""
        for index, (total, squares, count) in self._sums.items():
            mean = total / count
            var = (squares / count - mean.square()).clamp(min=0.0)
            self.frozen[index] = (mean.float(), var.float())
        self.context.update(self._maps)
        for index in self._maps:
            self.terms.pop(index, None)  # a new context: its whole-image attention is computed again when needed
        self._sums, self._maps, self.recording = {}, {}, frozenset()


@torch.no_grad()
def measure(
    norm: WholeImageNorm, encoder: Encoder, pieces: Callable[[], Iterable[tuple[torch.Tensor, Region]]],
    whole: tuple[torch.Tensor, Region] | None = None,
) -> None:
    """Exact whole-image statistics and contexts into ``norm``: from one forward of ``whole`` (input, region)
    when given, else one streaming pass over ``pieces()`` (tile inputs and their regions) per layer."""
    norm.reset()
    with norm.installed():
        if whole is not None:
            norm.start()
            norm.region = whole[1]
            encoder.posterior(whole[0])
            norm.adopt()
            return
        for index in range(len(norm.layers)):
            norm.start(frozenset({index}))
            norm.stop_after = index
            try:
                for piece, region in pieces():
                    norm.region = region
                    with suppress(StopForward):
                        encoder.posterior(piece)
            finally:
                norm.stop_after = None
            norm.adopt()
