"""Self-attention over the whole image for tiled passes: a diffusers VAE mid-block attention, evaluated by hand.

``pca_attack.attack.norm_stats.WholeImageNorm`` replaces the processor of every self-attention layer with
``Processor`` (calling its own method). Two ways to evaluate the layer for a tile:

* ``attend``: queries from the tile, keys and values from a given (B, C, H', W') map (the whole image's
  normalised context with the tile's core spliced in, or the tile itself), as diffusers' AttnProcessor2_0
  (plus the residual and the output rescaling). The gradient passes use it.
* ``whole_term``: the attention term of EVERY position of the whole image from its recorded context, once,
  in chunks of queries. A loss-only pass (no gradient) then crops each tile's part from it: the attention of
  a 12 MP image (187,500 tokens at f8) costs one quadratic pass per context instead of one per tile per
  streaming pass (``norm_stats.measure`` streams one partial pass per later layer, each re-ran it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

QUERY_CHUNK = 4096  # query tokens per scaled-dot-product call of ``whole_term`` (bounds its scratch memory)


class Processor:
    """A diffusers attention processor calling ``fn(attn, hidden_states, ...)`` (explicit parameters: diffusers
    drops keyword arguments a processor's signature does not name)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _term(attn: Any, tokens: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The attention term (B, n, C) of query tokens (B, n, C) over projected keys and values (B, N, C)."""
    batch, heads = tokens.shape[0], attn.heads
    query = attn.to_q(tokens)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # (B, heads, n, C/heads)

    out = F.scaled_dot_product_attention(split(query), split(key), split(value))  # (B, heads, n, C/heads)
    out = out.transpose(1, 2).reshape(batch, tokens.shape[1], -1).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](out))  # (B, n, C)


def finish(attn: Any, term: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The layer's output from its attention term (B, C, h, w): plus the residual, over the output rescaling."""
    out = term + hidden if attn.residual_connection else term
    return out / attn.rescale_output_factor


def attend(attn: Any, hidden: torch.Tensor, normed: torch.Tensor, keys_in: torch.Tensor) -> torch.Tensor:
    """diffusers' AttnProcessor2_0 on (B, C, h, w) with queries from ``normed`` and keys/values from
    ``keys_in`` (B, C, H', W'), plus the residual and output rescaling."""
    batch, channels, h, w = hidden.shape
    tokens = normed.reshape(batch, channels, h * w).transpose(1, 2)  # (B, hw, C)
    context = keys_in.reshape(batch, channels, -1).transpose(1, 2)  # (B, N, C)
    term = _term(attn, tokens, attn.to_k(context), attn.to_v(context))  # (B, hw, C)
    return finish(attn, term.transpose(1, 2).reshape(hidden.shape), hidden)


@torch.no_grad()
def whole_term(attn: Any, context: torch.Tensor) -> torch.Tensor:
    """The attention term (B, C, H', W') of every position of the whole image's normalised input ``context``
    (B, C, H', W'), queries in chunks of ``QUERY_CHUNK``."""
    batch, channels = context.shape[:2]
    dtype = attn.to_q.weight.dtype
    tokens = context.to(dtype).reshape(batch, channels, -1).transpose(1, 2)  # (B, N, C)
    key, value = attn.to_k(tokens), attn.to_v(tokens)  # (B, N, C) each
    out = torch.empty_like(tokens)  # (B, N, C)
    for start in range(0, tokens.shape[1], QUERY_CHUNK):
        out[:, start : start + QUERY_CHUNK] = _term(attn, tokens[:, start : start + QUERY_CHUNK], key, value)
    return out.transpose(1, 2).reshape(context.shape)  # (B, C, H', W')
