"""BeamKVCache (appends into spare room, one copy per kept row) behaves as the immutable KVCache:
the same keys/values after any mix of appends and selects, also when one state is stepped twice
(the blockwise search's backoff) or grows past its buffer; and LM fusion scores equal with both."""

import torch

from asr.attention import BeamKVCache, KVCache
from asr.attention.kv_cache import SPARE
from asr.models import LMConfig, TransformerLM
from asr.models.lm import LMScorer, LMState


def _same(a: KVCache, b: KVCache) -> None:
    assert (a.start, a.length) == (b.start, b.length)
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)


def test_beam_cache_equals_kv_cache():
    torch.manual_seed(0)
    plain, beam = KVCache.empty(1, 2, 4, None, start=3), BeamKVCache.empty(1, 2, 4, None, start=3)
    for step in range(2 * SPARE + 5):  # past the first buffers' room, twice
        if step in (1, 9, 40):
            index = torch.tensor([0, 0, 0]) if step == 1 else torch.tensor([2, 0, 1])
            plain, beam = plain.select(index), beam.select(index)
        t = 3 if step == 20 else 1
        k, v = torch.randn(plain.k.shape[0], 2, t, 4), torch.randn(plain.k.shape[0], 2, t, 4)
        plain, beam = plain.append(k, v), beam.append(k, v)
        _same(plain, beam)


def test_beam_cache_stepped_twice_from_one_state():
    """The second append to the same state must not change what the first one returned."""
    base = BeamKVCache.empty(2, 1, 3).append(torch.ones(2, 1, 2, 3), torch.ones(2, 1, 2, 3))
    first = base.append(torch.full((2, 1, 1, 3), 5.0), torch.full((2, 1, 1, 3), 6.0))
    kept = first.k.clone(), first.v.clone()
    second = base.append(torch.full((2, 1, 1, 3), 7.0), torch.full((2, 1, 1, 3), 8.0))
    assert torch.equal(first.k, kept[0]) and torch.equal(first.v, kept[1])
    assert second.k[0, 0, 2, 0] == 7.0 and base.length == 2
    third = first.append(torch.zeros(2, 1, 1, 3), torch.zeros(2, 1, 1, 3))  # its own buffer's end
    assert third.length == 4 and torch.equal(third.k[:, :, :3], kept[0])


def test_lm_scores_equal_with_either_cache():
    torch.manual_seed(1)
    lm = TransformerLM(20, LMConfig(d_model=16, n_heads=2, n_layers=2, dropout=0.0)).double().eval()
    scorer = LMScorer(lm)
    beam, plain = scorer.init_state(None), LMState(lm.empty_caches(1, torch.device("cpu")))
    assert isinstance(beam.caches[0], BeamKVCache)
    prefixes = torch.full((1, 1), 1)
    for step in range(40):
        got, beam = scorer.score(prefixes, beam, None)
        want, plain = scorer.score(prefixes, plain, None)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        index = torch.tensor([0, 0, 0]) if step == 0 else torch.tensor([1, 2, 0])
        token = torch.tensor([3 + step % 5, 4, 7])
        beam, plain = scorer.select_state(beam, index, token), scorer.select_state(plain, index, token)
        prefixes = torch.cat([prefixes[index], token[:, None]], dim=1)
