"""The attention core: masks, positions, multi-head attention and the KV cache."""

from asr.attention.kv_cache import KVCache
from asr.attention.masks import (
    block_causal_mask,
    block_causal_mask_range,
    causal_mask,
    combine_with_padding,
    padding_mask,
    sliding_window_mask,
    strided_block_sparse_mask,
)
from asr.attention.mha import Kernel, MultiHeadAttention, PosKind, flex_available
from asr.attention.positions import RelPositionalEncoding, RotaryEmbedding, rel_shift, sinusoid

__all__ = [
    "KVCache",
    "Kernel",
    "MultiHeadAttention",
    "PosKind",
    "RelPositionalEncoding",
    "RotaryEmbedding",
    "block_causal_mask",
    "block_causal_mask_range",
    "causal_mask",
    "combine_with_padding",
    "flex_available",
    "padding_mask",
    "rel_shift",
    "sinusoid",
    "sliding_window_mask",
    "strided_block_sparse_mask",
]
