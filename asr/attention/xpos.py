"""XPos: rotary positions with an exponential decay (Sun et al., "A Length-Extrapolatable
Transformer", 2022), and the blockwise causal mask it is run with at inference.

XPos rotates queries and keys exactly like :class:`~asr.attention.positions.RotaryEmbedding` and
in addition scales rotation pair ``m`` of a query at position ``n`` by ``zeta_m ** (n / scale_base)``
and of a key at position ``j`` by ``zeta_m ** (-j / scale_base)``, with
``zeta_m = (m / half + gamma) / (1 + gamma)`` in ``(0, 1)``. The score of a pair therefore carries
``zeta_m ** ((n - j) / scale_base)``: it depends only on the distance and decays with it, the
faster the higher the rotation frequency (the paper's "attention resolution"). Keys are cached
already scaled, so a KV cache stays valid, as with plain rotary.

Numerics: with positions counted from 0 the key scale grows like ``exp(1.25 * j / scale_base)``
(``zeta_0 = gamma / (1 + gamma)``, ``gamma = 0.4``) and overflows float32 near
``j = 70 * scale_base``. Only differences matter, so positions may be counted from any reference
``ref`` (queries scaled by ``zeta ** ((n - ref) / B)``, keys by ``zeta ** (-(j - ref) / B)``): a long
cache keeps ``ref`` near its newest position and moves it with :meth:`XPosEmbedding.rebase_keys`
(old keys then carry their decay, never a growing factor). The paged session cache and Star
Attention do so; a plain :class:`~asr.attention.KVCache` counts from 0 (``max_position``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from asr.attention.masks import block_causal_mask_range, causal_mask
from asr.attention.positions import RotaryEmbedding, _positions, rotate_half_split

__all__ = ["XPosEmbedding", "blockwise_causal_mask"]


class XPosEmbedding(nn.Module):
    """Rotary embedding with the XPos decay (half-split layout, as :class:`RotaryEmbedding`).

    Args:
        head_dim: even head size.
        base: rotary frequency base.
        scale_base: distance over which the decay ``zeta`` applies once (the paper uses 512 for
            a 1024-token training length).
        gamma: the paper's ``gamma`` (0.4): smallest ``zeta`` is ``gamma / (1 + gamma)``.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, scale_base: float = 512.0, gamma: float = 0.4):
        super().__init__()
        if scale_base <= 0:
            raise ValueError(f"xpos scale_base must be > 0, got {scale_base}")
        self.rotary = RotaryEmbedding(head_dim, base)
        self.head_dim, self.scale_base, self.gamma = head_dim, scale_base, gamma

    def zeta(self, device: torch.device | None = None) -> torch.Tensor:
        """Per-pair decay base (head_dim/2,) float64, increasing from gamma/(1+gamma) towards 1."""
        half = self.head_dim // 2
        return (torch.arange(half, dtype=torch.float64, device=device) / half + self.gamma) / (1 + self.gamma)

    @property
    def max_position(self) -> int:
        """Largest absolute key position whose scale stays below 1e30 in float32."""
        return int(30 * math.log(10) * self.scale_base / -math.log(self.gamma / (1 + self.gamma)))

    def forward(self, x: torch.Tensor, start: int | torch.Tensor, *, key: bool,
                ref: int | torch.Tensor = 0) -> torch.Tensor:
        """Rotate and scale ``x`` (B, H, T, head_dim) at positions ``start .. start + T - 1``.

        Args:
            start: int, or (B,) per-row first positions.
            key: True for keys (scale ``zeta ** -(n - ref)``), False for queries (``zeta ** (n - ref)``).
            ref: position the decay is counted from (int or (B,)); queries and the keys they
                meet must use the same ``ref``.
        """
        t = x.shape[-2]
        phase = self.rotary.phase(start, t, x.device)  # (..., T, half)
        rel = _positions(start, t, x.device) - _positions(ref, 1, x.device)  # (..., T)
        scale = self.zeta(x.device) ** ((-rel if key else rel)[..., None] / self.scale_base)  # (..., T, half)
        cos, sin = (phase.cos() * scale).to(x.dtype), (phase.sin() * scale).to(x.dtype)
        return rotate_half_split(x, cos, sin)

    def rebase_keys(self, k: torch.Tensor, old_ref: int | torch.Tensor, new_ref: int | torch.Tensor) -> torch.Tensor:
        """Keys (B, H, T, head_dim) encoded with ``old_ref`` as if encoded with ``new_ref`` (ints or (B,))."""
        delta = torch.as_tensor(new_ref, device=k.device) - torch.as_tensor(old_ref, device=k.device)
        f = self.zeta(k.device) ** (delta.to(torch.float64)[..., None] / self.scale_base)  # (half,) or (B, half)
        f = torch.cat([f, f], dim=-1)
        return k * (f[:, None, None, :] if f.dim() == 2 else f).to(k.dtype)


def blockwise_causal_mask(n: int, block_size: int | None, device: torch.device | str | None = None) -> torch.Tensor:
    """Blockwise causal attention (the XPos paper's inference mask): causal, and a query in
    block ``b`` sees only blocks ``b - 1`` and ``b``, so every query sees between ``block_size``
    and ``2 * block_size - 1`` keys however long the input. Use ``block_size`` = half the training
    length to stay within the distances seen in training. ``None`` = plain causal.

    Returns:
        (n, n) bool, True = may attend.

    Example (n=5, blocks of 2)::

        >>> blockwise_causal_mask(5, 2).int()
        tensor([[1, 0, 0, 0, 0],
                [1, 1, 0, 0, 0],
                [1, 1, 1, 0, 0],
                [1, 1, 1, 1, 0],
                [0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    causal = causal_mask(n, device)
    if block_size is None:
        return causal
    return causal & block_causal_mask_range(0, n, 0, n, block_size, 1, device)
