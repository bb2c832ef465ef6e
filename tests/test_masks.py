"""Mask functions against their definitions written as plain loops, plus the docstring examples."""

import doctest

import pytest
import torch

from asr.attention import masks
from asr.attention.masks import (
    block_causal_mask,
    block_causal_mask_range,
    causal_mask,
    combine_with_padding,
    padding_mask,
    sliding_window_mask,
    strided_block_sparse_mask,
)


def _loop(n_q, n_k, rule):
    return torch.tensor([[bool(rule(i, j)) for j in range(n_k)] for i in range(n_q)], dtype=torch.bool).view(n_q, n_k)


def test_docstring_examples():
    failures, tried = doctest.testmod(masks, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0


def test_padding_mask():
    lens = torch.tensor([0, 2, 5])
    m = padding_mask(lens, 5)
    assert torch.equal(m, _loop(3, 5, lambda b, t: t < lens[b]))
    assert padding_mask(lens).shape == (3, 5)


def test_causal_mask():
    assert torch.equal(causal_mask(7), _loop(7, 7, lambda i, j: j <= i))


@pytest.mark.parametrize("n", [1, 7, 16])
@pytest.mark.parametrize("block_size", [None, 1, 3, 4])
@pytest.mark.parametrize("left_blocks", [None, 0, 1, 2])
def test_block_causal_mask(n, block_size, left_blocks):
    def rule(i, j):
        if block_size is None:
            return True
        bi, bj = i // block_size, j // block_size
        return bj <= bi and (left_blocks is None or bi - bj <= left_blocks)

    assert torch.equal(block_causal_mask(n, block_size, left_blocks), _loop(n, n, rule))


@pytest.mark.parametrize("q_start,q_len,k_start,k_len", [(0, 5, 0, 5), (6, 3, 2, 7), (9, 1, 0, 10), (4, 4, 4, 0)])
def test_block_causal_mask_range_is_a_window_of_the_square_mask(q_start, q_len, k_start, k_len):
    full = block_causal_mask(20, 3, 1)
    part = block_causal_mask_range(q_start, q_len, k_start, k_len, 3, 1)
    assert torch.equal(part, full[q_start : q_start + q_len, k_start : k_start + k_len])


@pytest.mark.parametrize("window,sinks", [(1, 0), (3, 0), (3, 2), (20, 1)])
def test_sliding_window_mask(window, sinks):
    expected = _loop(10, 10, lambda i, j: j <= i and (i - j < window or j < sinks))
    assert torch.equal(sliding_window_mask(10, window, sinks), expected)


@pytest.mark.parametrize("block_size,stride", [(1, 1), (1, 3), (2, 2), (3, 4)])
def test_strided_block_sparse_mask(block_size, stride):
    def rule(i, j):
        bi, bj = i // block_size, j // block_size
        return bj <= bi and (bi - bj) % stride == 0

    assert torch.equal(strided_block_sparse_mask(13, block_size, stride), _loop(13, 13, rule))


def test_combine_with_padding_never_leaves_an_empty_row():
    lens = torch.tensor([5, 2])
    valid = padding_mask(lens, 5)
    m = combine_with_padding(block_causal_mask(5, 1, 0), valid, valid)
    assert m.shape == (2, 1, 5, 5)
    assert m.any(-1).all()
    # valid queries never see padded keys
    assert not (m[1, 0, :2, 2:]).any()
    assert torch.equal(m[0, 0], block_causal_mask(5, 1, 0))


def test_bad_arguments():
    with pytest.raises(ValueError):
        block_causal_mask(4, 0, None)
    with pytest.raises(ValueError):
        block_causal_mask(4, 2, -1)
    with pytest.raises(ValueError):
        sliding_window_mask(4, 0)


def test_pad_rows_equals_pad_sequence():
    from torch.nn.utils.rnn import pad_sequence

    from asr.attention import pad_rows

    g = torch.Generator().manual_seed(0)
    for lens in ([3, 0, 5, 1], [4, 4, 4], [0, 2], [7]):
        rows = [torch.randn(n, 3, 2, generator=g, dtype=torch.float64) for n in lens]
        assert torch.equal(pad_rows(rows), pad_sequence(rows, batch_first=True))
