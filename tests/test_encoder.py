"""Blockwise conformer encoder: streaming step() equals forward() with the same block mask."""

import dataclasses

import pytest
import torch

from asr.encoder import ConformerEncoder, EncoderConfig, block_size_from_ms, subsampled_length


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ConformerEncoder(EncoderConfig.tiny()).eval()


def _stream(enc, x, block_size, left_blocks, seed, max_chunk=13):
    """Feed x (B, T, F) in random chunks (including empty and 1-frame chunks); return the frames."""
    g = torch.Generator().manual_seed(seed)
    state = enc.init_state(x.shape[0], block_size, left_blocks)
    outs, i = [], 0
    while i < x.shape[1]:
        n = int(torch.randint(0, max_chunk + 1, (1,), generator=g))
        y, state = enc.step(x[:, i : i + n], state)
        if block_size is not None:
            assert y.shape[1] % block_size == 0
        else:
            assert y.shape[1] == 0
        outs.append(y)
        i += n
    y, state = enc.step(x[:, :0], state, final=True)
    outs.append(y)
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("left_blocks", [0, 2, None])
def test_streaming_equals_forward(encoder, block_size, left_blocks):
    torch.manual_seed(1)
    x = torch.randn(1, 157, 80)
    with torch.no_grad():
        full, full_lens = encoder(x, torch.tensor([157]), block_size, left_blocks)
        streamed, state = _stream(encoder, x, block_size, left_blocks, seed=block_size * 10 + (left_blocks or 7))
    assert streamed.shape == full.shape == (1, int(full_lens[0]), 64)
    assert (streamed - full).abs().max() <= 1e-4
    assert state.offset == full.shape[1] and state.finished


@pytest.mark.parametrize("left_blocks", [0, 2, None])
def test_streaming_with_chunks_spanning_several_blocks(encoder, left_blocks):
    x = torch.randn(2, 200, 80)
    with torch.no_grad():
        full, _ = encoder(x, torch.full((2,), 200), 2, left_blocks)
        streamed, _ = _stream(encoder, x, 2, left_blocks, seed=11, max_chunk=90)
    assert streamed.shape == full.shape
    assert (streamed - full).abs().max() <= 1e-4


def test_full_context_streaming_emits_at_the_end(encoder):
    x = torch.randn(1, 60, 80)
    with torch.no_grad():
        full, _ = encoder(x, torch.tensor([60]), None, None)
        streamed, _ = _stream(encoder, x, None, None, seed=3)
    assert streamed.shape == full.shape
    assert (streamed - full).abs().max() <= 1e-4


def test_batched_streaming_of_equal_length_streams(encoder):
    x = torch.randn(3, 90, 80)
    with torch.no_grad():
        full, _ = encoder(x, torch.full((3,), 90), 4, 1)
        streamed, _ = _stream(encoder, x, 4, 1, seed=5)
        alone, _ = encoder(x[2:], torch.tensor([90]), 4, 1)
    assert (streamed - full).abs().max() <= 1e-4
    assert (full[2:] - alone).abs().max() <= 1e-5


def test_rotary_encoder_streams_exactly():
    torch.manual_seed(0)
    enc = ConformerEncoder(dataclasses.replace(EncoderConfig.tiny(), pos="rotary")).eval()
    x = torch.randn(1, 100, 80)
    with torch.no_grad():
        full, _ = enc(x, torch.tensor([100]), 4, 2)
        streamed, _ = _stream(enc, x, 4, 2, seed=9)
    assert (streamed - full).abs().max() <= 1e-4


@pytest.mark.parametrize("block_size,left_blocks", [(None, None), (1, 0), (4, 2), (16, None)])
def test_padding_invariance(encoder, block_size, left_blocks):
    lens = torch.tensor([120, 75, 9, 41])
    x = torch.randn(4, 120, 80)
    x = x.masked_fill(torch.arange(120)[None, :, None] >= lens[:, None, None], 3.0)  # junk padding
    with torch.no_grad():
        y, y_lens = encoder(x, lens, block_size, left_blocks)
        for b in range(4):
            alone, alone_lens = encoder(x[b : b + 1, : lens[b]], lens[b : b + 1], block_size, left_blocks)
            n = int(y_lens[b])
            assert n == int(alone_lens[0]) == alone.shape[1]
            assert (y[b, :n] - alone[0]).abs().max() <= 1e-5
            assert (y[b, n:] == 0).all()


def test_short_inputs_give_no_frames(encoder):
    with torch.no_grad():
        y, y_lens = encoder(torch.randn(2, 6, 80), torch.tensor([6, 3]), 4, 1)
        assert y.shape == (2, 0, 64) and y_lens.tolist() == [0, 0]
        state = encoder.init_state(1, 4, 1)
        y, state = encoder.step(torch.randn(1, 6, 80), state, final=True)
        assert y.shape == (1, 0, 64)


def test_subsampling_lengths_and_chunking(encoder):
    assert [subsampled_length(n) for n in (0, 6, 7, 10, 11, 100)] == [0, 0, 1, 1, 2, 24]
    assert subsampled_length(torch.tensor([0, 6, 7, 11, 100])).tolist() == [0, 0, 1, 2, 24]
    x = torch.randn(2, 301, 80)
    with torch.no_grad():
        whole = encoder.subsampling(x)
        chunked = encoder.subsampling(x, chunk_frames=7)
    assert whole.shape[1] == 74 and (whole - chunked).abs().max() <= 1e-5


def test_dynamic_block_sampling():
    cfg = dataclasses.replace(EncoderConfig.tiny(), train_block_sizes=(None, 4, 8), train_left_blocks=(1, None))
    enc = ConformerEncoder(cfg)
    draws = [enc.sample_block_config(torch.Generator().manual_seed(s)) for s in range(200)]
    assert {d[0] for d in draws} == {None, 4, 8}
    assert {d[1] for d in draws if d[0] is not None} == {1, None}
    assert all(d == (None, None) for d in draws if d[0] is None)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [enc.sample_block_config(g1) for _ in range(5)] == [enc.sample_block_config(g2) for _ in range(5)]


def test_training_forward_backward():
    torch.manual_seed(0)
    enc = ConformerEncoder(EncoderConfig.tiny()).train()
    x = torch.randn(2, 80, 80, requires_grad=True)
    y, y_lens = enc(x, torch.tensor([80, 50]), *enc.sample_block_config(torch.Generator().manual_seed(0)))
    y.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    assert y.shape == (2, 19, 64) and y_lens.tolist() == [19, 11]


def test_preset_parameter_counts():
    count = lambda cfg: sum(p.numel() for p in ConformerEncoder(cfg).parameters())  # noqa: E731
    assert 0.2e6 <= count(EncoderConfig.tiny()) <= 0.4e6
    assert 15e6 <= count(EncoderConfig.small()) <= 25e6
    assert ConformerEncoder(EncoderConfig.tiny()).output_dim == 64


def test_errors_and_helpers(encoder):
    assert block_size_from_ms(640) == 16 and block_size_from_ms(None) is None
    with pytest.raises(ValueError):
        block_size_from_ms(100)
    with pytest.raises(ValueError):
        encoder(torch.randn(1, 20, 80), torch.tensor([20]), 0, None)
    with pytest.raises(ValueError):
        EncoderConfig(d_model=30, n_heads=4)
    state = encoder.init_state(1, 4, 1)
    _, state = encoder.step(torch.randn(1, 20, 80), state, final=True)
    with pytest.raises(RuntimeError):
        encoder.step(torch.randn(1, 4, 80), state)
