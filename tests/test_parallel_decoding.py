"""Blockwise parallel decoding (asr.search.parallel) gives exactly the greedy output, in fewer passes
when the drafts are right."""

import pytest
import torch

from asr.models.config import DecoderConfig
from asr.models.decoder import AttentionDecoder, DecoderScorer
from asr.search import BeamSearch, BeamSearchConfig, BlockwiseBeamSearch, BsbsConfig, CTCPrefixScorer, Memory
from asr.search.parallel import (CtcDraft, ParallelConfig, ParallelDecoderScorer, _Alignment,
                                 blockwise_parallel_greedy, greedy_attention)
from asr.tokenizer import BLANK, SOS_EOS

CONFIGS = [ParallelConfig(k=1, rows=1, aligns=1), ParallelConfig(k=8, rows=1, aligns=1),
           ParallelConfig(k=4), ParallelConfig(k=8, rows=6, aligns=3)]


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    dec = AttentionDecoder(40, 24, DecoderConfig(d_model=32, n_heads=4, n_layers=2, ff_mult=2, dropout=0.0)).eval()
    with torch.no_grad():
        dec.out.bias[SOS_EOS] -= 2.0  # random weights: make <eos> rarer so hypotheses get long
    return dec


def _recompute_greedy(decoder, enc, max_len):
    """Greedy decoding that runs the whole prefix at every step (no cache): the plain reference."""
    prefix = [SOS_EOS]
    with torch.no_grad():
        while len(prefix) - 1 < max_len:
            tok = int(decoder.logits(torch.tensor([prefix]), enc[None], None)[0, -1].argmax())
            if tok == SOS_EOS:
                break
            prefix.append(tok)
    return prefix[1:]


def _noisy(tokens):
    """Substitutions, a deletion and an insertion."""
    out = list(tokens)
    for i in range(0, len(out), 4):
        out[i] = (out[i] + 7) % 40
    return out[:5] + out[6:9] + [11] + out[9:]


@pytest.mark.parametrize("seed", range(3))
def test_greedy_attention_equals_recomputed_greedy(decoder, seed):
    enc = torch.randn(30, 24, generator=torch.Generator().manual_seed(seed))
    ref = greedy_attention(decoder, enc, max_len=25)
    assert ref.tokens == _recompute_greedy(decoder, enc, 25)
    assert ref.passes == ref.rows == min(len(ref.tokens) + 1, 25)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_output_equals_greedy_whatever_the_drafts(decoder, seed, cfg):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(30, 24, generator=g)
    ref = greedy_attention(decoder, enc, max_len=25)
    logp = torch.randn(60, 40, generator=g).log_softmax(-1)
    drafts = [CtcDraft.of_tokens(t) for t in (ref.tokens, _noisy(ref.tokens), [], [SOS_EOS] * 5,
                                              torch.randint(3, 40, (40,), generator=g).tolist())]
    for draft in drafts + [CtcDraft.from_logp(logp)]:
        out = blockwise_parallel_greedy(decoder, enc, draft, max_len=25, cfg=cfg)
        assert out.tokens == ref.tokens
        assert out.passes <= ref.passes
        assert out.rows >= out.passes


@pytest.mark.parametrize("max_len", [1, 3, 7])
def test_max_len_stops_as_greedy_does(decoder, max_len):
    enc = torch.randn(30, 24, generator=torch.Generator().manual_seed(5))
    ref = greedy_attention(decoder, enc, max_len=40)
    for cfg in CONFIGS:
        out = blockwise_parallel_greedy(decoder, enc, CtcDraft.of_tokens(ref.tokens), max_len=max_len, cfg=cfg)
        assert out.tokens == ref.tokens[:max_len]


def test_right_drafts_take_one_pass_per_k_plus_one_tokens(decoder):
    enc = torch.randn(30, 24, generator=torch.Generator().manual_seed(3))
    ref = greedy_attention(decoder, enc, max_len=40)
    for k in (1, 4, 8):
        for rows in (1, 4):
            cfg = ParallelConfig(k=k, rows=rows)
            out = blockwise_parallel_greedy(decoder, enc, CtcDraft.of_tokens(ref.tokens), max_len=40, cfg=cfg)
            assert out.tokens == ref.tokens
            full = len(ref.tokens) == 40  # stopped by max_len: no pass for <eos>
            assert out.passes == -(-(len(ref.tokens) + (0 if full else 1)) // (k + 1))


def test_alignment_finds_where_the_output_stands_in_the_ctc_tokens():
    align = _Alignment([5, 9, 6, 7, 8]).appended(5).appended(4)
    assert align.best(2) == [2, 1]  # 4 for 9 or an extra 4 (distance 1 both): the furthest first
    align = _Alignment([5, 9, 6, 7, 8]).appended(5).appended(6).appended(7)  # CTC has an extra 9
    assert align.best(1) == [4]  # next is 8
    assert _Alignment([]).best(2) == [0]


def test_ctc_draft_collapses_repeats_and_blanks_and_keeps_second_best_at_spikes():
    ids = torch.tensor([BLANK, 5, 5, BLANK, 5, 7, 7, BLANK])
    logp = torch.nn.functional.one_hot(ids, 10).float().mul(4.0)
    logp[1, 3] = 1.0  # second best at the first 5's frames: 3 (at frame 1), 4 at its spike (frame 2)
    logp[2, 5] = 6.0
    logp[2, 4] = 2.0
    logp = logp.log_softmax(-1)
    draft = CtcDraft.from_logp(logp)
    assert draft.tokens == [5, 5, 7]
    assert draft.second[0] == 4
    assert CtcDraft.of_tokens([3, 4]) == CtcDraft([3, 4], [BLANK, BLANK])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="aligns"):
        ParallelConfig(aligns=0)


class _CountingScorer(DecoderScorer):
    calls = 0

    def score(self, prefixes, states, memory):
        self.calls += 1
        return super().score(prefixes, states, memory)


def _spiky_ctc(tokens, frames, g):
    """(frames, 40) CTC log-probabilities with noise and a spike for each of ``tokens`` in turn."""
    logits = torch.randn(frames, 40, generator=g)
    logits[:, BLANK] += 6.0
    for i, tok in enumerate([t for t in tokens if t > SOS_EOS][: frames // 2]):
        logits[2 * i + 1, tok] += 12.0
    return logits.log_softmax(-1)


BEAM_SCORERS = [dict(cfg=ParallelConfig(k=4, rows=1, aligns=1)),
                dict(cfg=ParallelConfig(k=4, rows=3, aligns=2), children=6, width=12, depth=6)]


@pytest.mark.parametrize("frames", [6, 20, 40])
@pytest.mark.parametrize("kwargs", BEAM_SCORERS, ids=["one draft", "drafts and shadow beam"])
def test_beam_search_with_parallel_scorer_gives_the_same_nbest(decoder, frames, kwargs):
    g = torch.Generator().manual_seed(frames)
    enc = torch.randn(frames, 24, generator=g)
    greedy = greedy_attention(decoder, enc, max_len=frames)
    memory = Memory(enc=enc, ctc_logp=_spiky_ctc(greedy.tokens, frames, g))
    weights = {"decoder": 0.7, "ctc": 0.3, "length_bonus": 0.2}
    cfg = BeamSearchConfig(beam_size=4)
    plain = _CountingScorer(decoder)
    ref = BeamSearch({"decoder": plain, "ctc": CTCPrefixScorer()}, weights, cfg)(memory)
    fast = ParallelDecoderScorer(decoder, **kwargs)
    out = BeamSearch({"decoder": fast, "ctc": CTCPrefixScorer()}, weights, cfg)(memory)
    assert [h.tokens for h in out] == [h.tokens for h in ref]
    for h, r in zip(out, ref):
        assert h.score == pytest.approx(r.score, abs=1e-4)
        assert h.scores["decoder"] == pytest.approx(r.scores["decoder"], abs=1e-4)
    assert 0 < fast.passes <= plain.calls
    assert fast.rows >= fast.passes


def test_parallel_scorer_saves_decoder_calls_when_ctc_agrees(decoder):
    g = torch.Generator().manual_seed(7)
    enc = torch.randn(60, 24, generator=g)
    truth = torch.randint(3, 40, (20,), generator=g).tolist()
    memory = Memory(enc=enc, ctc_logp=_spiky_ctc(truth, 60, g))
    weights = {"decoder": 0.1, "ctc": 0.9}
    cfg = BeamSearchConfig(beam_size=1, pre_beam_size=40)  # every token a candidate: CTC leads
    plain = _CountingScorer(decoder)
    ref = BeamSearch({"decoder": plain, "ctc": CTCPrefixScorer()}, weights, cfg)(memory)
    fast = ParallelDecoderScorer(decoder, ParallelConfig(k=4, rows=1, aligns=1))
    out = BeamSearch({"decoder": fast, "ctc": CTCPrefixScorer()}, weights, cfg)(memory)
    assert out[0].tokens == ref[0].tokens
    assert out[0].tokens[:20] == truth
    assert fast.passes * 2 <= plain.calls


@pytest.mark.parametrize("block", [4, 9])
def test_bsbs_with_parallel_scorer_gives_the_same_result(decoder, block):
    g = torch.Generator().manual_seed(block)
    enc = torch.randn(36, 24, generator=g)
    ctc_logp = _spiky_ctc(greedy_attention(decoder, enc, max_len=36).tokens, 36, g)
    weights = {"decoder": 0.7, "ctc": 0.3}
    finals = []
    for scorer in (DecoderScorer(decoder), ParallelDecoderScorer(decoder, children=4, width=8, depth=3)):
        bsbs = BlockwiseBeamSearch({"decoder": scorer, "ctc": CTCPrefixScorer()}, weights, BsbsConfig(beam_size=3))
        for a in range(0, 36, block):
            bsbs.extend_block(enc[a : a + block], ctc_logp[a : a + block])
        finals.append(bsbs.finalize())
    assert [h.tokens for h in finals[1]] == [h.tokens for h in finals[0]]
    assert [h.score for h in finals[1]] == pytest.approx([h.score for h in finals[0]], abs=1e-4)
