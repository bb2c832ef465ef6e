"""Conformer building blocks: macaron feed-forward, causal convolution module, conformer layer.

Every block has a full-sequence ``forward`` and a streaming ``step`` that takes and returns its
cache; both run the same arithmetic on the same frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from asr.attention import Kernel, KVCache, MultiHeadAttention
from asr.attention.bpt import bpt_feed_forward
from asr.encoder.config import BPTConfig

__all__ = ["FeedForward", "CausalConvModule", "ConformerLayer"]


def _dropout(dropout: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """``dropout(x)``, without the module call where that is the identity (eval mode, or ``p == 0``).

    Not a mode switch: the numbers are the same either way; a streaming step makes ~55 dropout
    calls, each a few microseconds of module dispatch.
    """
    return dropout(x) if dropout.training and dropout.p > 0 else x


_WINDOW_FRAMES = 256  # output frames per windowed product in CausalConvModule._depthwise (CPU inference)


class FeedForward(nn.Module):
    """Pre-norm feed-forward: LayerNorm -> Linear(D, mD) -> SiLU -> Dropout -> Linear(mD, D) -> Dropout."""

    def __init__(self, d_model: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, mult * d_model),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(mult * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, lin1, act, drop1, lin2, drop2 = self.net
        return _dropout(drop2, lin2(_dropout(drop1, act(lin1(norm(x))))))


class CausalConvModule(nn.Module):
    """Conformer convolution module with a causal depthwise convolution.

    LayerNorm -> pointwise (GLU) -> depthwise conv over the current and ``kernel - 1`` past
    frames -> LayerNorm -> SiLU -> pointwise -> Dropout. LayerNorm replaces BatchNorm so nothing
    depends on batch statistics, and the only state is the last ``kernel - 1`` GLU outputs.
    """

    def __init__(self, d_model: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.kernel = kernel
        self.norm_in = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, groups=d_model)
        self.norm_mid = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def init_cache(self, batch_size: int, d_model: int, device, dtype) -> torch.Tensor:
        """Zeros (B, kernel - 1, D): the same left padding ``forward`` uses."""
        return torch.zeros(batch_size, self.kernel - 1, d_model, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, cache: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x (B, t, D); cache (B, kernel - 1, D) past GLU outputs; valid (B, t) or None.

        Returns: y (B, t, D) and the new cache. Padded frames are zeroed before the
        convolution (they only ever reach later, also padded, frames).
        """
        h = torch.cat([cache, self._glu(x, valid)], dim=1)  # (B, kernel - 1 + t, D)
        new_cache = h[:, h.shape[1] - (self.kernel - 1) :]
        return self._tail(h), new_cache

    def _glu(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """LayerNorm -> pointwise -> GLU of (B, t, D), padded frames zeroed."""
        h = F.glu(self.pointwise_in(self.norm_in(x)), dim=-1)  # (B, t, D)
        return h if valid is None else h.masked_fill(~valid[..., None], 0.0)

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        """Depthwise conv -> LayerNorm -> SiLU -> pointwise -> Dropout: (B, kernel - 1 + t, D) -> (B, t, D)."""
        h = F.silu(self.norm_mid(self._depthwise(h)))
        return _dropout(self.dropout, self.pointwise_out(h))

    def _block(self, x: torch.Tensor, valid: torch.Tensor | None, n_left: int) -> torch.Tensor:
        """Output frames of ``x[:, n_left:]``, the ``n_left <= kernel - 1`` frames before them given
        (fewer than ``kernel - 1`` only at the start of the sequence: zero padding there)."""
        h = self._glu(x, valid)
        h = F.pad(h, (0, 0, self.kernel - 1 - n_left, 0))  # (B, kernel - 1 + t, D)
        return self._tail(h)

    def _depthwise(self, h: torch.Tensor) -> torch.Tensor:
        """The depthwise convolution of (B, kernel - 1 + t, D) -> (B, t, D).

        On CPU at inference it is one product of a strided window view (B, t, kernel, D) of ``h``
        with the per-channel weights, summed over the taps (no transposes, no copy of the input;
        for a 16-frame block 15x faster than a sum of per-tap ``addcmul`` and faster still than
        oneDNN's depthwise kernel), in pieces of at most ``_WINDOW_FRAMES`` output frames so that
        the product stays small on long inputs. Elsewhere, and when training, ``nn.Conv1d``. Both
        compute the same sum (float rounding aside).
        """
        if h.device.type != "cpu" or torch.is_grad_enabled():
            return self.depthwise(h.transpose(1, 2)).transpose(1, 2)
        h = h.contiguous()
        b, n, d = h.shape
        k, t = self.kernel, n - (self.kernel - 1)
        w = self.depthwise.weight[:, 0, :].t().contiguous()  # (kernel, D); strided, the product took 2x as long
        pieces = []
        for s in range(0, t, _WINDOW_FRAMES):
            m = min(_WINDOW_FRAMES, t - s)
            win = h[:, s:].as_strided((b, m, k, d), (n * d, d, d, 1))  # win[:, i, j] = h[:, s + i + j]
            pieces.append((win * w).sum(2))
        y = pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)
        return y if self.depthwise.bias is None else y + self.depthwise.bias

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None, block: int | None = None) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D), zero left padding.

        ``block``: with autograd, compute ``block`` frames at a time (each from its frames and
        the ``kernel - 1`` before them) under ``torch.utils.checkpoint``, so only the input is
        kept for the backward pass (Blockwise Parallel Transformer); the same numbers.
        """
        t = x.shape[1]
        if block is None or t <= block or not torch.is_grad_enabled():
            cache = self.init_cache(x.shape[0], x.shape[2], x.device, x.dtype)
            return self.step(x, cache, valid)[0]
        outs = []
        for t0 in range(0, t, block):
            s0, t1 = max(0, t0 - (self.kernel - 1)), min(t, t0 + block)
            v = None if valid is None else valid[:, s0:t1]
            outs.append(checkpoint(self._block, x[:, s0:t1], v, t0 - s0, use_reentrant=False))
        return torch.cat(outs, dim=1)


class ConformerLayer(nn.Module):
    """Macaron conformer block: x + FF/2, + MHSA, + Conv, + FF/2, LayerNorm.

    Args:
        d_model, n_heads, ff_mult, conv_kernel, dropout, attn_dropout: sizes and rates.
        pos: attention positions (``"rel"``, ``"rotary"``, ``"none"``).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ff_mult: int,
        conv_kernel: int,
        dropout: float,
        attn_dropout: float,
        pos: str,
    ) -> None:
        super().__init__()
        self.ff1 = FeedForward(d_model, ff_mult, dropout)
        self.norm_attn = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=attn_dropout, pos=pos)
        self.dropout = nn.Dropout(dropout)
        self.conv = CausalConvModule(d_model, conv_kernel, dropout)
        self.ff2 = FeedForward(d_model, ff_mult, dropout)
        self.norm_out = nn.LayerNorm(d_model)

    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        valid: torch.Tensor,
        block_size: int | None,
        left_blocks: int | None,
        *,
        query_chunk: int = 1024,
        kernel: Kernel = "sdpa",
        bpt: BPTConfig | None = None,
    ) -> torch.Tensor:
        """x (B, T, D), x_lens (B,), valid (B, T) bool -> (B, T, D) with the block-causal mask.

        ``bpt``: run attention, feed-forward and convolution blockwise under recomputation
        (:mod:`asr.attention.bpt`; same numbers, memory linear in T); ``query_chunk`` and
        ``kernel`` then do not apply.
        """
        if bpt is None:
            x = _half_step(x, self.ff1(x))
            a = self.attn.forward_blockwise(
                self.norm_attn(x), x_lens, block_size=block_size, left_blocks=left_blocks,
                query_chunk=query_chunk, kernel=kernel,
            )
            x = x + _dropout(self.dropout, a)
            x = x + self.conv(x, valid)
            x = _half_step(x, self.ff2(x))
            return self.norm_out(x)
        x = _half_step(x, bpt_feed_forward(self.ff1, x, bpt.frame_block))
        a = self.attn.forward_bpt(
            self.norm_attn(x), x_lens, block_size=block_size, left_blocks=left_blocks,
            query_block=bpt.query_block, key_block=bpt.key_block,
        )
        x = x + _dropout(self.dropout, a)
        x = x + self.conv(x, valid, block=bpt.frame_block)
        x = _half_step(x, bpt_feed_forward(self.ff2, x, bpt.frame_block))
        return self.norm_out(x)

    def step(
        self, x: torch.Tensor, kv: KVCache, conv: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, KVCache, torch.Tensor]:
        """Streaming: x (B, t, D) new frames, their attention ``mask`` against ``kv`` + new
        frames (None = all) -> (y (B, t, D), new KV cache, new conv cache)."""
        x = _half_step(x, self.ff1(x))
        a, kv = self.attn.forward_cached(self.norm_attn(x), kv, mask=mask)
        x = x + _dropout(self.dropout, a)
        c, conv = self.conv.step(x, conv)
        x = x + c
        x = _half_step(x, self.ff2(x))
        return self.norm_out(x), kv, conv


def _half_step(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The macaron half step ``x + 0.5 * h`` as one op (bit for bit the same: ``0.5 * h`` is exact)."""
    return torch.add(x, h, alpha=0.5)
