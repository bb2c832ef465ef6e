"""Blockwise Parallel Transformer: outputs and gradients equal the plain path's (float64), and
no T x T or T x (ff * D) activation is kept for the backward pass."""

import dataclasses

import pytest
import torch

from asr.attention import MultiHeadAttention, bpt_attention, bpt_feed_forward, padding_mask
from asr.config import ConfigError, from_dict, to_dict
from asr.encoder import BPTConfig, ConformerEncoder, EncoderConfig
from asr.encoder.layers import CausalConvModule, ConformerLayer, FeedForward
from asr.encoder.subsampling import Conv2dSubsampling

D, H = 16, 4


def _grads(module: torch.nn.Module, x: torch.Tensor, run, weight: torch.Tensor):
    """Output, d(loss)/dx and d(loss)/d(every parameter) of ``loss = sum(run(x) * weight)``."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    y = run(x)
    (y * weight).sum().backward()
    return [y.detach(), x.grad] + [p.grad if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def _max_diff(a, b) -> float:
    assert len(a) == len(b)
    return max(float((u - v).abs().max()) for u, v in zip(a, b))


@pytest.mark.parametrize("pos", ["rel", "none", "rotary"])
@pytest.mark.parametrize("block_size,left_blocks", [(None, None), (2, 1), (3, None)])
@pytest.mark.parametrize("query_block,key_block", [(3, 5), (4, 4), (1, 2), (32, 32)])
def test_attention_equals_plain(pos, block_size, left_blocks, query_block, key_block):
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, pos=pos).double()
    x = torch.randn(2, 11, D, dtype=torch.float64)
    lens = torch.tensor([11, 6])
    w = torch.randn(2, 11, D, dtype=torch.float64) * padding_mask(lens, 11)[..., None]  # valid queries only
    plain = _grads(mha, x, lambda x: mha.forward_blockwise(x, lens, block_size=block_size, left_blocks=left_blocks,
                                                           query_chunk=4), w)
    bpt = _grads(mha, x, lambda x: mha.forward_bpt(x, lens, block_size=block_size, left_blocks=left_blocks,
                                                   query_block=query_block, key_block=key_block), w)
    plain[0], bpt[0] = plain[0] * (w != 0), bpt[0] * (w != 0)
    assert _max_diff(plain, bpt) < 1e-10
    with torch.no_grad():  # the inference path (no autograd function) gives the same numbers
        y = mha.forward_bpt(x, lens, block_size=block_size, left_blocks=left_blocks,
                            query_block=query_block, key_block=key_block)
    assert float(((y - bpt[0]) * (w != 0)).abs().max()) < 1e-12


def test_attention_function_gradcheck_with_dropout():
    """With dropout the masks are the function's own (seeded per tile): gradients are exact for them."""
    torch.manual_seed(1)
    t, dh = 7, 3
    q, k, v = (torch.randn(2, 2, t, dh, dtype=torch.float64, requires_grad=True) for _ in range(3))
    u, vb = (torch.randn(2, dh, dtype=torch.float64, requires_grad=True) for _ in range(2))
    emb = torch.randn(2 * t - 1, 2, dh, dtype=torch.float64, requires_grad=True)
    valid = padding_mask(torch.tensor([7, 4]), t)

    def f(q, k, v, u, vb, emb):
        return bpt_attention(q, k, v, key_valid=valid, rel=(u, vb, emb), query_block=3, key_block=2,
                             dropout_p=0.3, seed=5) * valid[:, None, :, None]

    assert torch.autograd.gradcheck(f, (q, k, v, u, vb, emb))
    with torch.no_grad():
        kept = bpt_attention(q, k, v, query_block=3, key_block=2, dropout_p=0.3, seed=5)
        none = bpt_attention(q, k, v, query_block=3, key_block=2)
    assert not torch.allclose(kept, none)  # dropout does drop


@pytest.mark.parametrize("block", [1, 4, 100])
def test_feed_forward_equals_plain(block):
    torch.manual_seed(2)
    ff = FeedForward(D, 3, 0.0).double()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    w = torch.randn(2, 9, D, dtype=torch.float64)
    assert _max_diff(_grads(ff, x, ff, w), _grads(ff, x, lambda x: bpt_feed_forward(ff, x, block), w)) < 1e-12


@pytest.mark.parametrize("block", [1, 3, 4, 5, 100])
def test_conv_module_equals_plain(block):
    """Blocks shorter than the kernel's left context (4) too; padded frames zeroed as in forward."""
    torch.manual_seed(6)
    conv = CausalConvModule(D, 5, 0.0).double()
    x = torch.randn(2, 13, D, dtype=torch.float64)
    valid = padding_mask(torch.tensor([13, 8]), 13)
    w = torch.randn(2, 13, D, dtype=torch.float64)
    ref = _grads(conv, x, lambda x: conv(x, valid), w)
    assert _max_diff(ref, _grads(conv, x, lambda x: conv(x, valid, block=block), w)) < 1e-12


@pytest.mark.parametrize("chunk", [1, 5, 100])
def test_subsampling_recompute_equals_plain(chunk):
    torch.manual_seed(7)
    sub = Conv2dSubsampling(20, D, 8).double()
    x = torch.randn(2, 47, 20, dtype=torch.float64)
    w = torch.randn(2, 11, D, dtype=torch.float64)  # 11 output frames
    ref = _grads(sub, x, sub, w)
    assert _max_diff(ref, _grads(sub, x, lambda x: sub(x, chunk_frames=chunk, recompute=True), w)) < 1e-12


def _encoder_cfg(bpt: BPTConfig | None) -> EncoderConfig:
    return EncoderConfig(input_dim=20, d_model=D, n_heads=H, n_layers=2, ff_mult=3, conv_kernel=5,
                         subsampling_channels=8, dropout=0.0, pos="rel", bpt=bpt)


@pytest.mark.parametrize("bpt", [BPTConfig(5, 7, 3), BPTConfig(4, 4, 4), BPTConfig(64, 64, 64), BPTConfig(1, 3, 2)])
@pytest.mark.parametrize("block_size,left_blocks", [(None, None), (4, 2)])
def test_encoder_equals_plain(bpt, block_size, left_blocks):
    """A padded batch (different lengths): outputs, input and parameter gradients, float64."""
    torch.manual_seed(3)
    plain = ConformerEncoder(_encoder_cfg(None)).double().train()
    fast = ConformerEncoder(_encoder_cfg(bpt)).double().train()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(3, 90, 20, dtype=torch.float64)
    lens = torch.tensor([90, 61, 33])
    w = torch.randn(3, 21, D, dtype=torch.float64)
    ref = _grads(plain, x, lambda x: plain(x, lens, block_size, left_blocks)[0], w)
    got = _grads(fast, x, lambda x: fast(x, lens, block_size, left_blocks)[0], w)
    assert _max_diff(ref, got) < 1e-10


def test_encoder_bf16_autocast_runs_and_agrees():
    """Training runs under bf16 autocast: the tiles compute in bf16 with float32 softmax statistics."""
    torch.manual_seed(8)
    plain = ConformerEncoder(_encoder_cfg(None)).train()
    fast = ConformerEncoder(_encoder_cfg(BPTConfig(16, 8, 16))).train()
    fast.load_state_dict(plain.state_dict())
    x, lens = torch.randn(2, 300, 20), torch.tensor([300, 190])
    outs = []
    for enc in (plain, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = enc(x, lens)
        y.float().square().sum().backward()
        outs.append((y.detach().float(), torch.cat([p.grad.flatten() for p in enc.parameters()])))
    assert outs[1][0].dtype == torch.float32 and bool(torch.isfinite(outs[1][1]).all())
    assert float((outs[0][0] - outs[1][0]).abs().max()) < 0.1  # bf16 rounding of O(1) outputs
    assert float((outs[0][1] - outs[1][1]).norm() / outs[0][1].norm()) < 0.02


def _saved_numels(run) -> list[int]:
    """Sizes of the tensors autograd keeps for the backward pass while ``run()`` runs."""
    sizes: list[int] = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sizes


@pytest.mark.parametrize("block_size,left_blocks", [(None, None), (8, None)])
def test_no_quadratic_or_ff_wide_activation_kept(block_size, left_blocks):
    """A conformer layer keeps only O(T * D) tensors (the widest: the (2T - 1, D) relative embeddings)."""
    torch.manual_seed(4)
    b, t, ff_mult = 1, 201, 4
    layer = ConformerLayer(D, H, ff_mult, 5, 0.1, 0.1, "rel").train()
    x = torch.randn(b, t, D, requires_grad=True)
    lens = torch.tensor([t])
    valid = padding_mask(lens, t)
    quadratic, ff_wide = b * t * t, b * t * ff_mult * D

    def run(bpt):
        return lambda: layer(x, lens, valid, block_size, left_blocks, bpt=bpt).sum()

    assert max(_saved_numels(run(None))) >= min(quadratic, ff_wide)  # the check bites on the plain path
    assert max(_saved_numels(run(BPTConfig(32, 32, 32)))) <= b * t * 2 * D


def test_encoder_keeps_nothing_wider_than_its_input_or_the_rel_embeddings():
    """The whole encoder, subsampling included: its first conv's output (1, 32, 404, 9) is 7x the bound."""
    torch.manual_seed(9)
    t_feats = 810
    x, lens = torch.randn(1, t_feats, 20), torch.tensor([t_feats])
    wide = dataclasses.replace(_encoder_cfg(None), subsampling_channels=32)
    plain = ConformerEncoder(wide).train()
    fast = ConformerEncoder(dataclasses.replace(wide, bpt=BPTConfig(32, 32, 32))).train()
    t = int(fast.output_lengths(lens)[0])
    bound = max(t_feats * 20, (2 * t - 1) * D)  # the features; the (2T - 1, D) relative embeddings
    plain.layers = plain.layers[:0]  # the subsampling alone makes the plain path fail the bound
    assert max(_saved_numels(lambda: plain(x, lens)[0].sum())) > 5 * bound
    assert max(_saved_numels(lambda: fast(x, lens)[0].sum())) <= bound


def test_config_from_yaml_mapping():
    cfg = from_dict(EncoderConfig, {"bpt": {"query_block": 256}}, source="exp.yaml")
    assert cfg.bpt == BPTConfig(query_block=256)
    assert from_dict(EncoderConfig, to_dict(cfg)) == cfg  # a saved model's config.yaml loads back
    assert from_dict(EncoderConfig, {"bpt": None}).bpt is None
    assert EncoderConfig().bpt is None  # off by default
    with pytest.raises(ConfigError, match=r"exp.yaml.bpt.*unknown key 'query_blok'"):
        from_dict(EncoderConfig, {"bpt": {"query_blok": 256}}, source="exp.yaml")
    with pytest.raises(ValueError, match="frame_block must be a positive integer"):
        from_dict(EncoderConfig, {"bpt": {"frame_block": 0}})
    assert dataclasses.replace(cfg, bpt=None).bpt is None


def test_streaming_step_ignores_bpt():
    """``step`` is the streaming path: the same frames with BPT on or off."""
    torch.manual_seed(5)
    plain = ConformerEncoder(_encoder_cfg(None)).double().eval()
    fast = ConformerEncoder(_encoder_cfg(BPTConfig(4, 4, 4))).double().eval()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(1, 70, 20, dtype=torch.float64)
    with torch.no_grad():
        outs = []
        for enc in (plain, fast):
            state = enc.init_state(1, 4, 2, dtype=torch.float64)
            y1, state = enc.step(x[:, :40], state)
            y2, _ = enc.step(x[:, 40:], state, final=True)
            outs.append(torch.cat([y1, y2], 1))
        full, _ = fast(x, torch.tensor([70]), 4, 2)
    assert torch.equal(outs[0], outs[1])
    assert float((outs[1] - full).abs().max()) < 1e-10


@pytest.mark.parametrize("frames", [1, 16, 300, 600])
def test_cpu_depthwise_equals_conv1d(frames, monkeypatch):
    """The CPU inference path (strided windows, in pieces) computes nn.Conv1d's depthwise sum."""
    import asr.encoder.layers as layers

    monkeypatch.setattr(layers, "_WINDOW_FRAMES", 128)  # several pieces for the longer inputs
    torch.manual_seed(9)
    conv = CausalConvModule(D, 7, 0.0).double()
    h = torch.randn(3, 6 + frames, D, dtype=torch.float64)[:, :, :]
    ref = conv.depthwise(h.transpose(1, 2)).transpose(1, 2)
    with torch.inference_mode():
        got = conv._depthwise(h.transpose(0, 1).contiguous().transpose(0, 1))  # a non-contiguous input too
    assert got.shape == ref.shape == (3, frames, D)
    assert (got - ref).abs().max() < 1e-12
