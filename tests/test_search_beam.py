"""Joint beam search, attention rescoring and blockwise synchronous beam search with toy scorers."""

import itertools
import math
from dataclasses import dataclass

import pytest
import torch

from asr.search import (BeamSearch, BeamSearchConfig, BlockwiseBeamSearch, BsbsConfig,
                        CTCPrefixScorer, Memory, ctc_prefix_beam_search, rescore)

EOS = 2


@dataclass(frozen=True)
class _RnnState:
    h: torch.Tensor  # (N, H)


class ToyDecoder:
    """A deterministic recurrent 'attention decoder': the hidden state sees the previous token and
    the mean of the memory frames received so far (mean pooling stands in for cross-attention)."""

    def __init__(self, vocab, dim_in, hidden=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
        self.rec = torch.randn(hidden, hidden, generator=g, dtype=torch.float64) / hidden ** 0.5
        self.ctx = torch.randn(dim_in, hidden, generator=g, dtype=torch.float64)
        self.out = 2 * torch.randn(hidden, vocab, generator=g, dtype=torch.float64)
        self.hidden = hidden

    def init_state(self, memory):
        return _RnnState(torch.zeros(1, self.hidden, dtype=torch.float64))

    def score(self, prefixes, states, memory):
        ctx = memory.enc.double().mean(0) @ self.ctx
        h = torch.tanh(states.h @ self.rec + self.embed[prefixes[:, -1]] + ctx)
        return (h @ self.out).log_softmax(-1), _RnnState(h)

    def select_state(self, states, index, token):
        return _RnnState(states.h[index])


def _teacher_forced(dec, memory, tokens):
    state, total, prev = dec.init_state(memory), 0.0, EOS
    for tok in list(tokens) + [EOS]:
        logp, state = dec.score(torch.tensor([[prev]]), state, memory)
        total += logp[0, tok].item()
        prev = tok
    return total


def _ctc_logprob(logp, tokens):
    if not tokens:
        return logp[:, 0].double().sum().item()
    return -torch.nn.functional.ctc_loss(
        logp.double()[:, None], torch.tensor([tokens]), torch.tensor([len(logp)]),
        torch.tensor([len(tokens)]), reduction="sum", zero_infinity=False).item()


def _ctc_logp(T, V, seed, scale=2.0):
    """Random CTC log-probabilities where <sos/eos> (id 2) is practically never emitted."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(T, V, generator=g, dtype=torch.float64)
    logits[:, EOS] = -30.0
    return logits.log_softmax(-1)


def _peaky(tokens, frames_per_token, V, seed, noise=0.5):
    """CTC log-probs that clearly spell ``tokens``: one spike then blanks per token."""
    g = torch.Generator().manual_seed(seed)
    T = len(tokens) * frames_per_token
    logits = noise * torch.randn(T, V, generator=g, dtype=torch.float64)
    logits[:, 0] += 4.0
    for k, tok in enumerate(tokens):
        logits[k * frames_per_token, tok] += 8.0
    logits[:, EOS] = -30.0
    return logits.log_softmax(-1)


def _memory(T, V, seed, D=5):
    g = torch.Generator().manual_seed(seed + 100)
    return Memory(enc=torch.randn(T, D, generator=g, dtype=torch.float64),
                  ctc_logp=_ctc_logp(T, V, seed))


# -- offline joint beam search ------------------------------------------------------------------

def test_ctc_only_search_with_wide_beam_finds_the_most_probable_sequence():
    T, V = 4, 5
    logp = _ctc_logp(T, V, seed=0)
    truth = {}
    for path in itertools.product(range(V), repeat=T):
        labels = tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or path[i - 1] != c))
        truth[labels] = truth.get(labels, 0.0) + math.exp(sum(logp[t, c] for t, c in enumerate(path)))
    truth = sorted(((math.log(p), k) for k, p in truth.items() if EOS not in k), reverse=True)
    search = BeamSearch({"ctc": CTCPrefixScorer()}, {"ctc": 1.0},
                        BeamSearchConfig(beam_size=100, end_detect=False))
    nbest = search(Memory(ctc_logp=logp))
    for hyp, (score, labels) in zip(nbest[:5], truth[:5]):
        assert tuple(hyp.tokens) == labels
        assert hyp.score == pytest.approx(score, abs=1e-6)


def test_decoder_only_beam_one_is_greedy():
    memory = _memory(12, 7, seed=1)
    dec = ToyDecoder(7, 5)
    tokens, state, prev = [], dec.init_state(memory), EOS
    for _ in range(12):
        logp, state = dec.score(torch.tensor([[prev]]), state, memory)
        logp[0, 0] = -math.inf  # blank is never emitted
        prev = int(logp.argmax())
        if prev == EOS:
            break
        tokens.append(prev)
    search = BeamSearch({"decoder": dec}, {"decoder": 1.0}, BeamSearchConfig(beam_size=1))
    assert search(memory)[0].tokens == tokens


@pytest.mark.parametrize("seed", range(3))
def test_joint_scores_are_exact_sums_of_scorer_log_probs(seed):
    memory = _memory(10, 6, seed)
    dec = ToyDecoder(6, 5, seed=seed)
    weights = {"decoder": 0.6, "ctc": 0.4, "length_bonus": 0.3}
    search = BeamSearch({"decoder": dec, "ctc": CTCPrefixScorer()}, weights,
                        BeamSearchConfig(beam_size=4))
    nbest = search(memory)
    assert nbest and [h.score for h in nbest] == sorted([h.score for h in nbest], reverse=True)
    for hyp in nbest:
        assert hyp.scores["ctc"] == pytest.approx(_ctc_logprob(memory.ctc_logp, hyp.tokens), abs=1e-6)
        assert hyp.scores["decoder"] == pytest.approx(_teacher_forced(dec, memory, hyp.tokens),
                                                      abs=1e-6)
        total = 0.6 * hyp.scores["decoder"] + 0.4 * hyp.scores["ctc"] + 0.3 * (len(hyp.tokens) + 1)
        assert hyp.score == pytest.approx(total, abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_nbest_one_stops_early_with_the_same_best_hypothesis(seed):
    """Scores only fall (no length bonus), so the search may stop once no live hypothesis can
    beat the best ended one: same best hypothesis and score, fewer expansions."""
    memory = _memory(24, 7, seed)
    scorers = {"decoder": ToyDecoder(7, 5, seed=seed), "ctc": CTCPrefixScorer()}
    weights = {"decoder": 0.6, "ctc": 0.4}
    steps = {}
    best = {}
    for nbest in (None, 1):
        search = BeamSearch(scorers, weights, BeamSearchConfig(beam_size=4, nbest=nbest, end_detect=False))
        calls = 0
        expand = search.expand

        def counted(*a, **k):
            nonlocal calls
            calls += 1
            return expand(*a, **k)

        search.expand = counted
        result = search(memory)
        best[nbest], steps[nbest] = (result[0].tokens, result[0].score), calls
    assert best[1][0] == best[None][0] and best[1][1] == pytest.approx(best[None][1], abs=1e-12)
    assert steps[1] < steps[None]
    with pytest.raises(ValueError, match="nbest"):
        BeamSearchConfig(beam_size=4, nbest=5)


def test_unknown_or_missing_weight_is_an_error():
    with pytest.raises(ValueError, match="no weight for scorer"):
        BeamSearch({"ctc": CTCPrefixScorer()}, {})
    with pytest.raises(ValueError, match="name no scorer"):
        BeamSearch({"ctc": CTCPrefixScorer()}, {"ctc": 1.0, "lm": 0.5})


def test_attention_rescoring():
    memory = _memory(15, 6, seed=4)
    dec = ToyDecoder(6, 5, seed=4)
    nbest = ctc_prefix_beam_search(memory.ctc_logp, beam=5)
    out = rescore(nbest, {"decoder": dec}, {"ctc": 0.3, "decoder": 0.7}, memory)
    assert sorted(map(tuple, (h.tokens for h in out))) == sorted(map(tuple, (h.tokens for h in nbest)))
    for hyp in out:
        att = _teacher_forced(dec, memory, hyp.tokens)
        assert hyp.scores["decoder"] == pytest.approx(att, abs=1e-6)
        assert hyp.score == pytest.approx(0.3 * hyp.scores["ctc"] + 0.7 * att, abs=1e-6)
    assert [h.score for h in out] == sorted([h.score for h in out], reverse=True)


# -- blockwise synchronous beam search ----------------------------------------------------------

def _same(a, b):
    assert [h.tokens for h in a] == [h.tokens for h in b]
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("repetition_test", [True, False])
def test_bsbs_single_block_equals_offline(seed, repetition_test):
    memory = _memory(16, 7, seed)
    scorers = {"decoder": ToyDecoder(7, 5, seed=seed), "ctc": CTCPrefixScorer()}
    weights = {"decoder": 0.5, "ctc": 0.5, "length_bonus": 0.5}
    cfg = BsbsConfig(beam_size=3, repetition_test=repetition_test)
    offline = BeamSearch(scorers, weights, cfg)(memory)
    bsbs = BlockwiseBeamSearch(scorers, weights, cfg)
    bsbs.extend_block(memory.enc, memory.ctc_logp)
    _same(bsbs.finalize(), offline)


@pytest.mark.parametrize("block", [2, 3, 5])
@pytest.mark.parametrize("repetition_test", [True, False])
def test_bsbs_streams_a_clear_utterance(block, repetition_test):
    V, truth = 12, [3, 5, 4, 9, 6, 1, 11]
    ctc_logp = _peaky(truth, 3, V, seed=block)
    enc = torch.randn(len(ctc_logp), 5, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)
    scorers = {"decoder": ToyDecoder(V, 5, seed=1), "ctc": CTCPrefixScorer()}
    weights = {"decoder": 0.1, "ctc": 0.9, "length_bonus": 0.5}
    # the toy decoder is random: let CTC see every token rather than the decoder's pre-beam
    cfg = BsbsConfig(beam_size=3, pre_beam_size=V, repetition_test=repetition_test)
    offline = BeamSearch(scorers, weights, cfg)(Memory(enc, ctc_logp))
    assert offline[0].tokens == truth
    bsbs = BlockwiseBeamSearch(scorers, weights, cfg)
    partials = []
    for a in range(0, len(ctc_logp), block):
        partials.append(bsbs.extend_block(enc[a : a + block], ctc_logp[a : a + block]).tokens)
    final = bsbs.finalize()
    assert final[0].tokens == truth
    assert len(partials[-1]) >= 2 and len(partials[0]) <= 2
    # <eos> is tempting at the end of each block (blanks follow the last spike): backoff ran
    assert bsbs.steps_backed_off > 0
    # the CTC part is the exact sequence probability over the whole utterance
    assert final[0].scores["ctc"] == pytest.approx(_ctc_logprob(ctc_logp, truth), abs=1e-6)


def test_bsbs_without_backoff_keeps_every_committed_step():
    truth = [3, 5, 4, 6, 3]
    ctc_logp = _peaky(truth, 3, 7, seed=0)
    scorers = {"ctc": CTCPrefixScorer()}
    bsbs = BlockwiseBeamSearch(scorers, {"ctc": 1.0}, BsbsConfig(beam_size=2, backoff=False))
    lengths = []
    for a in range(0, len(ctc_logp), 3):
        lengths.append(len(bsbs.extend_block(ctc_logp=ctc_logp[a : a + 3]).tokens))
    assert lengths == sorted(lengths) and bsbs.steps_backed_off == 0
    assert bsbs.finalize()[0].tokens == truth


def test_bsbs_ctc_trigger_keeps_the_beam_behind_the_ctc_spikes():
    """With ctc_trigger the partial never holds more tokens than greedy CTC has seen, and the
    final result is unchanged."""
    truth = [3, 5, 4, 6, 3, 5]
    V = 8
    ctc_logp = _peaky(truth, 3, V, seed=2)
    enc = torch.randn(len(ctc_logp), 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scorers = {"decoder": ToyDecoder(V, 5, seed=1), "ctc": CTCPrefixScorer()}
    weights = {"decoder": 0.1, "ctc": 0.9}
    finals = []
    for trigger in (False, True):
        bsbs = BlockwiseBeamSearch(scorers, weights, BsbsConfig(beam_size=3, pre_beam_size=V, ctc_trigger=trigger,
                                                                 repetition_test=False))
        for a in range(0, len(ctc_logp), 2):
            part = bsbs.extend_block(enc[a : a + 2], ctc_logp[a : a + 2])
            spikes = sum(1 for t in range(0, a + 2) if t % 3 == 0 and t < len(ctc_logp))
            assert bsbs.ctc_tokens == spikes
            if trigger:
                assert len(part.tokens) <= spikes
        finals.append(bsbs.finalize()[0].tokens)
    assert finals == [truth, truth]


def test_bsbs_ctc_trigger_tests_repetitions_only_at_the_acoustic_frontier():
    """The paper's rule stops at a token that recurs; with ctc_trigger a repeat well behind greedy
    CTC's token count is taken as real, and the beam runs on up to that count."""
    truth = [3, 5, 3, 4, 6, 1]  # 3 recurs at the third token, far behind the 6 CTC spikes
    ctc_logp = _peaky(truth, 3, 7, seed=0)
    scorers = {"ctc": CTCPrefixScorer()}
    lengths = {}
    for trigger in (False, True):
        bsbs = BlockwiseBeamSearch(scorers, {"ctc": 1.0}, BsbsConfig(beam_size=1, backoff=False, ctc_trigger=trigger))
        bsbs.extend_block(ctc_logp=ctc_logp)  # one block holding all of it
        lengths[trigger] = len(bsbs.best().tokens)
        assert bsbs.finalize()[0].tokens == truth
    assert lengths == {False: 2, True: 6}


@pytest.mark.parametrize("slack", [0, 2])
@pytest.mark.parametrize("block", [2, 3, 5])
def test_bsbs_end_of_stream_defers_the_last_blocks_to_the_final_search(block, slack):
    """After end_of_stream the blocks are only taken in (no expansion, the partial stays), and the
    n-best equals handing their frames to finalize at once; before it the search is unchanged."""
    V, truth = 12, [3, 5, 4, 9, 6, 1, 11, 3]
    ctc_logp = _peaky(truth, 3, V, seed=block)
    enc = torch.randn(len(ctc_logp), 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scorers = {"decoder": ToyDecoder(V, 5, seed=1), "ctc": CTCPrefixScorer()}
    weights = {"decoder": 0.3, "ctc": 0.7}
    cfg = BsbsConfig(beam_size=3, pre_beam_size=V, nbest=1, ctc_trigger=True, trigger_slack=slack)
    cut = (len(ctc_logp) // block - 2) * block  # the last two blocks come after end_of_stream
    calls = []
    expand = BeamSearch.expand

    def counted(self, *args, **kwargs):
        calls.append(1)
        return expand(self, *args, **kwargs)

    def head():
        bsbs = BlockwiseBeamSearch(scorers, weights, cfg)
        parts = [bsbs.extend_block(enc[a:a + block], ctc_logp[a:a + block]).tokens for a in range(0, cut, block)]
        return bsbs, parts

    deferred, parts = head()
    deferred.end_of_stream()
    BeamSearch.expand = counted
    try:
        for a in range(cut, len(ctc_logp), block):
            assert deferred.extend_block(enc[a:a + block], ctc_logp[a:a + block]).tokens == parts[-1]
    finally:
        BeamSearch.expand = expand
    assert not calls and deferred.memory.num_frames == len(ctc_logp)
    at_once, parts_at_once = head()
    assert parts_at_once == parts
    _same(deferred.finalize(), at_once.finalize(enc[cut:], ctc_logp[cut:]))


def test_bsbs_trigger_slack_lets_the_beam_run_past_the_ctc_count():
    """trigger_slack = s: a block's beam grows to s tokens more than greedy CTC has seen (a
    decoder-only search, so that no CTC prefix score holds it back; the CTC log-probs only count)."""
    truth = [3, 5, 4, 6, 1, 5]
    ctc_logp = _peaky(truth, 3, 7, seed=0)
    enc = torch.randn(len(ctc_logp), 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lengths = []
    for slack in (0, 1, 2):
        bsbs = BlockwiseBeamSearch({"decoder": ToyDecoder(7, 5, seed=2)}, {"decoder": 1.0},
                                   BsbsConfig(beam_size=2, backoff=False, repetition_test=False, ctc_trigger=True,
                                              trigger_slack=slack))
        bsbs.extend_block(enc[:7], ctc_logp[:7])  # spikes at frames 0, 3, 6: 3 tokens seen
        assert bsbs.ctc_tokens == 3
        lengths.append(len(bsbs.best().tokens))
    assert lengths == [3, 4, 5]


def test_max_length_forces_eos_even_outside_the_pre_beam():
    memory = _memory(20, 9, seed=5)
    scorers = {"decoder": ToyDecoder(9, 5, seed=5), "ctc": CTCPrefixScorer()}
    cfg = BeamSearchConfig(beam_size=2, pre_beam_size=3, maxlen_ratio=0.1)
    nbest = BeamSearch(scorers, {"decoder": 0.5, "ctc": 0.5, "length_bonus": 5.0}, cfg)(memory)
    assert nbest and all(len(h.tokens) <= 2 for h in nbest)
    assert max(len(h.tokens) for h in nbest) == 2  # the bonus pushes to the limit
