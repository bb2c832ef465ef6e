"""Star Attention (Acharya et al., 2024), the attention-level pieces.

Phase 1 encodes a long context in blocks, each block attending only to itself (causally) and to
the *anchor* (the first block) in front of it; the blocks are independent, so they run side by
side (batched here, one host each in the paper). Phase 2 lets the query tokens attend to all
cached blocks: every block ("host") computes attention of the queries against its own keys only,
returning the partial output and the log-sum-exp of its scores, and the partials are merged
exactly like a distributed softmax:

    out = sum_b exp(lse_b - lse) * out_b,    lse = logsumexp_b lse_b

which equals one softmax over the union of the keys (tested in float64). The model-level driver
(both phases through a :class:`~asr.models.TransformerLM`) is :mod:`asr.models.lm_star`.
"""

from __future__ import annotations

import math

import torch

from asr.attention.mha import MultiHeadAttention

__all__ = ["attention_with_lse", "merge_partial_attention", "global_attention"]


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of already position-encoded heads, with its log-sum-exp.

    Args:
        q: (B, H, T_q, dh); k, v: (B, H, T_k, dh).
        mask: bool broadcastable to (B, H, T_q, T_k), True = may attend. A row may be empty:
            its output is 0 and its lse ``-inf`` (it then carries no weight in the merge).

    Returns:
        out (B, H, T_q, dh) normalised within these keys, lse (B, H, T_q).
    """
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, T_q)
    weights = torch.exp(scores - lse.nan_to_num(neginf=0.0)[..., None])  # exp(-inf) = 0 on empty rows
    return weights @ v, lse


def merge_partial_attention(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> torch.Tensor:
    """Combine per-block attention results into attention over all their keys (log-sum-exp merge).

    Args:
        outs: each (B, H, T_q, dh), normalised over its block's keys.
        lses: each (B, H, T_q), the log-sum-exp of that block's scores.

    Returns:
        (B, H, T_q, dh).
    """
    lse = torch.stack(lses)  # (n, B, H, T_q)
    total = torch.logsumexp(lse, dim=0)
    w = torch.exp(lse - total.nan_to_num(neginf=0.0))  # (n, B, H, T_q)
    return (w[..., None] * torch.stack(outs)).sum(0)


def global_attention(
    mha: MultiHeadAttention,
    x: torch.Tensor,
    start: int,
    blocks: list[tuple[torch.Tensor, torch.Tensor]],
    refs: list[int] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Phase 2: queries at positions ``start ..`` attend all cached blocks plus themselves (causally).

    Each cached block and the query block are attended separately (one "host" each) and merged
    with :func:`merge_partial_attention`.

    Args:
        mha: the layer's attention (``pos`` none, rotary or xpos).
        x: (B, t, D) query tokens, normalised input of the layer.
        start: absolute position of ``x[:, 0]`` (after all cached positions).
        blocks: per block ``(k, v)``, each (B, H, T_b, dh), rotated at their true positions.
        refs: per block, the xpos reference its keys were encoded with (None = all 0); the
            queries use ``start`` and the keys are rebased to it.

    Returns:
        y (B, t, D) and the query tokens' own ``(k, v)`` (xpos reference ``start``).
    """
    if mha.pos == "rel":
        raise ValueError("Star Attention caches rotated keys; use pos none, rotary or xpos")
    t = x.shape[1]
    q, k, v = mha.project_self(x, start, xpos_ref=start)
    if mha.pos == "xpos":
        refs = [0] * len(blocks) if refs is None else refs
        blocks = [(mha.xpos.rebase_keys(kb, r, start), vb) for (kb, vb), r in zip(blocks, refs)]
    causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
    parts = [attention_with_lse(q, kb, vb) for kb, vb in blocks] + [attention_with_lse(q, k, v, causal)]
    out = merge_partial_attention([o for o, _ in parts], [lse for _, lse in parts])
    return mha.merge_heads(out.to(x.dtype)), (k, v)
