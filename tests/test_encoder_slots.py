"""Cache slots (asr.encoder.slots): step_batch keeps steady-state caches in one tensor per layer.

Equal to step per stream in float64 while streams join, leave and change groups; a consumed state
raises; slots go back to the pool when their states are gone."""

import gc
import random

import pytest
import torch

from asr.encoder import ConformerEncoder, EncoderConfig
from asr.encoder.slots import SlotKV


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    return ConformerEncoder(EncoderConfig.tiny()).eval().double()


def _pool(state):
    return state.kv.slot.pool


def test_slotted_steps_equal_step_while_streams_come_and_go(enc):
    """Each call steps a random subset of the streams (held streams skip calls, one is stepped
    alone now and then), so the gathers take every mix of slots; results and caches equal step's."""
    rng = random.Random(0)
    n, block = 7, 4
    streams = [torch.randn(1, 700, 80, dtype=torch.float64) for _ in range(n)]
    single = [enc.init_state(1, block, 2, dtype=torch.float64) for _ in range(n)]
    batched = list(single)
    pos = [0] * n
    slotted = 0
    with torch.no_grad():
        for call in range(30):
            live = [s for s in range(n) if rng.random() < 0.7 and pos[s] + 16 <= 700]
            if not live:
                continue
            chunks = [streams[s][:, pos[s]:pos[s] + 16] for s in live]
            if call % 5 == 4:  # one stream alone through step (reads its slot, writes none)
                s = live[0]
                got = [enc.step(chunks[0], batched[s])] + enc.step_batch(chunks[1:], [batched[t] for t in live[1:]])
            else:
                got = enc.step_batch(chunks, [batched[s] for s in live])
            for s, x, (y, state) in zip(live, chunks, got):
                want, single[s] = enc.step(x, single[s])
                assert torch.allclose(y, want, atol=1e-10, rtol=0), (call, s)
                batched[s] = state
                pos[s] += 16
                slotted += isinstance(state.kv, SlotKV)
                assert state.offset == single[s].offset
                for a, b in zip(state.kv, single[s].kv):
                    assert a.start == b.start and torch.allclose(a.k, b.k, atol=1e-10, rtol=0)
                for a, b in zip(state.conv, single[s].conv):
                    assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert slotted > 50  # the slotted path ran, not only the per-stream one


def test_a_consumed_state_raises_and_slots_go_back(enc):
    xs = [torch.randn(1, 16, 80, dtype=torch.float64) for _ in range(3)]
    states = [enc.init_state(1, 4, 1, dtype=torch.float64) for _ in range(3)]
    with torch.no_grad():
        for _ in range(3):  # past the left context: the caches are at their bound
            states = [s for _, s in enc.step_batch(xs, states)]
        assert all(isinstance(s.kv, SlotKV) for s in states)
        pool = _pool(states[0])
        assert pool.used == 3
        old = states
        states = [s for _, s in enc.step_batch(xs, states)]
        with pytest.raises(RuntimeError, match="consumed"):
            enc.step(xs[0], old[0])
        with pytest.raises(RuntimeError, match="consumed"):
            enc.step_batch(xs[:2], old[:2])
        with pytest.raises(RuntimeError, match="twice"):
            enc.step_batch(xs[:2], [states[0], states[0]])
        y, alone = enc.step(xs[0], states[0])  # step leaves the slot as it is
        again, _ = enc.step(xs[0], states[0])
        assert torch.equal(y, again)
    del old, states, alone
    gc.collect()
    assert pool.used == 0 and pool.capacity == 0  # every slot released, the memory given back
