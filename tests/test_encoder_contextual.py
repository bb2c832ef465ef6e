"""Contextual block conformer (encoder.kind: contextual_block): streaming step() equals forward()
with the same block mask, in float64; step_batch equals step per stream; every dynamic block draw
trains; the context path carries information across blocks."""

import dataclasses
import random

import pytest
import torch

from asr.attention import block_causal_mask_range, contextual_block_mask_range
from asr.config import ConfigError, from_dict
from asr.encoder import ContextualBlockEncoder, ContextualState, EncoderConfig, build_encoder
from asr.encoder.conformer import ConformerEncoder

TOL = 1e-10


def _cfg(**kw) -> EncoderConfig:
    sizes = dict(kind="contextual_block", n_layers=3, d_model=32, subsampling_channels=8, conv_kernel=5)
    return dataclasses.replace(EncoderConfig.tiny(), **{**sizes, **kw})


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ContextualBlockEncoder(_cfg()).double().eval()


def _stream(enc, x, block_size, left_blocks, seed, max_chunk=13):
    """Feed x (B, T, F) in random chunks (including empty and 1-frame chunks); return the frames."""
    g = torch.Generator().manual_seed(seed)
    state = enc.init_state(x.shape[0], block_size, left_blocks, dtype=x.dtype)
    outs, i = [], 0
    while i < x.shape[1]:
        n = int(torch.randint(0, max_chunk + 1, (1,), generator=g))
        y, state = enc.step(x[:, i : i + n], state)
        assert y.shape[1] % block_size == 0 if block_size is not None else y.shape[1] == 0
        outs.append(y)
        i += n
    y, state = enc.step(x[:, :0], state, final=True)
    outs.append(y)
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("block_size", [1, 3, 4, 8])
@pytest.mark.parametrize("left_blocks", [0, 2, None])
@pytest.mark.parametrize("max_chunk", [13, 90])
def test_streaming_equals_forward(encoder, block_size, left_blocks, max_chunk):
    torch.manual_seed(1)
    x = torch.randn(2, 157, 80, dtype=torch.float64)
    with torch.no_grad():
        full, full_lens = encoder(x, torch.tensor([157, 157]), block_size, left_blocks)
        streamed, state = _stream(encoder, x, block_size, left_blocks, seed=block_size * 10 + (left_blocks or 7),
                                  max_chunk=max_chunk)
    assert streamed.shape == full.shape == (2, int(full_lens[0]), 32)
    assert (streamed - full).abs().max() <= TOL
    assert isinstance(state, ContextualState) and state.offset == full.shape[1] and state.finished
    assert len(state.ctx) == 2  # n_layers - 1 handed-over context embeddings


@pytest.mark.parametrize("pos", ["rel", "none"])
def test_full_context_streaming_emits_at_the_end(pos):
    torch.manual_seed(0)
    enc = ContextualBlockEncoder(_cfg(pos=pos)).double().eval()
    x = torch.randn(1, 60, 80, dtype=torch.float64)
    with torch.no_grad():
        full, _ = enc(x, torch.tensor([60]), None, None)
        streamed, _ = _stream(enc, x, None, None, seed=3)
        blocked, _ = enc(x, torch.tensor([60]), 4, 1)
        stream4, _ = _stream(enc, x, 4, 1, seed=4)
    assert streamed.shape == full.shape
    assert (streamed - full).abs().max() <= TOL
    assert (stream4 - blocked).abs().max() <= TOL


@pytest.mark.parametrize("block_size,left_blocks", [(None, None), (1, 0), (4, 2), (8, None)])
def test_padding_invariance(encoder, block_size, left_blocks):
    lens = torch.tensor([120, 75, 9, 41])
    x = torch.randn(4, 120, 80, dtype=torch.float64)
    x = x.masked_fill(torch.arange(120)[None, :, None] >= lens[:, None, None], 3.0)  # junk padding
    with torch.no_grad():
        y, y_lens = encoder(x, lens, block_size, left_blocks)
        for b in range(4):
            alone, alone_lens = encoder(x[b : b + 1, : lens[b]], lens[b : b + 1], block_size, left_blocks)
            n = int(y_lens[b])
            assert n == int(alone_lens[0]) == alone.shape[1]
            assert (y[b, :n] - alone[0]).abs().max() <= TOL
            assert (y[b, n:] == 0).all()


def test_query_chunks_give_the_same_frames():
    torch.manual_seed(0)
    enc = ContextualBlockEncoder(_cfg()).double().eval()
    chunked = ContextualBlockEncoder(_cfg(query_chunk=8)).double().eval()
    chunked.load_state_dict(enc.state_dict())
    x = torch.randn(2, 200, 80, dtype=torch.float64)
    lens = torch.tensor([200, 130])
    with torch.no_grad():
        for bs, left in [(4, 1), (4, None), (3, 2)]:
            a, _ = enc(x, lens, bs, left)
            b, _ = chunked(x, lens, bs, left)
            assert (a - b).abs().max() <= TOL


@pytest.mark.parametrize("left_blocks", [1, None])
def test_step_batch_equals_step(encoder, left_blocks):
    rng = random.Random(0)
    n = 5
    torch.manual_seed(2)
    streams = [torch.randn(1, 300, 80, dtype=torch.float64) for _ in range(n)]
    starts = [0, 0, 0, 24, 37]  # three in lockstep (batched together), two at other phases
    pos = list(starts)
    single = [encoder.init_state(1, 4, left_blocks, dtype=torch.float64) for _ in range(n)]
    batched = [encoder.init_state(1, 4, left_blocks, dtype=torch.float64) for _ in range(n)]
    with torch.no_grad():
        for s in range(n):
            if starts[s]:
                _, single[s] = encoder.step(streams[s][:, :starts[s]], single[s])
                _, batched[s] = encoder.step(streams[s][:, :starts[s]], batched[s])
        for _ in range(12):
            sizes = [16] * 3 + [rng.randint(0, 20) for _ in range(2)]
            chunks = [streams[s][:, pos[s]:pos[s] + sizes[s]] for s in range(n)]
            got = encoder.step_batch(chunks, batched)
            for s in range(n):
                want, single[s] = encoder.step(chunks[s], single[s])
                y, batched[s] = got[s]
                assert y.shape == want.shape
                assert (y - want).abs().max() <= TOL if y.numel() else True
                assert batched[s].offset == single[s].offset
                assert batched[s].kv[0].start == single[s].kv[0].start
                for a, b in zip(batched[s].ctx or (), single[s].ctx or ()):
                    assert (a - b).abs().max() <= TOL
                pos[s] += sizes[s]
        finals = encoder.step_batch([streams[s][:, pos[s]:pos[s] + 3] for s in range(n)], batched, final=True)
        for s in range(n):
            want, _ = encoder.step(streams[s][:, pos[s]:pos[s] + 3], single[s], final=True)
            assert (finals[s][0] - want).abs().max() <= TOL


def test_step_batch_keeps_first_blocks_apart(encoder):
    """A stream at its first block (no context handed over yet) is never batched with one that has
    a context: with no left context their caches and positions look alike."""
    torch.manual_seed(3)
    a, b = torch.randn(1, 80, 80, dtype=torch.float64), torch.randn(1, 80, 80, dtype=torch.float64)
    with torch.no_grad():
        sa = encoder.init_state(1, 4, 0, dtype=torch.float64)
        sb = encoder.init_state(1, 4, 0, dtype=torch.float64)
        _, sb = encoder.step(b[:, :19], sb)  # block 0 of b done; its last features wait
        got = encoder.step_batch([a[:, :19], b[:, 19:35]], [sa, sb])
        want_a, _ = encoder.step(a[:, :19], encoder.init_state(1, 4, 0, dtype=torch.float64))
        want_b, _ = encoder.step(b[:, 19:35], sb)
    assert (got[0][0] - want_a).abs().max() <= TOL
    assert (got[1][0] - want_b).abs().max() <= TOL


@pytest.mark.parametrize("block_size", [None, 8, 16, 32])
@pytest.mark.parametrize("left_blocks", [None, 2, 4, 8])
def test_every_dynamic_block_draw_trains(block_size, left_blocks):
    torch.manual_seed(0)
    enc = ContextualBlockEncoder(_cfg()).train()
    x = torch.randn(2, 400, 80)
    y, y_lens = enc(x, torch.tensor([400, 250]), block_size, None if block_size is None else left_blocks)
    assert y.shape == (2, 99, 32) and y_lens.tolist() == [99, 61]
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_sample_block_config_draws_the_recipe_grid():
    enc = build_encoder(_cfg(train_block_sizes=(None, 8, 16, 32), train_left_blocks=(None, 2, 4, 8)))
    draws = {enc.sample_block_config(torch.Generator().manual_seed(s)) for s in range(300)}
    assert {d[0] for d in draws} == {None, 8, 16, 32} and (None, None) in draws
    assert {d[1] for d in draws if d[0] is not None} == {None, 2, 4, 8}


def test_context_path_carries_information_across_blocks():
    """With no left context (and a 1-tap convolution) a block can hear earlier blocks only through
    the context embeddings: changing block 0's input changes block 2 from layer 2 on (one block
    further per layer), not before; the plain block encoder never hears it."""
    torch.manual_seed(0)
    x = torch.randn(1, 200, 80, dtype=torch.float64)
    x2 = x.clone()
    x2[:, :16] += 1.0  # feature frames 0..15 reach only encoder frames 0..3 (block 0)
    lens = torch.tensor([200])
    with torch.no_grad():
        for n_layers, moved in [(2, False), (3, True)]:
            enc = ContextualBlockEncoder(_cfg(n_layers=n_layers, conv_kernel=1)).double().eval()
            a, _ = enc(x, lens, 4, 0)
            b, _ = enc(x2, lens, 4, 0)
            assert ((a[:, 8:12] - b[:, 8:12]).abs().max() > 1e-6) == moved
            assert (a[:, 4 * n_layers:] - b[:, 4 * n_layers:]).abs().max() <= TOL
    plain = ConformerEncoder(_cfg(kind="conformer", conv_kernel=1)).double().eval()
    with torch.no_grad():
        a, _ = plain(x, lens, 4, 0)
        b, _ = plain(x2, lens, 4, 0)
    assert (a[:, 4:] - b[:, 4:]).abs().max() <= TOL  # the plain block encoder never hears block 0


def test_gradients_flow_through_the_context_path():
    """Block 2's output has a gradient with respect to block 0's input only through the context."""
    torch.manual_seed(0)
    enc = ContextualBlockEncoder(_cfg(conv_kernel=1)).double().eval()
    x = torch.randn(1, 100, 80, dtype=torch.float64, requires_grad=True)
    y, _ = enc(x, torch.tensor([100]), 4, 0)
    (y[:, 8:12] * torch.randn(4, 32, dtype=torch.float64)).sum().backward()  # (a LayerNorm's plain sum is constant)
    assert x.grad[:, :16].abs().sum() > 0  # block 0's features
    assert (x.grad[:, 60:] == 0).all()  # later blocks never


def test_plain_weights_load_and_kind_builds():
    cfg = _cfg()
    plain = build_encoder(dataclasses.replace(cfg, kind="conformer"))
    ctx = build_encoder(cfg)
    assert type(plain) is ConformerEncoder and type(ctx) is ContextualBlockEncoder
    ctx.load_state_dict(plain.state_dict())  # same parameters, same names


def test_config_errors():
    with pytest.raises(ConfigError, match=r"model\.encoder\.kind.*'conformer', 'contextual_block'.*'contextual'"):
        from_dict(EncoderConfig, {"kind": "contextual"}, source="model.encoder")
    with pytest.raises(ValueError, match="kind must be"):
        EncoderConfig(kind="emformer")
    with pytest.raises(ValueError, match="pos 'rel' or 'none'"):
        EncoderConfig(kind="contextual_block", pos="rotary")
    with pytest.raises(ValueError, match="bpt applies to kind 'conformer'"):
        from_dict(EncoderConfig, {"kind": "contextual_block", "bpt": {}}, source="x.yaml")
    with pytest.raises(ValueError, match="kernel 'sdpa'"):
        EncoderConfig(kind="contextual_block", kernel="flex")
    with pytest.raises(ValueError, match="kind 'contextual_block'"):
        ContextualBlockEncoder(EncoderConfig.tiny())
    assert from_dict(EncoderConfig, {"kind": "contextual_block"}).kind == "contextual_block"
    assert EncoderConfig().kind == "conformer"


def test_errors_and_short_inputs(encoder):
    with torch.no_grad():
        y, y_lens = encoder(torch.randn(2, 6, 80, dtype=torch.float64), torch.tensor([6, 3]), 4, 1)
        assert y.shape == (2, 0, 32) and y_lens.tolist() == [0, 0]
        state = encoder.init_state(1, 4, 1, dtype=torch.float64)
        y, state = encoder.step(torch.randn(1, 6, 80, dtype=torch.float64), state, final=True)
        assert y.shape == (1, 0, 32)
    with pytest.raises(RuntimeError):
        encoder.step(torch.randn(1, 4, 80, dtype=torch.float64), state)
    with pytest.raises(ValueError):
        encoder(torch.randn(1, 20, 80, dtype=torch.float64), torch.tensor([20]), 0, None)


@pytest.mark.parametrize("q_start,q_len,k_start,k_len,bs,left", [(0, 12, 0, 12, 4, 1), (8, 5, 0, 13, 4, None),
                                                                 (4, 8, 0, 12, 2, 0), (0, 7, 0, 7, None, None)])
def test_mask_extends_the_block_causal_mask(q_start, q_len, k_start, k_len, bs, left):
    m = contextual_block_mask_range(q_start, q_len, k_start, k_len, bs, left)
    n = m.shape[0] - q_len
    assert m.shape == (q_len + n, k_len + n)
    assert torch.equal(m[:q_len, :k_len], block_causal_mask_range(q_start, q_len, k_start, k_len, bs, left))
    assert torch.equal(m[q_len:, k_len:], torch.eye(n, dtype=torch.bool))  # a context sees only itself
    blocks = [0] * q_len if bs is None else [(q_start + i) // bs for i in range(q_len)]
    assert n == blocks[-1] - blocks[0] + 1
    for i, b in enumerate(blocks):  # a frame sees its own block's context and its block's frame row
        assert m[i, k_len:].nonzero().flatten().tolist() == [b - blocks[0]]
        assert torch.equal(m[q_len + b - blocks[0], :k_len], m[i, :k_len])
