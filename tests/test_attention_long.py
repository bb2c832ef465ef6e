"""The long-context attention modules against float64 references: XPos positions, LongGen masks
(SDPA and FlexAttention), the paged KV cache with PagedEviction, and Star Attention's merge."""

import cmath
import math

import pytest
import torch

from asr.attention import MultiHeadAttention, causal_mask
from asr.attention.masks import longgen_kept_keys, longgen_mask, longgen_mask_range
from asr.attention.paged_cache import PagedCacheConfig, PagedKVCache, paged_self_attention
from asr.attention.sparse import LongGenConfig, sparse_self_attention
from asr.attention.star import attention_with_lse, global_attention, merge_partial_attention
from asr.attention.xpos import XPosEmbedding, blockwise_causal_mask

D, H = 16, 4
DH = D // H
SCALE_BASE = 8.0


def _loop(n_q, n_k, rule):
    return torch.tensor([[bool(rule(i, j)) for j in range(n_k)] for i in range(n_q)], dtype=torch.bool).view(n_q, n_k)


def _xpos_score(q: torch.Tensor, k: torch.Tensor, dist: int) -> float:
    """XPos score of one query/key head pair (DH,) at distance n - j, from its definition: pair m
    is the complex number x[m] + i x[m + half]; score = sum_m zeta_m^(dist/B) Re(q_m conj(k_m) e^(i dist theta_m))."""
    half = DH // 2
    total = 0.0
    for m in range(half):
        theta = 10000.0 ** (-m / half)
        zeta = (m / half + 0.4) / 1.4
        qm, km = complex(q[m], q[m + half]), complex(k[m], k[m + half])
        total += zeta ** (dist / SCALE_BASE) * (qm * km.conjugate() * cmath.exp(1j * dist * theta)).real
    return total


def reference(mha: MultiHeadAttention, x, mask=None, q_start=0, k_start=None, kv_in=None):
    """Plain float64 self-attention for pos none/rotary/xpos; x (B, T, D), kv_in (B, S, D) (default x)."""
    from test_attention import _rotate_ref  # the rotary reference of the core tests

    p = {k: v.detach().double() for k, v in mha.state_dict().items()}
    x = x.double()
    kv_in = x if kv_in is None else kv_in.double()
    k_start = q_start if k_start is None else k_start
    lin = lambda name, t: t @ p[f"{name}.weight"].T + p[f"{name}.bias"]  # noqa: E731
    q, k, v = (lin(n, t).unflatten(-1, (H, DH)) for n, t in (("q_proj", x), ("k_proj", kv_in), ("v_proj", kv_in)))
    b, t, s = x.shape[0], x.shape[1], kv_in.shape[1]
    scores = torch.zeros(b, H, t, s, dtype=torch.float64)
    for bi in range(b):
        for h in range(H):
            for i in range(t):
                for j in range(s):
                    qi, kj = q[bi, i, h], k[bi, j, h]
                    if mha.pos == "xpos":
                        sc = _xpos_score(qi, kj, (q_start + i) - (k_start + j))
                    elif mha.pos == "rotary":
                        sc = float(_rotate_ref(qi, q_start + i) @ _rotate_ref(kj, k_start + j))
                    else:
                        sc = float(qi @ kj)
                    scores[bi, h, i, j] = sc / math.sqrt(DH)
    if mask is not None:
        scores = scores.masked_fill(~(mask if mask.dim() == 4 else mask[None, None]), float("-inf"))
    out = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).flatten(-2)
    return lin("out_proj", out)


def _mha(pos="xpos"):
    torch.manual_seed(0)
    return MultiHeadAttention(D, H, pos=pos, xpos_scale_base=SCALE_BASE).eval()


# ----------------------------------------------------------------------------- XPos
@pytest.mark.parametrize("start", [0, 37])
def test_xpos_attention_matches_reference(start):
    mha = _mha()
    x = torch.randn(2, 7, D)
    mask = causal_mask(7)
    with torch.no_grad():
        y = mha(x, mask=mask, start=start)
    assert (y.double() - reference(mha, x, mask, q_start=start)).abs().max() < 1e-5


def test_xpos_scores_depend_on_distance_only_and_decay():
    xp = XPosEmbedding(DH, scale_base=SCALE_BASE)
    q, k = torch.randn(1, 1, 1, DH, dtype=torch.float64), torch.randn(1, 1, 1, DH, dtype=torch.float64)
    a = (xp(q, 20, key=False) * xp(k, 15, key=True)).sum()
    b = (xp(q, 105, key=False) * xp(k, 100, key=True)).sum()
    assert torch.allclose(a, b, atol=1e-9)
    z = xp.zeta()
    assert z[0] == pytest.approx(0.4 / 1.4) and bool((z[1:] > z[:-1]).all()) and float(z[-1]) < 1
    # the same vector pair at growing distance: the score's envelope shrinks (all pair scales < 1)
    ones = torch.ones(1, 1, 1, DH, dtype=torch.float64)
    env = [float(xp(ones, d, key=False).pow(2).sum().sqrt()) for d in (0, 10, 40)]
    assert env[0] > env[1] > env[2]


def test_xpos_per_row_start_equals_int_start():
    xp = XPosEmbedding(DH, scale_base=SCALE_BASE)
    x = torch.randn(3, H, 5, DH)
    starts = torch.tensor([0, 7, 300])
    for key in (False, True):
        rows = torch.cat([xp(x[i : i + 1], int(s), key=key) for i, s in enumerate(starts)])
        assert torch.equal(xp(x, starts, key=key), rows)


def test_xpos_rebase_keys_is_exact():
    xp = XPosEmbedding(DH, scale_base=SCALE_BASE)
    k = torch.randn(2, H, 5, DH, dtype=torch.float64)
    a = xp(k, 30, key=True, ref=7)
    assert torch.allclose(xp.rebase_keys(a, 7, 25), xp(k, 30, key=True, ref=25), rtol=1e-12)
    rows = xp.rebase_keys(a, 7, torch.tensor([0, 40]))
    assert torch.allclose(rows[1], xp(k[1:], 30, key=True, ref=40)[0], rtol=1e-12)
    q = torch.randn(1, H, 3, DH, dtype=torch.float64)
    s0 = xp(q, 33, key=False) @ xp(k[:1], 30, key=True).transpose(-1, -2)
    s1 = xp(q, 33, key=False, ref=31) @ xp(k[:1], 30, key=True, ref=31).transpose(-1, -2)
    assert torch.allclose(s0, s1, rtol=1e-10)


def test_paged_xpos_rebases_and_stays_exact():
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, pos="xpos", xpos_scale_base=1.0).eval()  # reference moves every 16
    x = torch.randn(1, 40, D)
    with torch.no_grad():
        y, cache, _ = _stream(mha, x, PagedCacheConfig(page_size=4), 3)
        full = mha(x, mask=causal_mask(40))
    assert cache.ref == 32 and (y - full).abs().max() < 1e-4


def test_xpos_cache_equals_full_causal():
    from asr.attention import KVCache

    mha = _mha()
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        full = mha(x, mask=causal_mask(9))
        cache, outs = KVCache.empty(2, H, DH, None), []
        for i in range(9):
            y, cache = mha.forward_cached(x[:, i : i + 1], cache)
            outs.append(y)
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5


def test_blockwise_causal_mask_definition():
    for n, b in [(9, 2), (10, 3), (5, None)]:
        want = _loop(n, n, lambda i, j: j <= i and (b is None or i // b - j // b <= 1))
        assert torch.equal(blockwise_causal_mask(n, b), want)


# ----------------------------------------------------------------------------- LongGen masks
LONGGEN = [(3, 0, None, None), (2, 1, 2, 2), (4, 2, 3, 3), (None, 0, None, None)]


@pytest.mark.parametrize("window,sinks,block,stride", LONGGEN)
def test_longgen_mask_definition(window, sinks, block, stride):
    def rule(i, j):
        if j > i:
            return False
        if window is None:
            return True
        return i - j < window or j < sinks or (stride is not None and (j // block) % stride == 0)

    assert torch.equal(longgen_mask(13, window, sinks, block, stride), _loop(13, 13, rule))
    assert torch.equal(longgen_mask_range(5, 4, 2, 9, window, sinks, block, stride),
                       longgen_mask(13, window, sinks, block, stride)[5:9, 2:11])
    # kept keys = the keys some later query may still attend
    for length in (1, 6, 13):
        later = longgen_mask_range(length - 1, 20, 0, length, window, sinks, block, stride).any(0)
        assert torch.equal(longgen_kept_keys(length, window, sinks, block, stride), later)


CFG = LongGenConfig(window=5, sinks=2, block_size=4, stride=3)


def test_longgen_hybrid_layers():
    assert [CFG.is_full(i) for i in range(6)] == [False, True, False, False, True, False]
    assert CFG.kv_tokens(1, 100) == 100  # full layer keeps everything
    kept = CFG.kv_tokens(0, 100)
    assert kept == int(longgen_kept_keys(100, 5, 2, 4, 3).sum()) and kept < 50


@pytest.mark.parametrize("pos", ["none", "rotary", "xpos"])
def test_longgen_sdpa_matches_reference(pos):
    mha = _mha(pos)
    x = torch.randn(2, 14, D)
    with torch.no_grad():
        y = sparse_self_attention(mha, x, CFG, 0, kernel="sdpa")
    assert (y.double() - reference(mha, x, CFG.mask(0, 14))).abs().max() < 1e-5


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("query_chunk", [1, 4, 7])
def test_longgen_chunked_gather_equals_dense(layer, query_chunk):
    mha = _mha("xpos")
    x = torch.randn(2, 30, D)
    with torch.no_grad():
        dense = sparse_self_attention(mha, x, CFG, layer)
        chunked = sparse_self_attention(mha, x, CFG, layer, query_chunk=query_chunk)
    assert (dense - chunked).abs().max() < 1e-5


def _flex_case(device, pos):
    pytest.importorskip("torch.nn.attention.flex_attention")
    mha = _mha(pos).to(device)
    x = torch.randn(2, 300, D, device=device)  # several 128-tiles: some are skipped entirely
    with torch.no_grad():
        flex = sparse_self_attention(mha, x, CFG, 0, kernel="flex")
        sdpa = sparse_self_attention(mha, x, CFG, 0, kernel="sdpa")
    assert (flex - sdpa).abs().max() < 1e-4
    small = x[:, :12].cpu()
    with torch.no_grad():
        f_small = sparse_self_attention(mha, x[:, :12], CFG, 0, kernel="flex").cpu()
    assert (f_small.double() - reference(mha.cpu(), small, CFG.mask(0, 12))).abs().max() < 1e-4


@pytest.mark.parametrize("pos", ["none", "xpos"])
def test_longgen_flex_matches_sdpa_on_cpu(pos):
    _flex_case("cpu", pos)  # eager FlexAttention: the same mask_mod as on the GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled FlexAttention needs CUDA")
def test_longgen_flex_matches_sdpa_on_cuda():
    _flex_case("cuda", "xpos")


# ----------------------------------------------------------------------------- paged cache
def _stream(mha, x, cfg, chunk=1):
    """Feed x (B, T, D) in chunks through a paged cache; also return the key positions each query saw."""
    cache, outs, seen = PagedKVCache.empty(x.shape[0], H, DH, cfg), [], []
    for i in range(0, x.shape[1], chunk):
        xs = x[:, i : i + chunk]
        for j in range(xs.shape[1]):
            seen.append(set(cache.pos.tolist()) | set(range(i, i + j + 1)))
        y, cache = paged_self_attention(mha, xs, cache)
        outs.append(y)
    return torch.cat(outs, 1), cache, seen


@pytest.mark.parametrize("chunk", [1, 3])
def test_paged_cache_unbounded_equals_full_causal(chunk):
    mha = _mha()
    x = torch.randn(2, 11, D)
    with torch.no_grad():
        y, cache, _ = _stream(mha, x, PagedCacheConfig(page_size=4), chunk)
        full = mha(x, mask=causal_mask(11))
    assert (y - full).abs().max() < 1e-5 and cache.evicted == 0 and cache.length == 11


@pytest.mark.parametrize("pos,chunk", [("xpos", 1), ("rotary", 2), ("none", 1)])
def test_paged_eviction_equals_masked_reference(pos, chunk):
    """With evictions, each query equals full attention restricted to the keys still cached."""
    mha = _mha(pos)
    cfg = PagedCacheConfig(page_size=2, budget_pages=3, sink_pages=1, recent_pages=1)
    x = torch.randn(1, 16, D)
    with torch.no_grad():
        y, cache, seen = _stream(mha, x, cfg, chunk)
    mask = _loop(16, 16, lambda i, j: j in seen[i])
    assert cache.evicted > 0 and not bool(mask.all())
    assert (y.double() - reference(mha, x, mask)).abs().max() < 1e-5


def test_paged_cache_stays_bounded_and_keeps_sinks_and_recent():
    mha = _mha()
    cfg = PagedCacheConfig(page_size=4, budget_pages=4, sink_pages=1, recent_pages=2)
    cache = PagedKVCache.empty(3, H, DH, cfg)
    sizes = []
    with torch.no_grad():
        for i in range(0, 200, 5):
            _, cache = paged_self_attention(mha, torch.randn(3, 5, D), cache)
            sizes.append(cache.length)
    assert max(sizes) <= cfg.max_tokens == 19
    pos = cache.pos.tolist()
    assert pos[:4] == [0, 1, 2, 3]  # the sink page
    assert pos[-(8 + cache.length % 4):] == list(range(200 - 8 - cache.length % 4, 200))  # recent pages + tail
    assert cache.evicted == (200 - cache.length) // 4
    sel = cache.select(torch.tensor([2, 0]))
    assert torch.equal(sel.k[0], cache.k[2]) and torch.equal(sel.pos, cache.pos)


def test_paged_eviction_drops_the_least_important_page():
    cfg = PagedCacheConfig(page_size=2, budget_pages=3, sink_pages=1, recent_pages=1)
    cache = PagedKVCache.empty(1, 1, 2, cfg)
    k = torch.ones(1, 1, 8, 2)
    cache = cache.append(k, k, torch.tensor([1.0, 1, 5, 5, 0.1, 0.2, 3, 3]))  # pages: sink, 5, 0.15, recent
    assert cache.pos.tolist() == [0, 1, 2, 3, 6, 7] and cache.evicted == 1


# ----------------------------------------------------------------------------- Star Attention
def _exact(q, k, v, mask=None):
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize("splits", [[10], [3, 3, 4], [1, 6, 2, 1]])
def test_star_merge_equals_exact_attention_float64(splits):
    torch.manual_seed(1)
    q = torch.randn(2, H, 5, DH, dtype=torch.float64)
    k, v = torch.randn(2, H, 10, DH, dtype=torch.float64), torch.randn(2, H, 10, DH, dtype=torch.float64)
    mask = torch.rand(2, 1, 5, 10) > 0.3
    mask[..., 0] = True  # every row keeps one key overall; single blocks may be empty
    outs, lses, j = [], [], 0
    for n in splits:
        o, lse = attention_with_lse(q, k[..., j : j + n, :], v[..., j : j + n, :], mask[..., j : j + n])
        outs.append(o)
        lses.append(lse)
        j += n
    assert (merge_partial_attention(outs, lses) - _exact(q, k, v, mask)).abs().max() < 1e-12


@pytest.mark.parametrize("pos", ["rotary", "xpos"])
def test_star_global_attention_equals_one_softmax(pos):
    """Phase 2 over cached blocks + causal query block == attention over the concatenated KV."""
    mha = _mha(pos)
    x = torch.randn(1, 12, D)
    with torch.no_grad():
        _, k, v = mha.project_self(x[:, :9], 0)
        blocks = [(k[..., a:b, :], v[..., a:b, :]) for a, b in ((0, 3), (3, 6), (6, 9))]
        y, _ = global_attention(mha, x[:, 9:], 9, blocks)
        full = mha(x, mask=causal_mask(12))[:, 9:]
    assert (y - full).abs().max() < 1e-5
