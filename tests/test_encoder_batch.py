"""ConformerEncoder.step_batch (the server's cross-session batching) equals step per stream."""

import random

import pytest
import torch

from asr.encoder import ConformerEncoder, EncoderConfig
from asr.encoder.subsampling import pad_groups


@pytest.mark.parametrize("left_blocks", [2, None])
def test_step_batch_equals_step(left_blocks):
    torch.manual_seed(0)
    enc = ConformerEncoder(EncoderConfig.tiny()).eval()
    rng = random.Random(0)
    n = 5
    streams = [torch.randn(1, 300, 80) for _ in range(n)]
    starts = [0, 0, 0, 24, 37]  # three in lockstep (batched together), two at other phases
    pos = list(starts)
    single = [enc.init_state(1, 4, left_blocks) for _ in range(n)]
    batched = [enc.init_state(1, 4, left_blocks) for _ in range(n)]
    with torch.no_grad():
        for s in range(n):  # advance the late streams first
            if starts[s]:
                _, single[s] = enc.step(streams[s][:, :starts[s]], single[s])
                _, batched[s] = enc.step(streams[s][:, :starts[s]], batched[s])
        for _ in range(12):
            sizes = [16] * 3 + [rng.randint(0, 20) for _ in range(2)]
            chunks = [streams[s][:, pos[s]:pos[s] + sizes[s]] for s in range(n)]
            got = enc.step_batch(chunks, batched)
            for s in range(n):
                want, single[s] = enc.step(chunks[s], single[s])
                y, batched[s] = got[s]
                assert y.shape == want.shape
                assert torch.allclose(y, want, atol=1e-5), s
                assert batched[s].offset == single[s].offset
                assert batched[s].kv[0].start == single[s].kv[0].start
                pos[s] += sizes[s]
        finals = enc.step_batch([streams[s][:, pos[s]:pos[s] + 3] for s in range(n)], batched, final=True)
        for s in range(n):
            want, _ = enc.step(streams[s][:, pos[s]:pos[s] + 3], single[s], final=True)
            assert torch.allclose(finals[s][0], want, atol=1e-5)


@pytest.mark.parametrize("left_blocks", [1, None])
def test_step_batch_equals_step_float64_mixed(left_blocks):
    """Every stream a different length and state, chunks from 0 to 120 frames (so the batched
    subsampling pads and splits into groups), some streams ending mid-call: float64-tight."""
    torch.manual_seed(1)
    enc = ConformerEncoder(EncoderConfig.tiny()).eval().double()
    rng = random.Random(1)
    n = 6
    streams = [torch.randn(1, rng.randint(60, 400), 80, dtype=torch.float64) for _ in range(n)]
    block = [4, 4, 4, 8, 4, None]
    single = [enc.init_state(1, b, left_blocks, dtype=torch.float64) for b in block]
    batched = list(single)
    pos = [0] * n
    with torch.no_grad():
        while not all(s.finished for s in single):
            live = [s for s in range(n) if not single[s].finished]
            sizes = {s: rng.choice([0, 3, 7, 10, 16, 120]) for s in live}
            finals = [pos[s] + sizes[s] >= streams[s].shape[1] for s in live]
            chunks = [streams[s][:, pos[s]:pos[s] + sizes[s]] for s in live]
            got = enc.step_batch(chunks, [batched[s] for s in live], final=finals)
            for s, chunk, fin, (y, state) in zip(live, chunks, finals, got):
                want, single[s] = enc.step(chunk, single[s], final=fin)
                batched[s] = state
                assert y.shape == want.shape
                torch.testing.assert_close(y, want, rtol=0, atol=1e-10)
                assert (state.offset, state.finished, state.feats.shape) == (
                    single[s].offset, single[s].finished, single[s].feats.shape)
                pos[s] += sizes[s]


def test_step_batch_with_a_batched_state_runs_each_front_alone():
    """A batch-2 state among batch-1 streams (not joinable in one front cat): each stream still
    gets what its own step gives, and finishing one raises for it as step does."""
    torch.manual_seed(2)
    enc = ConformerEncoder(EncoderConfig.tiny()).eval().double()
    xs = [torch.randn(b, 90, 80, dtype=torch.float64) for b in (1, 2, 1)]
    single = [enc.init_state(b, 4, 2, dtype=torch.float64) for b in (1, 2, 1)]
    batched = list(single)
    with torch.no_grad():
        for s0 in range(0, 90, 30):
            got = enc.step_batch([x[:, s0:s0 + 30] for x in xs], batched)
            for i, (y, state) in enumerate(got):
                want, single[i] = enc.step(xs[i][:, s0:s0 + 30], single[i])
                torch.testing.assert_close(y, want, rtol=0, atol=1e-10)
                batched[i] = state
        _, done = enc.step_batch([xs[0][:, :0]], [batched[0]], final=True)[0]
        with pytest.raises(RuntimeError, match="after final=True"):
            enc.step_batch([xs[0][:, :4], xs[2][:, :4]], [done, batched[2]])


def test_compute_many_equals_compute():
    torch.manual_seed(2)
    sub = ConformerEncoder(EncoderConfig.tiny()).subsampling.double()
    xs = [torch.randn(t, 80, dtype=torch.float64) for t in (7, 11, 10, 203, 15, 8)]
    for max_frames in (None, 40, 1):  # unbounded; a few rows per batch; one row each
        for x, y in zip(xs, sub.compute_many(xs, max_frames=max_frames)):
            torch.testing.assert_close(y, sub.compute(x[None])[0], rtol=0, atol=1e-12)


def test_pad_groups():
    assert pad_groups([3, 2, 50, 3, 2]) == [[1, 4, 0, 3], [2]]
    assert pad_groups([2, 3] * 16) == [list(range(0, 32, 2)) + list(range(1, 32, 2))]
    assert pad_groups([]) == []
