"""ConformerEncoder.step_batch (the server's cross-session batching) equals step per stream."""

import random

import pytest
import torch

from asr.encoder import ConformerEncoder, EncoderConfig


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
