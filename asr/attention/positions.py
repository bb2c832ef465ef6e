"""Position encodings for attention: relative sinusoidal (conformer) and rotary.

Both depend only on *differences* of absolute positions, so keys kept in a streaming KV cache
stay valid: the relative term is recomputed from (query position - key position) for each
call, and rotary keys are cached already rotated.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["sinusoid", "RelPositionalEncoding", "rel_shift", "RotaryEmbedding", "rotate_half_split"]


def sinusoid(positions: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of (possibly negative) positions.

    Args:
        positions: (N,) integer or float positions.
        dim: even embedding size.

    Returns:
        (N, dim) in ``dtype``, ``[sin(p w_0), cos(p w_0), sin(p w_1), ...]`` with
        ``w_m = 10000^(-2m/dim)``. The phase is computed in float64 so large positions stay
        accurate, and the same position always gives bit-identical rows.
    """
    if dim % 2:
        raise ValueError(f"sinusoid dim must be even, got {dim}")
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) * (-math.log(10000.0) / dim)
    )
    phase = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (N, dim/2)
    out = torch.stack([phase.sin(), phase.cos()], dim=-1).flatten(-2)
    return out.to(dtype)


class RelPositionalEncoding(nn.Module):
    """Transformer-XL / conformer relative position embeddings.

    ``forward(max_dist, count)`` returns embeddings for the descending distances
    ``max_dist, max_dist - 1, ..., max_dist - count + 1`` (distance = query position - key
    position), projected per head: (count, H, head_dim). Use with :func:`rel_shift`.

    :meth:`keys` gives the same table as (H, head_dim, count), times a scale: the right operand
    of one batched product with the queries (B, H, T, head_dim).

    Without autograd the results are cached per ``(max_dist, count, device, dtype)``: a streaming
    encoder asks for the same distances every block, and the cached tensor is the one the
    computation gives (bit-identical). The key includes the projection's parameter versions, so
    changing the weights (``load_state_dict``, an optimiser step) invalidates it.
    """

    _CACHE_SIZE = 16

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self._cache: dict[tuple, torch.Tensor] = {}

    def forward(self, max_dist: int, count: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self._compute(max_dist, count, device, dtype)
        return self._cached((max_dist, count, device, dtype, None),
                            lambda: self._compute(max_dist, count, device, dtype))

    def keys(self, max_dist: int, count: int, device: torch.device, dtype: torch.dtype,
             scale: float = 1.0) -> torch.Tensor:
        """``scale * forward(max_dist, count, ...)`` as (H, head_dim, count) (contiguous when cached)."""
        if torch.is_grad_enabled():
            return self._compute(max_dist, count, device, dtype).permute(1, 2, 0) * scale
        return self._cached((max_dist, count, device, dtype, scale),
                            lambda: (self._compute(max_dist, count, device, dtype).permute(1, 2, 0) * scale).contiguous())

    def _cached(self, key: tuple, compute) -> torch.Tensor:
        """``compute()`` cached under ``key`` and the projection's identity and parameter versions."""
        linear = self.linear_pos
        tensors = (*linear._parameters.values(), *linear._buffers.values())
        params = tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors if t is not None)
        key = (*key, params, linear)
        out = self._cache.get(key)
        if out is None:
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.clear()
            out = self._cache[key] = compute()
        return out

    def _compute(self, max_dist: int, count: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        dist = torch.arange(max_dist, max_dist - count, -1, device=device)
        emb = sinusoid(dist, self.d_model, dtype)  # (count, D)
        return self.linear_pos(emb).view(count, self.n_heads, self.d_model // self.n_heads)


def rel_shift(scores: torch.Tensor, k_len: int) -> torch.Tensor:
    """Turn per-distance scores into per-key scores.

    Args:
        scores: (..., T_q, T_q + k_len - 1); column ``r`` of row ``i`` holds the score for
            distance ``d_max - r`` with ``d_max = (last query position) - (first key position)``.
        k_len: number of keys.

    Returns:
        (..., T_q, k_len) with ``out[..., i, j] = scores[..., i, T_q - 1 - i + j]``, i.e. the
        score for distance ``(q_start + i) - (k_start + j)``.

    Example (T_q=2, k_len=2, columns are distances 1, 0, -1)::

        >>> rel_shift(torch.tensor([[10., 11., 12.], [20., 21., 22.]]), 2)
        tensor([[11., 12.],
                [20., 21.]])
    """
    t_q, width = scores.shape[-2], scores.shape[-1]
    if width != t_q + k_len - 1:
        raise ValueError(f"rel_shift expects {t_q + k_len - 1} distance columns, got {width}")
    if k_len > 0 and not scores.requires_grad and scores.is_contiguous():
        # the skew as a strided view, no copy: out[..., i, j] sits at i * width + (t_q - 1 - i + j)
        # of its row block, i.e. at (t_q - 1) + i * (width - 1) + j (the same elements as below)
        return scores.as_strided((*scores.shape[:-1], k_len), (*scores.stride()[:-2], width - 1, 1),
                                 scores.storage_offset() + t_q - 1)
    # One zero column makes every row at least k_len wide after the skew (needed for T_q = 1).
    padded = nn.functional.pad(scores, (0, 1))  # (..., T_q, T_q + k_len)
    flat = padded.flatten(-2)
    row = t_q + k_len - 1  # skewed row length
    skewed = flat[..., t_q - 1 : t_q - 1 + t_q * row].unflatten(-1, (t_q, row))
    return skewed[..., :k_len]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer), half-split layout (GPT-NeoX).

    ``scale > 1`` is linear position interpolation (positions divided by ``scale``), the simple
    extrapolation knob for language models run on longer contexts than they were trained on.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, scale: float = 1.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        self.scale = scale
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (device, dtype) -> cos, sin

    def phase(self, start: int | torch.Tensor, t: int, device: torch.device) -> torch.Tensor:
        """Rotation angles in float64: (T, head_dim/2), or (B, 1, T, head_dim/2) for a (B,) ``start``."""
        half = self.head_dim // 2
        inv_freq = self.base ** (-torch.arange(half, dtype=torch.float64, device=device) / half)
        pos = _positions(start, t, device) / self.scale
        return pos[..., None] * inv_freq  # (..., T, half)

    def forward(self, x: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (B, H, T, head_dim) for absolute positions ``start .. start + T - 1``.

        ``start`` is an int, or a (B,) tensor giving each batch row its own first position (the
        local blocks of Star Attention are encoded side by side at their true positions).
        """
        t = x.shape[-2]
        if isinstance(start, int) and start + t <= _TABLE_MAX:
            cos, sin = self._table(start + t, x.device, x.dtype)
            return rotate_half_split(x, cos[start:start + t], sin[start:start + t])
        phase = self.phase(start, t, x.device)
        return rotate_half_split(x, phase.cos().to(x.dtype), phase.sin().to(x.dtype))

    def _table(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (>= length, head_dim/2) of positions 0 ..: a decoder step rotates one position, and
        computing its angles again (a dozen small ops) cost more than the rotation. Rows equal
        ``phase(start, t)`` bit for bit (the same float64 products)."""
        key = (device, dtype)
        table = self._tables.get(key)
        if table is None or table[0].shape[0] < length:
            n = min(_TABLE_MAX, max(64, length, 2 * (0 if table is None else table[0].shape[0])))
            phase = self.phase(0, n, device)
            table = self._tables[key] = (phase.cos().to(dtype), phase.sin().to(dtype))
        return table


_TABLE_MAX = 4096  # longer sequences (LM contexts) compute their angles each call, as before


def _positions(start: int | torch.Tensor, t: int, device: torch.device) -> torch.Tensor:
    """Absolute positions in float64: (T,) for an int ``start``, (B, 1, T) for a (B,) tensor."""
    steps = torch.arange(t, dtype=torch.float64, device=device)
    if isinstance(start, torch.Tensor):
        return start.to(device=device, dtype=torch.float64)[:, None, None] + steps
    return steps + start


def rotate_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs ``(x[..., m], x[..., m + half])`` by the angles whose cos/sin are given.

    Args:
        x: (..., T, head_dim).
        cos, sin: broadcastable to (..., T, head_dim/2).
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
