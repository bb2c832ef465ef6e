"""Multi-head attention shared by the encoder, the decoders, the language model and the
long-context modules.

One module, three ways to call it:

* :meth:`MultiHeadAttention.forward` — self- or cross-attention with an explicit boolean mask.
* :meth:`MultiHeadAttention.forward_cached` — self-attention of new positions against a
  :class:`~asr.attention.kv_cache.KVCache` (streaming encoder blocks, LM decoding).
* :meth:`MultiHeadAttention.forward_blockwise` — block-causal self-attention over a whole
  (padded) sequence, computed a slice of query blocks at a time so memory stays linear in the
  length when the left context is bounded; optional FlexAttention kernel.
* :meth:`MultiHeadAttention.forward_bpt` — the same attention computed tile by tile with an
  online softmax and a recomputing backward (:mod:`asr.attention.bpt`): no T x T scores are
  kept in training either (long utterances).

Positions (``pos``): ``"none"``, ``"rel"`` (Transformer-XL/conformer relative positions with
``pos_bias_u``/``pos_bias_v``), ``"rotary"`` or ``"xpos"`` (rotary with exponential decay,
:mod:`asr.attention.xpos`). All depend only on position differences, so cached keys stay valid.
The kernel is ``torch.nn.functional.scaled_dot_product_attention``; the relative term enters as
an additive float mask. The long-context modules built on this class: :mod:`asr.attention.sparse`
(LongGen), :mod:`asr.attention.paged_cache` (PagedEviction), :mod:`asr.attention.star`.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from asr.attention.bpt import bpt_attention
from asr.attention.fused import FusedLinears
from asr.attention.kv_cache import KVCache
from asr.attention.masks import block_causal_mask_range, combine_with_padding, padding_mask
from asr.attention.positions import RelPositionalEncoding, RotaryEmbedding, rel_shift
from asr.attention.xpos import XPosEmbedding

__all__ = ["MultiHeadAttention", "PosKind", "Kernel", "flex_available"]

PosKind = Literal["none", "rel", "rotary", "xpos"]
Kernel = Literal["sdpa", "flex"]

_compiled_flex: Callable | None = None


def flex_available() -> bool:
    """Whether ``torch.nn.attention.flex_attention`` can be imported."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _flex_fn(device: torch.device) -> Callable:
    """Compiled flex_attention on CUDA (fused kernel); eager reference elsewhere (tests)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


class MultiHeadAttention(nn.Module):
    """Multi-head attention with relative or rotary positions and an optional KV cache.

    Args:
        d_model: model width D (divisible by ``n_heads``).
        n_heads: number of heads H.
        dropout: dropout on attention weights (training only, SDPA kernel only).
        pos: ``"none"``, ``"rel"``, ``"rotary"`` or ``"xpos"`` (self-attention only).
        kv_dim: width of the memory for cross-attention (default ``d_model``).
        bias: biases in the projections.
        rotary_base, rotary_scale: rotary frequency base and position-interpolation factor.
        xpos_scale_base: decay length of ``pos="xpos"`` (see :class:`XPosEmbedding`).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        dropout: float = 0.0,
        pos: PosKind = "none",
        kv_dim: int | None = None,
        bias: bool = True,
        rotary_base: float = 10000.0,
        rotary_scale: float = 1.0,
        xpos_scale_base: float = 512.0,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if pos not in ("none", "rel", "rotary", "xpos"):
            raise ValueError(f"pos must be 'none', 'rel', 'rotary' or 'xpos', got {pos!r}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.dropout, self.pos = dropout, pos
        kv_dim = d_model if kv_dim is None else kv_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(kv_dim, d_model, bias=bias)
        self.v_proj = nn.Linear(kv_dim, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self._qkv = FusedLinears()  # q_proj, k_proj, v_proj as one product without autograd
        if pos == "rel":
            self.rel_pos = RelPositionalEncoding(d_model, n_heads)
            self.pos_bias_u = nn.Parameter(torch.empty(n_heads, self.head_dim))
            self.pos_bias_v = nn.Parameter(torch.empty(n_heads, self.head_dim))
            nn.init.xavier_uniform_(self.pos_bias_u)
            nn.init.xavier_uniform_(self.pos_bias_v)
        elif pos == "rotary":
            self.rotary = RotaryEmbedding(self.head_dim, rotary_base, rotary_scale)
        elif pos == "xpos":
            self.xpos = XPosEmbedding(self.head_dim, rotary_base, xpos_scale_base)

    # ----------------------------------------------------------------- projections
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)  # (B, H, T, dh)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(x.transpose(1, 2).flatten(-2))  # (B, T, D)

    def project_self(
        self, x: torch.Tensor, start: int | torch.Tensor, xpos_ref: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, H, T, head_dim) of ``x`` (B, T, D) at positions ``start ..``; rotary/xpos applied.

        ``start`` may be a (B,) tensor (one first position per row) for rotary and xpos;
        ``xpos_ref``: the position xpos counts its decay from (see :class:`XPosEmbedding`).
        """
        q, k, v = self._project_qkv(x)
        if self.pos == "rotary":
            q, k = self.rotary(q, start), self.rotary(k, start)
        elif self.pos == "xpos":
            q, k = self.xpos(q, start, key=False, ref=xpos_ref), self.xpos(k, start, key=True, ref=xpos_ref)
        return q, k, v

    def _project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heads (B, H, T, dh) of the q, k and v projections of x (B, T, D). Without autograd the
        three layers run as one product (:class:`~asr.attention.fused.FusedLinears`; float: the
        same products, equal up to the matrix kernel's summation order; int8: the same numbers,
        the input is quantized once instead of three times) and q, k, v are views of its output."""
        layers = (self.q_proj, self.k_proj, self.v_proj)
        fused = None if torch.is_grad_enabled() else self._qkv.get(layers)
        if fused is None:
            return self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        qkv = fused(x).unflatten(-1, (3, self.n_heads, self.head_dim))  # (B, T, 3, H, dh)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # type: ignore[return-value]

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Heads (B, H, T, head_dim) -> output projection (B, T, D) (for callers of :meth:`attend`)."""
        return self._merge(x)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, H, S, head_dim) of a cross-attention memory (B, S, kv_dim); cache them across steps."""
        return self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))

    # ----------------------------------------------------------------- kernel
    def _rel_scores(self, q: torch.Tensor, k_len: int, q_start: int, k_start: int) -> torch.Tensor:
        """Relative-position term ``(q + v_bias) . p_{i-j} / sqrt(head_dim)`` as (B, H, T_q, T_k).

        One batched product with the (H, dh, R) table of :meth:`RelPositionalEncoding.keys`, which
        carries the 1 / sqrt(head_dim) (exact for power-of-4 head sizes, such as 16 and 64)."""
        t_q = q.shape[-2]
        p = self.rel_pos.keys(q_start + t_q - 1 - k_start, t_q + k_len - 1, q.device, q.dtype,
                              1.0 / math.sqrt(self.head_dim))  # (H, dh, R)
        bd = torch.matmul(q + self.pos_bias_v[:, None, :], p)  # (B, H, T_q, R)
        return rel_shift(bd, k_len)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        q_start: int = 0,
        k_start: int = 0,
        mask: torch.Tensor | None = None,
        positioned: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Scaled dot-product attention of projected heads.

        Args:
            q: (B, H, T_q, dh); k, v: (B, H, T_k, dh).
            q_start, k_start: absolute positions of the first query / key (relative positions).
            mask: bool, True = may attend, broadcastable to (B, H, T_q, T_k); every row must
                allow at least one key.
            positioned: ``(n_q, n_k)``: only the first ``n_q`` queries and ``n_k`` keys have
                positions (``q_start ..``, ``k_start ..``); the pairs that involve the others
                (position-less tokens appended after them, such as the context embeddings of
                :mod:`asr.encoder.contextual`) get no relative-position term with ``pos="rel"``.
                None = every query and key has a position.

        Returns:
            (B, H, T_q, dh).
        """
        attn_mask = mask
        if self.pos == "rel":
            if positioned is None:
                bias = self._rel_scores(q, k.shape[-2], q_start, k_start)
            else:
                n_q, n_k = positioned
                bias = self._rel_scores(q[:, :, :n_q], n_k, q_start, k_start)  # (B, H, n_q, n_k)
                bias = F.pad(bias, (0, k.shape[-2] - n_k, 0, q.shape[-2] - n_q))
            if mask is not None:
                bias = bias.masked_fill(~mask, float("-inf"))
            q, attn_mask = q + self.pos_bias_u[:, None, :], bias
        dropout_p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)

    # ----------------------------------------------------------------- entry points
    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        start: int = 0,
        memory_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Self-attention (``memory is None``) or cross-attention.

        Args:
            x: (B, T, D) queries (and keys/values for self-attention).
            memory: (B, S, kv_dim) cross-attention memory, or None.
            mask: bool (T, T_k) or (B, 1, T, T_k), True = may attend; None = everything.
            start: absolute position of ``x[:, 0]`` (self-attention positions).
            memory_kv: precomputed :meth:`project_memory` output instead of ``memory``.

        Returns:
            (B, T, D).
        """
        if memory is None and memory_kv is None:
            q, k, v = self.project_self(x, start)
            out = self.attend(q, k, v, q_start=start, k_start=start, mask=mask)
        else:
            if self.pos != "none":
                raise ValueError("positions apply to self-attention only; build cross-attention with pos='none'")
            k, v = memory_kv if memory_kv is not None else self.project_memory(memory)
            out = self.attend(self._heads(self.q_proj(x)), k, v, mask=mask)
        return self._merge(out)

    def forward_cached(
        self, x: torch.Tensor, cache: KVCache, *, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """Self-attention of new positions against cached ones.

        Args:
            x: (B, t, D) new positions ``cache.end .. cache.end + t - 1``.
            cache: keys/values of earlier positions.
            mask: bool (t, cache.length + t) or (B, 1, t, cache.length + t); None = attend all
                cached and all new positions (use a causal mask for t > 1 in an LM).

        Returns:
            y (B, t, D) and the new cache (trimmed to ``cache.max_len``).
        """
        start = cache.end
        q, k, v = self.project_self(x, start)
        grown = cache.extended(k, v)  # every cached position is attended to, then max_len applies
        out = self.attend(q, grown.k, grown.v, q_start=start, k_start=cache.start, mask=mask)
        return self._merge(out), grown.trimmed()

    def forward_blockwise(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor | None,
        *,
        block_size: int | None,
        left_blocks: int | None,
        query_chunk: int = 1024,
        kernel: Kernel = "sdpa",
    ) -> torch.Tensor:
        """Block-causal self-attention over a padded sequence (positions start at 0).

        With the SDPA kernel the queries are processed ``query_chunk`` frames (rounded to whole
        blocks) at a time, each against only the keys its blocks may see, so with bounded
        ``left_blocks`` the mask and score memory is O(T) instead of O(T^2); the result equals
        one call with the full :func:`~asr.attention.masks.block_causal_mask`. Padded keys are
        never attended; outputs at padded queries are unspecified.

        Args:
            x: (B, T, D).
            x_lens: (B,) valid lengths, or None (no padding).
            block_size, left_blocks: see :func:`~asr.attention.masks.block_causal_mask`.
            query_chunk: queries per slice (SDPA kernel).
            kernel: ``"sdpa"`` or ``"flex"`` (FlexAttention block mask; compiled on CUDA).

        Returns:
            (B, T, D).
        """
        t = x.shape[1]
        q, k, v = self.project_self(x, 0)
        if kernel == "flex":
            return self._merge(self._attend_flex(q, k, v, x_lens, block_size, left_blocks))
        if kernel != "sdpa":
            raise ValueError(f"kernel must be 'sdpa' or 'flex', got {kernel!r}")
        valid = None if x_lens is None else padding_mask(x_lens, t)
        if block_size is None and valid is None:
            return self._merge(self.attend(q, k, v))
        step = t if block_size is None else max(1, query_chunk // block_size) * block_size
        outs = []
        for q0 in range(0, t, max(step, 1)):
            q1 = min(t, q0 + step)
            k0, k1 = 0, t
            if block_size is not None:
                k1 = q1  # q1 is a block boundary (or T): later blocks are never visible
                if left_blocks is not None:
                    k0 = max(0, (q0 // block_size - left_blocks) * block_size)
            m = block_causal_mask_range(q0, q1 - q0, k0, k1 - k0, block_size, left_blocks, x.device)
            if valid is not None:
                m = combine_with_padding(m, valid[:, q0:q1], valid[:, k0:k1])
            outs.append(
                self.attend(q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], q_start=q0, k_start=k0, mask=m)
            )
        return self._merge(torch.cat(outs, dim=2))

    def forward_bpt(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor | None,
        *,
        block_size: int | None,
        left_blocks: int | None,
        query_block: int = 1024,
        key_block: int = 1024,
    ) -> torch.Tensor:
        """:meth:`forward_blockwise` computed as a Blockwise Parallel Transformer (positions start at 0).

        Query and key tiles of ``query_block`` x ``key_block`` frames, online softmax, and a
        backward that recomputes every tile (:func:`~asr.attention.bpt.bpt_attention`): memory
        O(T) plus one tile, with or without autograd. Same numbers as :meth:`forward_blockwise`
        at valid queries (float rounding aside); attention dropout draws its own masks.

        Args:
            x: (B, T, D); x_lens: (B,) valid lengths or None.
            block_size, left_blocks: see :func:`~asr.attention.masks.block_causal_mask`.
            query_block, key_block: tile size in frames.

        Returns:
            (B, T, D).
        """
        t = x.shape[1]
        q, k, v = self.project_self(x, 0)
        rel = None
        if self.pos == "rel":
            emb = self.rel_pos(t - 1, 2 * t - 1, x.device, q.dtype)  # (2T - 1, H, dh), distances T-1 .. -(T-1)
            rel = (self.pos_bias_u, self.pos_bias_v, emb)
        out = bpt_attention(
            q, k, v, key_valid=None if x_lens is None else padding_mask(x_lens.to(x.device), t), rel=rel,
            block_size=block_size, left_blocks=left_blocks, query_block=query_block, key_block=key_block,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self._merge(out)

    def _attend_flex(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        x_lens: torch.Tensor | None,
        block_size: int | None,
        left_blocks: int | None,
    ) -> torch.Tensor:
        """FlexAttention version of :meth:`forward_blockwise` (whole sequence at once)."""
        from torch.nn.attention.flex_attention import create_block_mask

        if self.training and self.dropout > 0:
            raise NotImplementedError("FlexAttention path has no attention dropout; use kernel='sdpa'")
        b, _, t, _ = q.shape
        lens = torch.full((b,), t, device=q.device) if x_lens is None else x_lens.to(q.device)

        def mask_mod(bi, hi, qi, ki):  # noqa: ARG001 - flex signature
            ok = ki < lens[bi]
            if block_size is not None:
                qb, kb = qi // block_size, ki // block_size
                ok = ok & (kb <= qb)
                if left_blocks is not None:
                    ok = ok & (qb - kb <= left_blocks)
            return ok

        block_mask = create_block_mask(mask_mod, b, None, t, t, device=q.device)
        score_mod = None
        if self.pos == "rel":
            bd = self._rel_scores(q, t, 0, 0).contiguous()  # (B, H, T, T), scaled
            q = q + self.pos_bias_u[:, None, :]

            def score_mod(score, bi, hi, qi, ki):
                return score + bd[bi, hi, qi, ki]

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            return _flex_fn(q.device)(q, k, v, score_mod=score_mod, block_mask=block_mask)
