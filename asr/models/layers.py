"""Pre-norm transformer layers built on the shared attention core."""

from __future__ import annotations

import torch
from torch import nn

from asr.attention import KVCache, MultiHeadAttention
from asr.encoder.layers import FeedForward

__all__ = ["TransformerLayer"]


class TransformerLayer(nn.Module):
    """Self-attention (rotary) -> optional cross-attention -> feed-forward, each pre-norm + residual.

    Args:
        d_model, n_heads, ff_mult, dropout: sizes.
        cross: add a cross-attention sublayer over a memory of width ``memory_dim``.
        pos: positions of the self-attention (``rotary`` or ``xpos`` for token sequences, ``none``
            for frames that already carry position information); ``xpos_scale_base`` for ``xpos``.
    """

    def __init__(self, d_model: int, n_heads: int, ff_mult: int, dropout: float, *, cross: bool = False,
                 memory_dim: int | None = None, pos: str = "rotary", xpos_scale_base: float = 512.0):
        super().__init__()
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, pos=pos, xpos_scale_base=xpos_scale_base)
        self.cross_attn = None
        if cross:
            self.norm_cross = nn.LayerNorm(d_model)
            self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, kv_dim=memory_dim)
        self.ff = FeedForward(d_model, ff_mult, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor | None, memory: torch.Tensor | None = None,
                cross_mask: torch.Tensor | None = None,
                memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, T, D); self_mask (T, T) or (B, 1, T, T); memory (B, S, Dm); cross_mask (B, 1, T, S);
        memory_kv: ``cross_attn.project_memory(memory)`` computed once, instead of ``memory``."""
        x = x + self.dropout(self.self_attn(self.norm_self(x), mask=self_mask))
        if self.cross_attn is not None:
            x = x + self.dropout(self.cross_attn(self.norm_cross(x), memory, mask=cross_mask, memory_kv=memory_kv))
        return x + self.ff(x)

    def step(self, x: torch.Tensor, cache: KVCache, memory: torch.Tensor | None = None,
             cross_mask: torch.Tensor | None = None,
             memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, KVCache]:
        """Incremental self-attention over cached positions (decoding); x (B, t, D), t new positions.

        ``memory_kv``: ``cross_attn.project_memory`` of a memory shared by every row, (1, H, S, head_dim),
        instead of ``memory``; the B * t queries then attend to it as one batch (no mask, no copy of the
        keys per row: cross-attention treats each query on its own).
        """
        t = x.shape[1]
        mask = None
        if t > 1:
            total = cache.length + t
            mask = torch.ones(t, total, dtype=torch.bool, device=x.device).tril(cache.length)
        h, cache = self.self_attn.forward_cached(self.norm_self(x), cache, mask=mask)
        x = x + h
        if self.cross_attn is not None and memory_kv is not None:
            if cross_mask is not None:
                raise ValueError("memory_kv is one memory for every row: it takes no cross_mask")
            q = self.norm_cross(x).reshape(1, -1, x.shape[-1])  # (1, B * t, D)
            x = x + self.cross_attn(q, memory_kv=memory_kv).reshape(x.shape)
        elif self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), memory, mask=cross_mask)
        return x + self.ff(x), cache

    def extend_cache(self, x: torch.Tensor, cache: KVCache) -> KVCache:
        """``cache`` with the self-attention keys/values of ``x`` (B, t, D) appended, without computing
        the outputs at those positions (a decoder's last layer needs its output at the last position only)."""
        _, k, v = self.self_attn.project_self(self.norm_self(x), cache.end)
        return cache.append(k, v)
