"""The inference fast paths of the encoder step (issue 16): fused q/k/v products (float and int8),
the pre-scaled relative-position table and the strided rel_shift, dropout module calls skipped
where they are the identity, the one-op macaron half step. Each equals the plain path; training
still applies dropout."""

import copy
import pickle

import pytest
import torch
from torch import nn

import asr.encoder.layers as layers
from asr.attention import KVCache, MultiHeadAttention, RelPositionalEncoding, rel_shift
from asr.attention.fused import FusedLinears
from asr.encoder import ConformerEncoder, EncoderConfig
from asr.encoder.layers import CausalConvModule, ConformerLayer, FeedForward
from asr.models.compress import Int8Linear, to_int8_kernels


def _padded_rel_shift(scores: torch.Tensor, k_len: int) -> torch.Tensor:
    """The autograd path of rel_shift (padded copy, skewed view), as a reference."""
    return rel_shift(scores.detach().requires_grad_(), k_len).detach()


@pytest.mark.parametrize("t_q,k_len", [(1, 1), (1, 7), (4, 4), (5, 9), (16, 80), (3, 1)])
def test_strided_rel_shift_equals_padded(t_q, k_len):
    torch.manual_seed(0)
    scores = torch.randn(2, 3, t_q, t_q + k_len - 1, dtype=torch.float64)
    fast = rel_shift(scores, k_len)
    assert fast.data_ptr() == scores[..., :1, t_q - 1:].data_ptr()  # a view, no copy
    assert torch.equal(fast, _padded_rel_shift(scores, k_len))
    # non-contiguous input takes the padded path and gives the same numbers
    wide = torch.randn(2, 3, t_q, 2 * (t_q + k_len - 1), dtype=torch.float64)[..., ::2]
    assert torch.equal(rel_shift(wide, k_len), _padded_rel_shift(wide.contiguous(), k_len))


def test_rel_positional_keys_equal_scaled_table_and_follow_weights():
    torch.manual_seed(0)
    rel = RelPositionalEncoding(32, 4).double()
    ref = rel(9, 20, torch.device("cpu"), torch.float64).permute(1, 2, 0) * 0.25  # (H, dh, R)
    with torch.no_grad():
        keys = rel.keys(9, 20, torch.device("cpu"), torch.float64, 0.25)
        assert keys.is_contiguous() and torch.equal(keys, ref)
        assert rel.keys(9, 20, torch.device("cpu"), torch.float64, 0.25) is keys  # cached
        rel.linear_pos.weight.mul_(2.0)  # an in-place weight change invalidates the cache
        assert torch.allclose(rel.keys(9, 20, torch.device("cpu"), torch.float64, 0.25), 2 * ref)
    assert torch.equal(rel.keys(9, 20, torch.device("cpu"), torch.float64, 0.25).detach(), 2 * ref.detach())


@pytest.mark.parametrize("pos", ["rel", "rotary", "none", "xpos"])
def test_fused_qkv_equals_separate_products_float64(pos):
    torch.manual_seed(0)
    mha = MultiHeadAttention(64, 4, pos=pos).double().eval()
    x = torch.randn(2, 11, 64, dtype=torch.float64)
    cache = KVCache.empty(2, 4, 16, 8, dtype=torch.float64)
    cache = mha.forward_cached(torch.randn(2, 9, 64, dtype=torch.float64), cache)[1]
    ref_q = mha.project_self(x, 3)  # autograd on: three products
    ref_y, ref_cache = mha.forward_cached(x, cache)
    with torch.no_grad():
        q = mha.project_self(x, 3)
        y, new_cache = mha.forward_cached(x, cache)
    assert mha._qkv._entry[2] is not None  # the fused path ran
    for a, b in zip(q, ref_q):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(y, ref_y.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(new_cache.k, ref_cache.k.detach(), rtol=0, atol=1e-12)


def test_fused_qkv_follows_weight_changes_and_replaced_layers():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4).eval()
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        mha.project_self(x, 0)
        mha.load_state_dict({k: torch.randn_like(v) for k, v in mha.state_dict().items()})
        q, k, v = mha.project_self(x, 0)
        assert torch.allclose(v, mha._heads(mha.v_proj(x)), atol=1e-6)
        mha.k_proj.bias.zero_()  # in place
        assert torch.allclose(mha.project_self(x, 0)[1], mha._heads(mha.k_proj(x)), atol=1e-6)
        mha.q_proj = nn.Identity()  # not a linear layer: no fusion, the layers one by one
        q, _, _ = mha.project_self(x, 0)
        assert torch.equal(q, mha._heads(x))
        assert mha._qkv._entry[2] is None


def test_fused_cache_is_not_pickled_or_copied():
    mha = MultiHeadAttention(32, 4).eval()
    with torch.no_grad():
        mha.project_self(torch.randn(1, 3, 32), 0)
    for other in (pickle.loads(pickle.dumps(mha)), copy.deepcopy(mha)):
        assert other._qkv._entry[2] is None
        with torch.no_grad():
            assert torch.equal(other.project_self(torch.ones(1, 3, 32), 0)[2],
                               mha.project_self(torch.ones(1, 3, 32), 0)[2])


@pytest.mark.parametrize("bias", [True, False])
def test_int8_concat_equals_layers_one_by_one(bias):
    torch.manual_seed(0)
    parts = [Int8Linear.from_linear(nn.Linear(48, n, bias=bias)) for n in (48, 16, 32)]
    x = torch.randn(3, 7, 48)
    with torch.no_grad():
        fused = Int8Linear.concat(parts)
        assert (fused.in_features, fused.out_features) == (48, 96)
        assert torch.equal(fused(x), torch.cat([m(x) for m in parts], dim=-1))
    with pytest.raises(ValueError, match="in_features"):
        Int8Linear.concat([parts[0], Int8Linear.from_linear(nn.Linear(8, 8))])


def test_int8_attention_uses_the_fused_kernel_with_the_same_numbers():
    torch.manual_seed(0)
    mha = to_int8_kernels(MultiHeadAttention(64, 4, pos="rel").eval())
    x = torch.randn(1, 16, 64)
    with torch.no_grad():
        q, k, v = mha.project_self(x, 0)
        assert isinstance(mha._qkv._entry[2], Int8Linear)
        assert torch.equal(q, mha._heads(mha.q_proj(x)))
        assert torch.equal(k, mha._heads(mha.k_proj(x)))
        assert torch.equal(v, mha._heads(mha.v_proj(x)))


def test_feed_forward_and_conv_skip_only_identity_dropout():
    torch.manual_seed(0)
    ff = FeedForward(32, 2, 0.3)
    x = torch.randn(4, 6, 32)
    ff.eval()
    assert torch.equal(ff(x), ff.net(x))
    ff.train()  # dropout still applies in training, with the same random draws as the module calls
    torch.manual_seed(1)
    y = ff(x)
    torch.manual_seed(1)
    assert torch.equal(y, ff.net(x))
    assert not torch.equal(y, ff.eval()(x))
    ff0 = FeedForward(32, 2, 0.0).train()
    assert torch.equal(ff0(x), ff0.net(x))
    conv = CausalConvModule(32, 5, 0.5).train()
    torch.manual_seed(2)
    y = conv(x)
    assert not torch.equal(y, conv.eval()(x))


def test_dropout_helper_calls_the_module_when_active(monkeypatch):
    calls = []
    d = nn.Dropout(0.2)
    monkeypatch.setattr(nn.Dropout, "forward", lambda self, x: calls.append(1) or x)
    x = torch.ones(3)
    layers._dropout(d.eval(), x)
    layers._dropout(nn.Dropout(0.0).train(), x)
    assert not calls
    layers._dropout(d.train(), x)
    assert calls == [1]


def test_half_step_is_bit_exact():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x, h = torch.randn(3, 17, 64, dtype=dtype), torch.randn(3, 17, 64, dtype=dtype) * 1e3
        assert torch.equal(layers._half_step(x, h), x + 0.5 * h)


def test_conformer_layer_training_keeps_dropout_and_gradients():
    torch.manual_seed(0)
    layer = ConformerLayer(32, 4, 2, 5, 0.2, 0.0, "rel").train()
    x = torch.randn(2, 12, 32, requires_grad=True)
    lens = torch.tensor([12, 9])
    valid = torch.arange(12)[None] < lens[:, None]
    torch.manual_seed(3)
    a = layer(x, lens, valid, 4, 2)
    torch.manual_seed(4)
    b = layer(x, lens, valid, 4, 2)
    assert not torch.allclose(a, b)  # dropout draws differ
    a.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in layer.parameters())


def _stream(enc: ConformerEncoder, x: torch.Tensor) -> torch.Tensor:
    state, ys = enc.init_state(1, 8, 2), []
    with torch.inference_mode():
        for i in range(0, x.shape[1], 40):
            y, state = enc.step(x[:, i:i + 40], state, final=i + 40 >= x.shape[1])
            ys.append(y)
    return torch.cat(ys, 1)


def test_encoder_step_equals_forward_on_the_fast_path():
    """The fast path in the shipped model's shape (rel positions, 4 heads of 16): step == forward."""
    torch.manual_seed(0)
    enc = ConformerEncoder(EncoderConfig.tiny()).eval()
    x = torch.randn(1, 300, 80)
    with torch.inference_mode():
        ref, _ = enc(x, torch.tensor([300]), 8, 2)
    torch.testing.assert_close(_stream(enc, x), ref, rtol=1e-5, atol=1e-5)


def test_int8_encoder_step_equals_unfused_step(monkeypatch):
    """int8 activations are quantized per call, so an int8 step is compared with the int8 step that
    runs q, k, v as three products (not with forward, whose calls see other frames): equal."""
    torch.manual_seed(0)
    enc = to_int8_kernels(ConformerEncoder(EncoderConfig.tiny()).eval())
    x = torch.randn(1, 300, 80)
    fused = _stream(enc, x)
    monkeypatch.setattr(MultiHeadAttention, "_project_qkv", lambda self, h: tuple(
        self._heads(m(h)) for m in (self.q_proj, self.k_proj, self.v_proj)))
    assert torch.equal(fused, _stream(enc, x))
