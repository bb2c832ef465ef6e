"""LongGen sparse attention (Ge et al., "A Little Goes a Long Way", 2024) on the shared
:class:`~asr.attention.mha.MultiHeadAttention`: sliding window + attention sinks + strided key
blocks in a hybrid stack where about a third of the layers keep full attention.

The pattern itself is the pure function :func:`~asr.attention.masks.longgen_allowed`; this module
turns it into a kernel call: a dense boolean mask for ``scaled_dot_product_attention`` (any
device) or a FlexAttention ``BlockMask`` (tiles the pattern leaves empty are skipped; compiled on
CUDA, eager elsewhere). Both are tested against the float64 reference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from asr.attention.masks import longgen_allowed, longgen_kept_keys, longgen_mask
from asr.attention.mha import MultiHeadAttention, _flex_fn

__all__ = ["LongGenConfig", "longgen_block_mask", "sparse_self_attention"]


@dataclass(frozen=True)
class LongGenConfig:
    """A LongGen hybrid: which layers are sparse and what the sparse ones see.

    Attributes:
        window: sliding window (keys ``i - window < j <= i``).
        sinks: the first ``sinks`` tokens are always visible (attention sinks).
        block_size, stride: every ``stride``-th block of ``block_size`` tokens is globally
            visible (``stride=None``: no strided blocks).
        full_every: layer ``l`` keeps full attention iff ``l % full_every == full_every // 2``
            (the middle layer of each group of three with the default 3, about 1/3 of the
            layers, placed away from the ends as in the paper).
    """

    window: int = 64
    sinks: int = 4
    block_size: int | None = 16
    stride: int | None = 8
    full_every: int = 3

    def is_full(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) keeps full causal attention."""
        return layer % self.full_every == self.full_every // 2

    def layer_window(self, layer: int) -> int | None:
        """The ``window`` argument of the mask functions for ``layer`` (None = full causal)."""
        return None if self.is_full(layer) else self.window

    def mask(self, layer: int, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(n, n) bool mask of ``layer`` (True = may attend)."""
        return longgen_mask(n, self.layer_window(layer), self.sinks, self.block_size, self.stride, device)

    def kv_tokens(self, layer: int, length: int) -> int:
        """Keys ``layer`` must keep after ``length`` tokens (its KV cache size in tokens)."""
        return int(longgen_kept_keys(length, self.layer_window(layer), self.sinks, self.block_size,
                                     self.stride).sum())


def longgen_block_mask(cfg: LongGenConfig, layer: int, n: int, device: torch.device | str, tile: int = 128):
    """FlexAttention ``BlockMask`` of ``layer`` for a length-``n`` self-attention (positions 0..n-1)."""
    from torch.nn.attention.flex_attention import create_block_mask

    window = cfg.layer_window(layer)

    def mask_mod(b, h, qi, ki):  # noqa: ARG001 - flex signature
        return longgen_allowed(qi, ki, window, cfg.sinks, cfg.block_size, cfg.stride)

    return create_block_mask(mask_mod, None, None, n, n, device=device, BLOCK_SIZE=tile)


def sparse_self_attention(
    mha: MultiHeadAttention,
    x: torch.Tensor,
    cfg: LongGenConfig,
    layer: int,
    *,
    kernel: Literal["sdpa", "flex"] = "sdpa",
    query_chunk: int | None = None,
) -> torch.Tensor:
    """Causal self-attention of ``x`` (B, T, D) (positions from 0) with ``layer``'s LongGen mask.

    ``kernel="sdpa"``: dense (T, T) boolean mask, or with ``query_chunk`` the queries a slice at a
    time, each against only the keys the pattern lets it see (sinks, strided blocks, the window:
    time and memory O(T * kept keys) instead of O(T^2) on a sparse layer); ``"flex"``:
    FlexAttention block mask (no attention dropout; ``pos="rel"`` unsupported). Returns (B, T, D).
    """
    t = x.shape[1]
    q, k, v = mha.project_self(x, 0)
    if kernel == "sdpa" and query_chunk is not None:
        return mha.merge_heads(_chunked(mha, q, k, v, cfg, layer, query_chunk))
    if kernel == "sdpa":
        return mha.merge_heads(mha.attend(q, k, v, mask=cfg.mask(layer, t, x.device)))
    if kernel != "flex":
        raise ValueError(f"kernel must be 'sdpa' or 'flex', got {kernel!r}")
    if mha.pos == "rel":
        raise NotImplementedError("the LongGen flex path supports pos none/rotary/xpos")
    if mha.training and mha.dropout > 0:
        raise NotImplementedError("FlexAttention path has no attention dropout; use kernel='sdpa'")
    block_mask = longgen_block_mask(cfg, layer, t, x.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        out = _flex_fn(x.device)(q, k, v, block_mask=block_mask)
    return mha.merge_heads(out)


def _chunked(mha: MultiHeadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: LongGenConfig,
             layer: int, query_chunk: int) -> torch.Tensor:
    """Query slices against gathered keys: the slice's window plus every earlier key the pattern keeps."""
    t, device = q.shape[-2], q.device
    window, outs = cfg.layer_window(layer), []
    for q0 in range(0, t, query_chunk):
        q1 = min(t, q0 + query_chunk)
        local0 = 0 if window is None else max(0, q0 - window + 1)  # keys before: outside every window
        j = torch.arange(local0, device=device)
        early = j < cfg.sinks
        if cfg.stride is not None:
            early = early | ((j // cfg.block_size) % cfg.stride == 0)
        idx = torch.cat([j[early], torch.arange(local0, q1, device=device)])
        mask = longgen_allowed(torch.arange(q0, q1, device=device)[:, None], idx[None, :], window, cfg.sinks,
                               cfg.block_size, cfg.stride)
        outs.append(mha.attend(q[:, :, q0:q1], k[:, :, idx], v[:, :, idx], mask=mask))
    return torch.cat(outs, dim=2)
