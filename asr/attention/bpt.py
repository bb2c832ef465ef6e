"""Blockwise Parallel Transformer (BPT) pieces: attention and feed-forward without T x T or
T x (ff * D) activations, for training on long utterances.

* :func:`bpt_attention` — self-attention computed one (query block, key block) tile at a time
  with an online softmax (running max, running sum, rescaled accumulator). A custom autograd
  function keeps only q, k, v, the output and the per-row log-sum-exp (all O(T)); its backward
  recomputes each tile's scores from them (the FlashAttention scheme). Peak extra memory is
  O(B * H * query_block * key_block), never O(T^2). It handles key padding, a block-causal
  structure, the conformer relative-position term (its score tile is computed from the slice of
  the relative embeddings the tile needs) and dropout on the attention weights.
* :func:`bpt_feed_forward` — a per-frame module (the feed-forward) applied ``block`` frames at a
  time under ``torch.utils.checkpoint``: the (B, T, ff * D) hidden activation is never stored,
  only recomputed block by block in the backward pass. The encoder does the same for its
  convolution modules and its subsampling (``CausalConvModule.forward(block=)``,
  ``Conv2dSubsampling.forward(recompute=)``), whose blocks need a few frames of overlap.

The numbers equal the plain path's (``MultiHeadAttention.forward_blockwise``) up to float
rounding, gradients included (``tests/test_bpt.py``, float64). Dropout draws its masks from a
per-tile generator seeded by ``seed``, so it is a valid dropout but not the same random draw as
SDPA's (exact dropout equivalence with the plain path is impossible); backward replays the
same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils.checkpoint import checkpoint

from asr.attention.masks import block_causal_mask_range
from asr.attention.positions import rel_shift

__all__ = ["bpt_attention", "bpt_feed_forward"]


@dataclass(frozen=True)
class _Spec:
    """Static arguments of one :func:`bpt_attention` call."""

    block_size: int | None
    left_blocks: int | None
    query_block: int
    key_block: int
    dropout_p: float
    seed: int
    scale: float


def bpt_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_valid: torch.Tensor | None = None,
    rel: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    block_size: int | None = None,
    left_blocks: int | None = None,
    query_block: int = 1024,
    key_block: int = 1024,
    dropout_p: float = 0.0,
    seed: int | None = None,
) -> torch.Tensor:
    """Self-attention over a whole (padded) sequence, tile by tile.

    Query ``i`` attends key ``j`` iff the block-causal structure allows it
    (:func:`~asr.attention.masks.block_causal_mask_range`; ``block_size=None`` = full context)
    and key ``j`` is valid; a padded query attends the structurally allowed keys, padded ones
    included, so no row is empty (its output is unspecified, as in the plain path).

    Args:
        q, k, v: (B, H, T, dh), positions 0 .. T-1 (rotary/xpos already applied).
        key_valid: (B, T) bool, True = real frame; None = no padding.
        rel: conformer relative positions ``(pos_bias_u (H, dh), pos_bias_v (H, dh), emb)`` with
            ``emb`` (2T - 1, H, dh) the projected embeddings of distances ``T-1, T-2, .., -(T-1)``
            (``RelPositionalEncoding(T - 1, 2T - 1)``); scores are
            ``((q + u) k + (q + v) p_{i-j}) / sqrt(dh)``. None = no relative term.
        block_size, left_blocks: block-causal structure (None, None = full context).
        query_block, key_block: tile size in frames (any positive ints; need not divide T).
        dropout_p: dropout on the attention weights (pass 0 at inference).
        seed: dropout seed (drawn from the torch generator when None and ``dropout_p > 0``).

    Returns:
        (B, H, T, dh) in the dtype of ``q``.
    """
    if query_block < 1 or key_block < 1:
        raise ValueError(f"query_block and key_block must be >= 1, got {query_block}, {key_block}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if seed is None:
        seed = int(torch.randint(2**62, (1,))) if dropout_p > 0 else 0
    spec = _Spec(block_size, left_blocks, query_block, key_block, dropout_p, seed, q.shape[-1] ** -0.5)
    u, vb, emb = rel if rel is not None else (None, None, None)
    if rel is not None and emb.shape[0] != 2 * q.shape[-2] - 1:
        raise ValueError(f"rel emb must have 2T - 1 = {2 * q.shape[-2] - 1} rows, got {emb.shape[0]}")
    tensors = (q, k, v, u, vb, emb)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _BPTAttention.apply(q, k, v, u, vb, emb, key_valid, spec)
    with torch.autocast(q.device.type, enabled=False):
        return _forward(q, k, v, u, vb, emb, key_valid, spec)[0]


def bpt_feed_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, block: int) -> torch.Tensor:
    """``fn(x)`` for a per-frame ``fn`` (B, t, D) -> (B, t, D'), ``block`` frames at a time.

    With autograd each block runs under ``torch.utils.checkpoint`` (non-reentrant, RNG state
    preserved, so dropout masks replay exactly): only the block's input view is kept and the
    hidden activation is recomputed in the backward pass. Without autograd it is a plain call.
    """
    if block < 1:
        raise ValueError(f"ff block must be >= 1, got {block}")
    t = x.shape[1]
    if not torch.is_grad_enabled():
        return fn(x)
    outs = [checkpoint(fn, x[:, t0 : t0 + block], use_reentrant=False) for t0 in range(0, t, block)]
    return torch.cat(outs, dim=1) if len(outs) != 1 else outs[0]


# --------------------------------------------------------------------------- tiles
def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics and accumulators: float32 for half types, else the input dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _tiles(t: int, spec: _Spec) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """(q0, q1, [(k0, k1), ...]): query blocks and the key tiles their structure can see."""
    for q0 in range(0, t, spec.query_block):
        q1 = min(t, q0 + spec.query_block)
        lo, hi = 0, t
        if spec.block_size is not None:
            bs = spec.block_size
            hi = min(t, ((q1 - 1) // bs + 1) * bs)  # end of the last query's block
            if spec.left_blocks is not None:
                lo = max(0, (q0 // bs - spec.left_blocks) * bs)
        yield q0, q1, [(k0, min(hi, k0 + spec.key_block)) for k0 in range(lo, hi, spec.key_block)]


def _tile_mask(q0: int, q1: int, k0: int, k1: int, key_valid: torch.Tensor | None, spec: _Spec,
               device: torch.device) -> torch.Tensor | None:
    """(B | 1, 1, q1-q0, k1-k0) bool, True = may attend; None = the whole tile is allowed."""
    out = None
    bs, left = spec.block_size, spec.left_blocks
    # Whole tile allowed: its last key's block <= its first query's block, and its last query's
    # block within ``left`` of its first key's (decided on the host: no device sync per tile).
    if bs is not None and not ((k1 - 1) // bs <= q0 // bs and (left is None or (q1 - 1) // bs - k0 // bs <= left)):
        out = block_causal_mask_range(q0, q1 - q0, k0, k1 - k0, bs, left, device)[None, None]
    if key_valid is not None:
        pad = key_valid[:, None, None, k0:k1] | ~key_valid[:, None, q0:q1, None]  # padded queries: all keys
        out = pad if out is None else out & pad
    return out


def _scores(qt: torch.Tensor, kt: torch.Tensor, u: torch.Tensor | None, vb: torch.Tensor | None,
            emb: torch.Tensor | None, spec: _Spec) -> torch.Tensor:
    """Scaled scores (B, H, tq, tk) of one tile in the statistics dtype (differentiable in every
    tensor argument). The two matmuls run in the input dtype; their sum is taken in float32 for
    half inputs, as SDPA adds its float mask to float32 scores.

    ``emb`` is the full (2T - 1, H, dh) table or, in the backward pass, a tensor whose row 0 is
    the first row the tile needs (``_emb_rows``)."""
    sdt = _stat_dtype(qt.dtype)
    if emb is None:
        return (qt @ kt.transpose(-1, -2)).to(sdt) * spec.scale
    tq, tk = qt.shape[-2], kt.shape[-2]
    ac = (qt + u.to(qt.dtype)[:, None]) @ kt.transpose(-1, -2)  # (B, H, tq, tk)
    qv = qt + vb.to(qt.dtype)[:, None]
    bd = torch.einsum("bhqd,rhd->bhqr", qv, emb[: tq + tk - 1].to(qt.dtype))  # (B, H, tq, tq + tk - 1)
    return (ac.to(sdt) + rel_shift(bd, tk).to(sdt)) * spec.scale


def _emb_rows(t: int, q0: int, q1: int, k0: int) -> int:
    """First row of the (2T - 1)-row embedding table a tile needs: its largest distance
    ``(q1 - 1) - k0`` sits at row ``T - 1 - distance``."""
    return t - 1 - (q1 - 1 - k0)


def _keep(shape: tuple[int, ...], spec: _Spec, q0: int, k0: int, device: torch.device) -> torch.Tensor:
    """Dropout keep mask of one tile, the same on every call (seeded by seed and tile)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(hash((spec.seed, q0, k0)) & (2**62 - 1))
    return torch.rand(shape, generator=gen, device=device) >= spec.dropout_p


def _forward(q, k, v, u, vb, emb, key_valid, spec: _Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Online-softmax forward: output (B, H, T, dh) and log-sum-exp (B, H, T)."""
    b, h, t, dh = q.shape
    sdt = _stat_dtype(q.dtype)
    out = torch.empty_like(q)
    lse = torch.empty(b, h, t, dtype=sdt, device=q.device)
    for q0, q1, keys in _tiles(t, spec):
        qt = q[:, :, q0:q1]
        m = torch.full((b, h, q1 - q0), float("-inf"), dtype=sdt, device=q.device)
        l = torch.zeros_like(m)
        acc = torch.zeros(b, h, q1 - q0, dh, dtype=sdt, device=q.device)
        for k0, k1 in keys:
            tab = None if emb is None else emb[_emb_rows(t, q0, q1, k0):]
            s = _scores(qt, k[:, :, k0:k1], u, vb, tab, spec)
            allowed = _tile_mask(q0, q1, k0, k1, key_valid, spec, q.device)
            if allowed is not None:
                s.masked_fill_(~allowed, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # rows with nothing allowed yet
            p = s.sub_(m_safe[..., None]).exp_()  # in place: one tile of scores alive at a time
            alpha = torch.exp(m - m_safe)
            l = l * alpha + p.sum(-1)
            if spec.dropout_p > 0:
                p = p * _keep(p.shape, spec, q0, k0, q.device) / (1 - spec.dropout_p)
            acc = acc * alpha[..., None] + (p.to(v.dtype) @ v[:, :, k0:k1]).to(sdt)
            m = m_new
        out[:, :, q0:q1] = (acc / l[..., None]).to(q.dtype)
        lse[:, :, q0:q1] = m + torch.log(l)
    return out, lse


class _BPTAttention(torch.autograd.Function):
    """Saves q, k, v, the relative-position tensors, the output and the log-sum-exp; the
    backward recomputes each tile's scores (local autograd for their dependence on q, k and
    the relative term) and applies the softmax gradient ``dS = P * (dP - rowsum(dO * O))``."""

    @staticmethod
    def forward(ctx, q, k, v, u, vb, emb, key_valid, spec):
        with torch.autocast(q.device.type, enabled=False):
            out, lse = _forward(q, k, v, u, vb, emb, key_valid, spec)
        ctx.save_for_backward(q, k, v, u, vb, emb, key_valid, out, lse)
        ctx.spec = spec
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, u, vb, emb, key_valid, out, lse = ctx.saved_tensors
        spec: _Spec = ctx.spec
        t = q.shape[-2]
        sdt = _stat_dtype(q.dtype)
        with torch.autocast(q.device.type, enabled=False):
            dout = dout.to(q.dtype)
            delta = (dout.to(sdt) * out.to(sdt)).sum(-1)  # (B, H, T)
            dq, dk, dv = (torch.zeros(x.shape, dtype=sdt, device=x.device) for x in (q, k, v))
            rel = emb is not None
            if rel:
                u_l, vb_l = u.detach().requires_grad_(), vb.detach().requires_grad_()
                du, dvb = torch.zeros_like(u, dtype=sdt), torch.zeros_like(vb, dtype=sdt)
                demb = torch.zeros(emb.shape, dtype=sdt, device=emb.device)
            for q0, q1, keys in _tiles(t, spec):
                qt = q[:, :, q0:q1].detach().requires_grad_()
                do_t = dout[:, :, q0:q1]
                for k0, k1 in keys:
                    kt = k[:, :, k0:k1].detach().requires_grad_()
                    inputs = [qt, kt]
                    tab = None
                    if rel:
                        r0 = _emb_rows(t, q0, q1, k0)
                        tab = emb[r0 : r0 + (q1 - q0) + (k1 - k0) - 1].detach().requires_grad_()
                        inputs += [u_l, vb_l, tab]
                    with torch.enable_grad():
                        s = _scores(qt, kt, u_l if rel else None, vb_l if rel else None, tab, spec)
                    # In-place where possible: a few (B, H, tq, tk) tiles alive at a time.
                    p = (s.detach() - lse[:, :, q0:q1, None]).exp_()
                    allowed = _tile_mask(q0, q1, k0, k1, key_valid, spec, q.device)
                    if allowed is not None:
                        p.masked_fill_(~allowed, 0.0)
                    dp = (do_t @ v[:, :, k0:k1].transpose(-1, -2)).to(sdt)  # (B, H, tq, tk)
                    pd = p
                    if spec.dropout_p > 0:
                        keep = _keep(p.shape, spec, q0, k0, q.device) / (1 - spec.dropout_p)
                        pd = p * keep
                        dp.mul_(keep)
                        del keep
                    dv[:, :, k0:k1] += (pd.to(v.dtype).transpose(-1, -2) @ do_t).to(sdt)
                    del pd
                    ds = dp.sub_(delta[:, :, q0:q1, None]).mul_(p)
                    del p
                    grads = torch.autograd.grad(s, inputs, ds)
                    dq[:, :, q0:q1] += grads[0].to(sdt)
                    dk[:, :, k0:k1] += grads[1].to(sdt)
                    if rel:
                        du += grads[2].to(sdt)
                        dvb += grads[3].to(sdt)
                        demb[r0 : r0 + tab.shape[0]] += grads[4].to(sdt)
        if not rel:
            return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), du.to(u.dtype), dvb.to(vb.dtype),
                demb.to(emb.dtype), None, None)
