"""Star Attention through a :class:`~asr.models.TransformerLM`: two-phase scoring of a long context.

Phase 1 (:func:`star_encode`): the context is cut into blocks of ``block_size`` tokens; every block
is encoded with the anchor block (the first one) in front of it, at its true positions, all blocks
side by side in one batch. A causal LM computes the anchor identically whatever follows it, so
each layer's anchor keys are computed once and prepended to every block's. Only the blocks' own
keys/values are kept: the KV cache of the context, per layer and block.

Phase 2 (:func:`star_logits`): the query tokens attend to every cached block and, causally, to
each other, merged with the log-sum-exp combine of :mod:`asr.attention.star` (one "host" per block).

:func:`full_logits` is the exact reference (causal attention over everything, computed a query
slice at a time so memory stays O(T)).
"""

from __future__ import annotations

import math

import torch

from asr.attention.star import global_attention
from asr.models.lm import TransformerLM

__all__ = ["star_encode", "star_logits", "full_logits", "block_refs"]

KV = tuple[torch.Tensor, torch.Tensor]


def _check(lm: TransformerLM) -> None:
    if lm.cfg.longgen is not None:
        raise ValueError("Star Attention expects full-attention layers (LMConfig.longgen is set)")


@torch.no_grad()
def star_encode(lm: TransformerLM, context: torch.Tensor, block_size: int) -> list[list[KV]]:
    """Phase 1: per layer, the ``(k, v)`` of each context block, each (1, H, T_b, dh); xpos keys
    count their decay from their block's first position (:func:`block_refs`).

    Args:
        context: (T,) token ids at positions 0 .. T-1.
        block_size: tokens per block (the anchor is the first block).
    """
    _check(lm)
    t = context.shape[0]
    n = max(1, math.ceil(t / block_size))
    padded = torch.zeros(n * block_size, dtype=context.dtype, device=context.device)
    padded[:t] = context  # padding at the end only: causal attention keeps it out of real tokens
    x = lm.embed(padded.view(n, block_size))  # (n, b, D)
    starts = torch.arange(n, device=context.device) * block_size
    causal = torch.ones(block_size, block_size, dtype=torch.bool, device=context.device).tril()
    anchor_cols = torch.ones(n, 1, block_size, block_size, dtype=torch.bool, device=context.device)
    anchor_cols[0] = False  # block 0 is the anchor itself
    mask = torch.cat([anchor_cols, causal.expand(n, 1, block_size, block_size)], dim=-1)  # (n, 1, b, 2b)
    lens = [min(block_size, t - i * block_size) for i in range(n)]
    caches = []
    for layer in lm.layers:
        mha = layer.self_attn
        q, k, v = mha.project_self(layer.norm_self(x), starts, xpos_ref=starts)  # (n, H, b, dh)
        anchor_k = k[:1].expand_as(k)
        if mha.pos == "xpos":  # row i counts the decay from its block start; the anchor from 0
            anchor_k = mha.xpos.rebase_keys(anchor_k, 0, starts)
        k_all = torch.cat([anchor_k, k], dim=-2)
        v_all = torch.cat([v[:1].expand_as(v), v], dim=-2)
        x = x + mha.merge_heads(mha.attend(q, k_all, v_all, mask=mask))
        x = x + layer.ff(x)
        caches.append([(k[i : i + 1, :, : lens[i]], v[i : i + 1, :, : lens[i]]) for i in range(n)])
    return caches


def block_refs(caches: list[list[KV]]) -> list[int]:
    """First position of each cached block (the xpos reference of its keys)."""
    sizes = [k.shape[-2] for k, _ in caches[0]]
    return [sum(sizes[:i]) for i in range(len(sizes))]


@torch.no_grad()
def star_logits(lm: TransformerLM, caches: list[list[KV]], query: torch.Tensor, start: int,
                refs: list[int] | None = None) -> torch.Tensor:
    """Phase 2: logits (U, V) after each query token (U,) at positions ``start ..``.

    ``caches`` from :func:`star_encode` of the ``start`` context tokens; ``refs``: the xpos
    reference of each block's keys (default :func:`block_refs`, as :func:`star_encode` makes them).
    """
    _check(lm)
    refs = block_refs(caches) if refs is None else refs
    x = lm.embed(query[None])  # (1, U, D)
    for layer, blocks in zip(lm.layers, caches):
        y, _ = global_attention(layer.self_attn, layer.norm_self(x), start, blocks, refs)
        x = x + y
        x = x + layer.ff(x)
    return lm.out(lm.norm(x))[0]


@torch.no_grad()
def full_logits(lm: TransformerLM, tokens: torch.Tensor, query_chunk: int = 1024) -> torch.Tensor:
    """Exact causal LM logits (T, V) of ``tokens`` (T,), attention ``query_chunk`` queries at a time
    (each slice's xpos decay counted from its first query, so long inputs never overflow)."""
    _check(lm)
    t = tokens.shape[0]
    x = lm.embed(tokens[None])
    for layer in lm.layers:
        mha, h = layer.self_attn, layer.norm_self(x)
        outs = []
        for q0 in range(0, t, query_chunk):
            q1 = min(t, q0 + query_chunk)
            q, k, v = mha.project_self(h[:, :q1], 0, xpos_ref=q0)  # keys 0 .. q1 - 1
            mask = torch.ones(q1 - q0, q1, dtype=torch.bool, device=x.device).tril(q0)
            outs.append(mha.attend(q[:, :, q0:], k, v, mask=mask))
        x = x + mha.merge_heads(torch.cat(outs, dim=2))
        x = x + layer.ff(x)
    return lm.out(lm.norm(x))[0]
