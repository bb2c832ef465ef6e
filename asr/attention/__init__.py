"""The attention core: masks, positions, multi-head attention, the KV caches and the long-context
modules (XPos, LongGen sparse attention, PagedEviction, Star Attention, Blockwise Parallel
Transformer)."""

from asr.attention.kv_cache import BeamKVCache, KVCache
from asr.attention.masks import (
    block_causal_mask,
    block_causal_mask_range,
    causal_mask,
    combine_with_padding,
    contextual_block_mask_range,
    longgen_allowed,
    longgen_kept_keys,
    longgen_mask,
    longgen_mask_range,
    pad_flat,
    pad_rows,
    padding_mask,
    sliding_window_mask,
    strided_block_sparse_mask,
)
from asr.attention.bpt import bpt_attention, bpt_feed_forward
from asr.attention.mha import Kernel, MultiHeadAttention, PosKind, flex_available
from asr.attention.paged_cache import PagedCacheConfig, PagedKVCache, paged_self_attention
from asr.attention.positions import RelPositionalEncoding, RotaryEmbedding, rel_shift, sinusoid
from asr.attention.sparse import LongGenConfig, sparse_self_attention
from asr.attention.star import attention_with_lse, global_attention, merge_partial_attention
from asr.attention.xpos import XPosEmbedding, blockwise_causal_mask

__all__ = [
    "BeamKVCache",
    "KVCache",
    "Kernel",
    "LongGenConfig",
    "MultiHeadAttention",
    "PagedCacheConfig",
    "PagedKVCache",
    "PosKind",
    "RelPositionalEncoding",
    "RotaryEmbedding",
    "XPosEmbedding",
    "attention_with_lse",
    "block_causal_mask",
    "bpt_attention",
    "bpt_feed_forward",
    "block_causal_mask_range",
    "causal_mask",
    "combine_with_padding",
    "contextual_block_mask_range",
    "blockwise_causal_mask",
    "flex_available",
    "global_attention",
    "longgen_allowed",
    "longgen_kept_keys",
    "longgen_mask",
    "longgen_mask_range",
    "merge_partial_attention",
    "pad_flat",
    "pad_rows",
    "padding_mask",
    "paged_self_attention",
    "rel_shift",
    "sinusoid",
    "sliding_window_mask",
    "sparse_self_attention",
    "strided_block_sparse_mask",
]
