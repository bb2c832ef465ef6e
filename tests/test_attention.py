"""MultiHeadAttention against a float64 reference written with plain loops and einsum."""

import math

import pytest
import torch

from asr.attention import (
    KVCache,
    MultiHeadAttention,
    block_causal_mask,
    causal_mask,
    combine_with_padding,
    padding_mask,
    rel_shift,
    sinusoid,
    sliding_window_mask,
)

D, H = 16, 4
DH = D // H


# ----------------------------------------------------------------------------- reference
def _sinusoid_ref(d: int, dim: int) -> torch.Tensor:
    out = torch.zeros(dim, dtype=torch.float64)
    for m in range(dim // 2):
        w = 10000.0 ** (-2 * m / dim)
        out[2 * m], out[2 * m + 1] = math.sin(d * w), math.cos(d * w)
    return out


def _rotate_ref(x: torch.Tensor, pos: int) -> torch.Tensor:
    """Rotate one head vector (DH,) pairwise: (x[m], x[m + half]) by angle pos * base^(-m/half)."""
    half = x.shape[-1] // 2
    out = x.clone()
    for m in range(half):
        a = pos * 10000.0 ** (-m / half)
        out[m] = x[m] * math.cos(a) - x[m + half] * math.sin(a)
        out[m + half] = x[m] * math.sin(a) + x[m + half] * math.cos(a)
    return out


def reference(mha: MultiHeadAttention, x, memory=None, mask=None, q_start=0, k_start=None):
    """Plain float64 attention: x (B, T, D), memory (B, S, D) or None, mask (B|1, 1, T, S) or (T, S) bool."""
    p = {k: v.detach().double() for k, v in mha.state_dict().items()}
    x = x.double()
    kv_in = x if memory is None else memory.double()
    k_start = q_start if k_start is None else k_start
    lin = lambda name, t: t @ p[f"{name}.weight"].T + p[f"{name}.bias"]  # noqa: E731
    q = lin("q_proj", x).unflatten(-1, (H, DH))  # (B, T, H, DH)
    k = lin("k_proj", kv_in).unflatten(-1, (H, DH))
    v = lin("v_proj", kv_in).unflatten(-1, (H, DH))
    b, t, s = x.shape[0], x.shape[1], kv_in.shape[1]
    scores = torch.zeros(b, H, t, s, dtype=torch.float64)
    for bi in range(b):
        for h in range(H):
            for i in range(t):
                for j in range(s):
                    qi, kj = q[bi, i, h], k[bi, j, h]
                    if mha.pos == "rotary":
                        qi, kj = _rotate_ref(qi, q_start + i), _rotate_ref(kj, k_start + j)
                    if mha.pos == "rel":
                        pe = p["rel_pos.linear_pos.weight"] @ _sinusoid_ref((q_start + i) - (k_start + j), D)
                        pe = pe.view(H, DH)[h]
                        sc = (qi + p["pos_bias_u"][h]) @ kj + (qi + p["pos_bias_v"][h]) @ pe
                    else:
                        sc = qi @ kj
                    scores[bi, h, i, j] = sc / math.sqrt(DH)
    if mask is not None:
        m = mask if mask.dim() == 4 else mask[None, None]
        scores = scores.masked_fill(~m, float("-inf"))
    out = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).flatten(-2)
    return lin("out_proj", out)


def _mha(pos, **kw):
    torch.manual_seed(0)
    return MultiHeadAttention(D, H, pos=pos, **kw).eval()


# ----------------------------------------------------------------------------- tests
def test_sinusoid_and_rel_shift():
    d = torch.tensor([-3, 0, 5])
    ref = torch.stack([_sinusoid_ref(int(v), 8) for v in d]).float()
    assert torch.allclose(sinusoid(d, 8), ref, atol=1e-6)
    tq, tk = 3, 4
    qs, ks = 7, 5
    dmax = qs + tq - 1 - ks
    dist_scores = torch.tensor([[float(dmax - r) + 100 * i for r in range(tq + tk - 1)] for i in range(tq)])
    shifted = rel_shift(dist_scores, tk)
    expected = torch.tensor([[float((qs + i) - (ks + j)) + 100 * i for j in range(tk)] for i in range(tq)])
    assert torch.equal(shifted, expected)


MASKS = {
    "none": lambda t: None,
    "causal": causal_mask,
    "block": lambda t: block_causal_mask(t, 2, 1),
    "window": lambda t: sliding_window_mask(t, 2, 1),
}


@pytest.mark.parametrize("pos", ["none", "rel", "rotary"])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_self_attention_matches_reference(pos, mask_name):
    mha = _mha(pos)
    x = torch.randn(2, 6, D)
    mask = MASKS[mask_name](6)
    y = mha(x, mask=mask, start=3)
    ref = reference(mha, x, mask=mask, q_start=3)
    assert (y.double() - ref).abs().max() < 1e-5
    # the module in float64 agrees to rounding
    y64 = mha.double()(x.double(), mask=mask, start=3)
    assert (y64 - ref).abs().max() < 1e-10


def test_cross_attention_with_padding_matches_reference():
    mha = _mha("none")
    x, mem = torch.randn(2, 3, D), torch.randn(2, 5, D)
    mask = combine_with_padding(None, None, padding_mask(torch.tensor([5, 2]), 5))
    y = mha(x, mem, mask=mask)
    assert (y.double() - reference(mha, x, mem, mask=mask)).abs().max() < 1e-5
    kv = mha.project_memory(mem)
    assert torch.allclose(mha(x, memory_kv=kv, mask=mask), y)
    with pytest.raises(ValueError):
        _mha("rel")(x, mem)


@pytest.mark.parametrize("pos", ["none", "rel", "rotary"])
@pytest.mark.parametrize("block_size,left_blocks", [(None, None), (1, 0), (2, 1), (3, None)])
def test_blockwise_with_padding_matches_reference(pos, block_size, left_blocks):
    mha = _mha(pos)
    x = torch.randn(2, 9, D)
    lens = torch.tensor([9, 5])
    valid = padding_mask(lens, 9)
    full_mask = combine_with_padding(block_causal_mask(9, block_size, left_blocks), valid, valid)
    ref = reference(mha, x, mask=full_mask)
    for chunk in (1, 4, 1024):  # memory-bounded slicing gives the same numbers
        y = mha.forward_blockwise(x, lens, block_size=block_size, left_blocks=left_blocks, query_chunk=chunk)
        for b in range(2):
            assert (y[b, : lens[b]].double() - ref[b, : lens[b]]).abs().max() < 1e-5


@pytest.mark.parametrize("pos", ["none", "rel", "rotary"])
def test_incremental_cache_equals_full_causal(pos):
    mha = _mha(pos)
    x = torch.randn(2, 7, D)
    full = mha(x, mask=causal_mask(7))
    cache = KVCache.empty(2, H, DH, max_len=None)
    outs = []
    for t in range(7):
        y, cache = mha.forward_cached(x[:, t : t + 1], cache)
        outs.append(y)
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5
    assert cache.length == 7 and cache.end == 7


@pytest.mark.parametrize("pos", ["none", "rel", "rotary"])
def test_bounded_cache_equals_sliding_window(pos):
    mha = _mha(pos)
    x = torch.randn(1, 9, D)
    max_len = 3  # keeps 3 past keys, plus the query's own: a window of 4
    full = mha(x, mask=sliding_window_mask(9, max_len + 1))
    cache = KVCache.empty(1, H, DH, max_len=max_len)
    outs = []
    for t in range(9):
        y, cache = mha.forward_cached(x[:, t : t + 1], cache)
        outs.append(y)
        assert cache.length == min(t + 1, max_len) and cache.end == t + 1
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5


@pytest.mark.parametrize("pos", ["rel", "rotary"])
def test_block_streaming_with_cache_equals_blockwise(pos):
    mha = _mha(pos)
    bs, left, t = 2, 1, 10
    x = torch.randn(1, t, D)
    full = mha.forward_blockwise(x, None, block_size=bs, left_blocks=left)
    cache = KVCache.empty(1, H, DH, max_len=bs * left)
    outs = []
    for b0 in range(0, t, bs):
        y, cache = mha.forward_cached(x[:, b0 : b0 + bs], cache)  # the cache holds exactly the left context
        outs.append(y)
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5


def test_kv_cache_select_and_trim():
    c = KVCache.empty(3, H, DH, max_len=2)
    k = torch.arange(3.0)[:, None, None, None].expand(3, H, 4, DH)
    c = c.append(k, k)
    assert c.length == 2 and c.start == 2 and c.end == 4
    s = c.select(torch.tensor([2, 2, 0]))
    assert torch.equal(s.k[:, 0, 0, 0], torch.tensor([2.0, 2.0, 0.0]))


@pytest.mark.parametrize("pos", ["none", "rel", "rotary"])
@pytest.mark.parametrize("block_size,left_blocks", [(None, None), (2, 1), (3, None)])
def test_flex_path_equals_sdpa_on_cpu(pos, block_size, left_blocks):
    pytest.importorskip("torch.nn.attention.flex_attention")
    mha = _mha(pos)
    x = torch.randn(2, 10, D)
    lens = torch.tensor([10, 6])
    kw = dict(block_size=block_size, left_blocks=left_blocks)
    with torch.no_grad():  # flex_attention has no backward on CPU
        y_sdpa = mha.forward_blockwise(x, lens, kernel="sdpa", **kw)
        y_flex = mha.forward_blockwise(x, lens, kernel="flex", **kw)
    for b in range(2):
        assert (y_sdpa[b, : lens[b]] - y_flex[b, : lens[b]]).abs().max() < 1e-5
