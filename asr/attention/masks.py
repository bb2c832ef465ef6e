"""Attention masks as pure, vectorised functions.

Polarity everywhere: ``True`` means "may attend" (the convention of
``torch.nn.functional.scaled_dot_product_attention``). Masks are ``(T_q, T_k)`` boolean tensors
(or ``(B, T)`` for padding) and broadcast against ``(B, H, T_q, T_k)`` scores. Block sizes and
left contexts are ``int | None``; ``None`` means full context / unlimited, never a magic integer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = [
    "padding_mask",
    "pad_flat",
    "pad_rows",
    "causal_mask",
    "block_causal_mask",
    "block_causal_mask_range",
    "contextual_block_mask_range",
    "sliding_window_mask",
    "strided_block_sparse_mask",
    "combine_with_padding",
    "longgen_allowed",
    "longgen_mask_range",
    "longgen_mask",
    "longgen_kept_keys",
]


def padding_mask(lens: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Valid-position mask from lengths.

    Args:
        lens: (B,) integer lengths.
        max_len: width of the mask; defaults to ``lens.max()``.

    Returns:
        (B, max_len) bool, ``True`` at positions ``< lens[b]``.

    Example::

        >>> padding_mask(torch.tensor([1, 3]), 4).int()
        tensor([[1, 0, 0, 0],
                [1, 1, 1, 0]], dtype=torch.int32)
    """
    if max_len is None:
        max_len = int(lens.max()) if lens.numel() else 0
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]



def pad_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """(n_i, ...) tensors of one dtype and device -> (B, max n_i, ...), zero-padded at the end:
    ``pad_sequence(rows, batch_first=True)`` in one ``cat`` and one ``index_copy_`` (pad_sequence
    copies row by row, one kernel per row on a GPU: a server pass pads a row per stream)."""
    return pad_flat(torch.cat(list(rows)), [r.shape[0] for r in rows])


def pad_flat(flat: torch.Tensor, lens: Sequence[int]) -> torch.Tensor:
    """:func:`pad_rows` of the rows that ``flat`` (sum n_i, ...) holds one after another (n_i = ``lens``)."""
    n = np.asarray(lens, dtype=np.int64)
    width = int(n.max())
    if (n == width).all():
        return flat.view(len(n), width, *flat.shape[1:])
    # row i's frame k goes to i * width + k
    index = np.repeat(np.arange(len(n)) * width - (np.cumsum(n) - n), n) + np.arange(flat.shape[0])
    out = flat.new_zeros(len(n) * width, *flat.shape[1:])
    out.index_copy_(0, torch.from_numpy(index).to(flat.device), flat)
    return out.view(len(n), width, *flat.shape[1:])


def causal_mask(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Frame ``i`` attends frames ``j <= i``.

    Returns:
        (n, n) bool, lower triangular.

    Example::

        >>> causal_mask(3).int()
        tensor([[1, 0, 0],
                [1, 1, 0],
                [1, 1, 1]], dtype=torch.int32)
    """
    idx = torch.arange(n, device=device)
    return idx[None, :] <= idx[:, None]


def block_causal_mask_range(
    q_start: int,
    q_len: int,
    k_start: int,
    k_len: int,
    block_size: int | None,
    left_blocks: int | None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Block-causal mask between absolute query positions and absolute key positions.

    Query ``i`` (absolute position ``q_start + i``) attends key ``j`` (absolute ``k_start + j``)
    iff ``block(key) <= block(query)`` and ``block(query) - block(key) <= left_blocks``, where
    ``block(p) = p // block_size``. ``block_size=None`` allows everything (full context);
    ``left_blocks=None`` means unlimited left context. This is the rectangular form used for a
    slice of queries (memory-bounded attention) or for queries against a streaming KV cache.

    Returns:
        (q_len, k_len) bool.

    Example (queries 4..5 against keys 0..5, blocks of 2, one block of left context)::

        >>> block_causal_mask_range(4, 2, 0, 6, 2, 1).int()
        tensor([[0, 0, 1, 1, 1, 1],
                [0, 0, 1, 1, 1, 1]], dtype=torch.int32)
    """
    if block_size is None:
        return torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    diff = _block_ids(q_start, q_len, block_size, device)[:, None] - _block_ids(k_start, k_len, block_size, device)
    return _within_left(diff, left_blocks)  # diff: (q_len, k_len) blocks back from the query


def _block_ids(start: int, n: int, block_size: int | None, device) -> torch.Tensor:
    """(n,) block index of positions ``start .. start + n - 1`` (all 0 for ``block_size=None``)."""
    if block_size is None:
        return torch.zeros(n, dtype=torch.long, device=device)
    if block_size < 1:
        raise ValueError(f"block_size must be a positive int or None, got {block_size}")
    return torch.div(torch.arange(start, start + n, device=device), block_size, rounding_mode="floor")


def _within_left(diff: torch.Tensor, left_blocks: int | None) -> torch.Tensor:
    """``0 <= diff <= left_blocks`` for blocks back from the query (no upper bound for None)."""
    allowed = diff >= 0
    if left_blocks is not None:
        if left_blocks < 0:
            raise ValueError(f"left_blocks must be >= 0 or None, got {left_blocks}")
        allowed = allowed & (diff <= left_blocks)
    return allowed


def contextual_block_mask_range(
    q_start: int,
    q_len: int,
    k_start: int,
    k_len: int,
    block_size: int | None,
    left_blocks: int | None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """:func:`block_causal_mask_range` with one context embedding per block (contextual block processing).

    Queries are the frames ``q_start .. q_start + q_len - 1`` followed by the context embeddings
    of the ``n`` blocks those frames touch (``block(q_start) .. block(q_start + q_len - 1)``);
    keys are the frames ``k_start .. k_start + k_len - 1`` followed by the same ``n`` context
    embeddings. A frame attends the frames :func:`block_causal_mask_range` allows plus its own
    block's context embedding; a context embedding attends the frames its block's frames may
    attend, plus itself (never another block's context embedding). ``block_size=None``: one block.

    Returns:
        (q_len + n, k_len + n) bool.

    Example (frames 2..3 against keys 0..3, blocks of 2, one block of left context; the last
    row and column are the context embedding of block 1)::

        >>> contextual_block_mask_range(2, 2, 0, 4, 2, 1).int()
        tensor([[1, 1, 1, 1, 1],
                [1, 1, 1, 1, 1],
                [1, 1, 1, 1, 1]], dtype=torch.int32)
        >>> contextual_block_mask_range(0, 4, 0, 4, 2, 0).int()
        tensor([[1, 1, 0, 0, 1, 0],
                [1, 1, 0, 0, 1, 0],
                [0, 0, 1, 1, 0, 1],
                [0, 0, 1, 1, 0, 1],
                [1, 1, 0, 0, 1, 0],
                [0, 0, 1, 1, 0, 1]], dtype=torch.int32)
    """
    if q_len < 1:
        raise ValueError(f"contextual_block_mask_range needs q_len >= 1, got {q_len}")
    qb, kb = _block_ids(q_start, q_len, block_size, device), _block_ids(k_start, k_len, block_size, device)
    ctx = torch.arange(int(qb[0]), int(qb[-1]) + 1, device=device)  # (n,) blocks of the context embeddings
    q_blocks = torch.cat([qb, ctx])
    to_frames = _within_left(q_blocks[:, None] - kb[None, :], left_blocks)  # (q_len + n, k_len)
    to_ctx = q_blocks[:, None] == ctx[None, :]  # (q_len + n, n) own block's context embedding
    return torch.cat([to_frames, to_ctx], dim=1)


def block_causal_mask(
    n: int,
    block_size: int | None,
    left_blocks: int | None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Square block-causal mask: full attention inside a block, causal across blocks.

    Frame ``i`` attends frame ``j`` iff ``block(j) <= block(i)`` and
    ``block(i) - block(j) <= left_blocks`` (``None`` = unlimited). ``block_size=None`` gives
    full context.

    Returns:
        (n, n) bool.

    Example (n=6, blocks of 2, one block of left context)::

        >>> block_causal_mask(6, 2, 1).int()
        tensor([[1, 1, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0],
                [1, 1, 1, 1, 0, 0],
                [1, 1, 1, 1, 0, 0],
                [0, 0, 1, 1, 1, 1],
                [0, 0, 1, 1, 1, 1]], dtype=torch.int32)
    """
    return block_causal_mask_range(0, n, 0, n, block_size, left_blocks, device)


def sliding_window_mask(
    n: int, window: int, sinks: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Causal sliding window with attention sinks (StreamingLLM style).

    Frame ``i`` attends ``j`` iff ``j <= i`` and (``i - j < window`` or ``j < sinks``).

    Returns:
        (n, n) bool.

    Example (window 2, one sink)::

        >>> sliding_window_mask(5, 2, 1).int()
        tensor([[1, 0, 0, 0, 0],
                [1, 1, 0, 0, 0],
                [1, 1, 1, 0, 0],
                [1, 0, 1, 1, 0],
                [1, 0, 0, 1, 1]], dtype=torch.int32)
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    idx = torch.arange(n, device=device)
    diff = idx[:, None] - idx[None, :]
    return (diff >= 0) & ((diff < window) | (idx[None, :] < sinks))


def strided_block_sparse_mask(
    n: int, block_size: int, stride: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Causal block-sparse pattern: the own block, plus every ``stride``-th earlier block.

    Frame ``i`` attends ``j`` iff ``block(j) <= block(i)`` and (``block(j) == block(i)`` or
    ``(block(i) - block(j)) % stride == 0``) — a "strided" long-range pattern (Child et al.,
    2019) at block granularity, so FlexAttention can skip whole tiles.

    Returns:
        (n, n) bool.

    Example (blocks of 1, stride 2)::

        >>> strided_block_sparse_mask(4, 1, 2).int()
        tensor([[1, 0, 0, 0],
                [0, 1, 0, 0],
                [1, 0, 1, 0],
                [0, 1, 0, 1]], dtype=torch.int32)
    """
    if block_size < 1 or stride < 1:
        raise ValueError(f"block_size and stride must be >= 1, got {block_size}, {stride}")
    blk = torch.div(torch.arange(n, device=device), block_size, rounding_mode="floor")
    diff = blk[:, None] - blk[None, :]
    return (diff >= 0) & (diff % stride == 0)


def longgen_allowed(
    qi: torch.Tensor,
    ki: torch.Tensor,
    window: int | None,
    sinks: int = 0,
    block_size: int | None = None,
    stride: int | None = None,
) -> torch.Tensor:
    """The LongGen sparse pattern, elementwise on broadcastable absolute positions.

    Query ``i`` may attend key ``j`` iff ``j <= i`` and any of: ``i - j < window`` (sliding
    window), ``j < sinks`` (attention sinks), ``(j // block_size) % stride == 0`` (strided key
    blocks: every ``stride``-th block of ``block_size`` tokens, counted from the start).
    ``window=None`` is plain causal attention (a "full" layer). The strided blocks are fixed
    absolute blocks, not blocks relative to the query, so a decoder may drop every other key for
    good (see :func:`longgen_kept_keys`). Written once as plain tensor arithmetic so that it
    serves both as a dense mask (:func:`longgen_mask_range`) and as a FlexAttention
    ``mask_mod`` (:mod:`asr.attention.sparse`).

    Args:
        qi, ki: integer position tensors (broadcast against each other).

    Returns:
        bool tensor of the broadcast shape, True = may attend.
    """
    causal = ki <= qi
    if window is None:
        return causal
    if window < 1 or sinks < 0:
        raise ValueError(f"window must be >= 1 and sinks >= 0, got {window}, {sinks}")
    keep = ((qi - ki) < window) | (ki < sinks)
    if stride is not None:
        if block_size is None or block_size < 1 or stride < 1:
            raise ValueError(f"strided blocks need block_size >= 1 and stride >= 1, got {block_size}, {stride}")
        keep = keep | ((ki // block_size) % stride == 0)
    return causal & keep


def longgen_mask_range(
    q_start: int,
    q_len: int,
    k_start: int,
    k_len: int,
    window: int | None,
    sinks: int = 0,
    block_size: int | None = None,
    stride: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """:func:`longgen_allowed` between absolute query positions ``q_start ..`` and keys ``k_start ..``.

    Returns:
        (q_len, k_len) bool.

    Example (window 2, one sink, blocks of 2 with stride 2: block 0 and block 2 are global)::

        >>> longgen_mask_range(0, 7, 0, 7, 2, 1, 2, 2).int()
        tensor([[1, 0, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0, 0],
                [1, 1, 1, 0, 0, 0, 0],
                [1, 1, 1, 1, 0, 0, 0],
                [1, 1, 0, 1, 1, 0, 0],
                [1, 1, 0, 0, 1, 1, 0],
                [1, 1, 0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    qi = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    ki = torch.arange(k_start, k_start + k_len, device=device)[None, :]
    return longgen_allowed(qi, ki, window, sinks, block_size, stride)


def longgen_mask(
    n: int,
    window: int | None,
    sinks: int = 0,
    block_size: int | None = None,
    stride: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Square (n, n) :func:`longgen_mask_range` (positions ``0 .. n - 1``)."""
    return longgen_mask_range(0, n, 0, n, window, sinks, block_size, stride, device)


def longgen_kept_keys(
    length: int,
    window: int | None,
    sinks: int = 0,
    block_size: int | None = None,
    stride: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Which of the keys ``0 .. length - 1`` a query at position ``>= length - 1`` may still attend.

    Everything else can leave the KV cache for good once ``length`` tokens were seen: this is the
    KV memory of a LongGen layer (``sinks + window + length / stride`` keys instead of ``length``).

    Returns:
        (length,) bool.

    Example::

        >>> longgen_kept_keys(7, 2, 1, 2, 2).int()
        tensor([1, 1, 0, 0, 1, 1, 1], dtype=torch.int32)
    """
    return longgen_mask_range(length - 1, 1, 0, length, window, sinks, block_size, stride, device)[0]


def combine_with_padding(
    mask: torch.Tensor | None, q_valid: torch.Tensor | None, k_valid: torch.Tensor | None
) -> torch.Tensor | None:
    """Combine a structural mask with query/key padding into a (B, 1, T_q, T_k) mask.

    Padded keys are never attended. Padded *queries* attend every key the structural mask
    allows plus all keys, so that no row is empty (an empty row makes softmax NaN, and
    ``0 * NaN`` would leak into valid rows through later layers); their outputs are garbage by
    design and must be ignored or zeroed by the caller.

    Args:
        mask: (T_q, T_k) bool or None (everything allowed).
        q_valid: (B, T_q) bool or None (all valid).
        k_valid: (B, T_k) bool or None (all valid).

    Returns:
        (B, 1, T_q, T_k) bool, (1, 1, T_q, T_k) when no padding is given, or None when all
        inputs are None.

    Example::

        >>> combine_with_padding(causal_mask(2), torch.tensor([[1, 0]]).bool(),
        ...                      torch.tensor([[1, 0]]).bool()).int()
        tensor([[[[1, 0],
                  [1, 1]]]], dtype=torch.int32)
    """
    out = None if mask is None else mask[None, None]
    if k_valid is not None:
        kv = k_valid[:, None, None, :]
        out = kv if out is None else out & kv
    if q_valid is not None and out is not None:
        out = out | ~q_valid[:, None, :, None]
    return out
