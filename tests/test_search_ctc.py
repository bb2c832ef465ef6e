"""CTC greedy / prefix beam search / forced alignment against brute force over all frame paths."""

import itertools
import math
from pathlib import Path

import pytest
import torch

from asr.search import (CtcGreedyState, ctc_forced_align, ctc_forced_align_batch, ctc_greedy,
                        ctc_greedy_step, ctc_prefix_beam_search)


def _collapse(path, blank=0):
    out, prev = [], None
    for c in path:
        if c != prev and c != blank:
            out.append(c)
        prev = c
    return tuple(out)


def _all_paths(logp):
    """Yield (path, log-probability) for every frame path."""
    T, V = logp.shape
    lp = logp.double().tolist()
    for path in itertools.product(range(V), repeat=T):
        yield path, sum(lp[t][c] for t, c in enumerate(path))


def _sequence_logprobs(logp):
    """Label sequence -> log of the summed probability of its frame paths."""
    probs = {}
    for path, score in _all_paths(logp):
        key = _collapse(path)
        probs[key] = probs.get(key, 0.0) + math.exp(score)
    return {k: math.log(v) for k, v in probs.items()}


def _random_logp(T, V, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(T, V, generator=g)).log_softmax(-1)


# -- greedy -------------------------------------------------------------------------------------

def test_greedy_collapses_and_reports_run_starts():
    labels = torch.tensor([1, 1, 0, 1, 3, 3, 0, 0, 2])
    logp = torch.nn.functional.one_hot(labels, 4).float().log()
    out = ctc_greedy(logp)
    assert out.tokens == [1, 1, 3, 2]
    assert out.frames == [0, 3, 4, 8]


@pytest.mark.parametrize("seed", range(5))
def test_streaming_greedy_equals_whole_utterance(seed):
    g = torch.Generator().manual_seed(seed)
    # few labels so that runs often straddle block boundaries
    logp = _random_logp(40, 3, seed, scale=0.5)
    whole = ctc_greedy(logp)
    cuts = sorted(torch.randint(0, 41, (6,), generator=g).tolist())
    state, tokens, frames = CtcGreedyState(), [], []
    for a, b in zip([0] + cuts, cuts + [40]):
        out, state = ctc_greedy_step(logp[a:b], state)
        tokens += out.tokens
        frames += out.frames
    assert (tokens, frames) == (whole.tokens, whole.frames)
    assert state.num_frames == 40


# -- prefix beam search -------------------------------------------------------------------------

@pytest.mark.parametrize("T,V,seed", [(4, 3, 0), (5, 4, 1), (6, 3, 2), (6, 4, 3)])
def test_prefix_beam_search_equals_brute_force(T, V, seed):
    logp = _random_logp(T, V, seed)
    truth = _sequence_logprobs(logp)
    # a beam wider than the number of distinct prefixes makes the search exact
    nbest = ctc_prefix_beam_search(logp, beam=len(truth) + 1, token_topk=None)
    assert len(nbest) == len(truth)
    for hyp in nbest:
        assert hyp.score == pytest.approx(truth[tuple(hyp.tokens)], abs=1e-9)
    ranked = sorted(truth.values(), reverse=True)
    assert [h.score for h in nbest] == pytest.approx(ranked, abs=1e-9)


def test_prefix_beam_search_small_beam_is_sorted_and_merged():
    logp = _random_logp(30, 6, seed=7)
    nbest = ctc_prefix_beam_search(logp, beam=4, token_topk=3)
    assert len(nbest) == 4
    scores = [h.score for h in nbest]
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(h.tokens) for h in nbest}) == 4
    # the greedy path's label sequence is at least as probable as its single best path
    best_path = logp.max(-1).values.sum().item()
    assert nbest[0].score >= best_path - 1e-6


# -- forced alignment ---------------------------------------------------------------------------

def _brute_viterbi(logp, tokens):
    best, best_path = -math.inf, None
    for path, score in _all_paths(logp):
        if list(_collapse(path)) == list(tokens) and score > best:
            best, best_path = score, path
    return best, best_path


@pytest.mark.parametrize("T,V,tokens,seed", [(5, 3, [1, 2], 0), (6, 4, [3, 3], 1),
                                             (6, 4, [1, 3, 1], 2), (4, 3, [], 3),
                                             (5, 4, [2, 2, 2], 4)])
def test_forced_align_equals_brute_force(T, V, tokens, seed):
    logp = _random_logp(T, V, seed)
    score, path = _brute_viterbi(logp, tokens)
    out = ctc_forced_align(logp, tokens)
    assert out.path.tolist() == list(path)
    assert out.score.item() == pytest.approx(score, abs=1e-4)
    # spikes: monotonic, one per token, each at the first frame of its run
    frames = out.token_frames.tolist()
    assert len(frames) == len(tokens) and frames == sorted(set(frames))
    for k, t in enumerate(frames):
        assert path[t] == tokens[k] and (t == 0 or path[t - 1] != path[t])
    assert ctc_greedy(torch.nn.functional.one_hot(out.path, V).float().log()).frames == frames


def test_forced_align_matches_torchaudio():
    functional = pytest.importorskip("torchaudio.functional")
    if not hasattr(functional, "forced_align"):
        pytest.skip("torchaudio.functional.forced_align is not available")
    for seed in range(5):
        logp = _random_logp(50, 12, seed)
        tokens = torch.randint(1, 12, (15,), generator=torch.Generator().manual_seed(seed))
        ours = ctc_forced_align(logp, tokens)
        ref, ref_scores = functional.forced_align(logp[None], tokens[None].int(), blank=0)
        assert ours.path.tolist() == ref[0].tolist()
        assert ours.score.item() == pytest.approx(ref_scores.sum().item(), abs=1e-3)


def test_forced_align_batch_equals_single():
    g = torch.Generator().manual_seed(0)
    B, T, V = 4, 30, 8
    logp = (2 * torch.randn(B, T, V, generator=g)).log_softmax(-1)
    lens = torch.tensor([30, 17, 25, 9])
    token_lens = torch.tensor([10, 5, 0, 4])
    tokens = torch.randint(1, V, (B, 10), generator=g)
    out = ctc_forced_align_batch(logp, lens, tokens, token_lens)
    for b in range(B):
        single = ctc_forced_align(logp[b, : lens[b]], tokens[b, : token_lens[b]])
        assert out.path[b, : lens[b]].tolist() == single.path.tolist()
        assert (out.path[b, lens[b]:] == -1).all()
        assert out.token_frames[b, : token_lens[b]].tolist() == single.token_frames.tolist()
        assert (out.token_frames[b, token_lens[b]:] == -1).all()
        assert out.score[b].item() == pytest.approx(single.score.item(), abs=1e-4)


def test_forced_align_rejects_too_few_frames():
    with pytest.raises(ValueError, match="need at least 4"):
        ctc_forced_align(_random_logp(3, 4, 0), [1, 1, 2])


def test_forced_align_keeps_torch_threads():
    """numba's first parallel launch must not change the thread count torch was given (it reset it
    to one per core: `asr decode --threads 1 --decoder bsbs` ran on 2 threads)."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1)\n"
            "from asr.search.ctc import ctc_forced_align\n"
            "ctc_forced_align(torch.randn(30, 12).log_softmax(-1), [3, 4, 4, 5])\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "NUMBA_NUM_THREADS": "2"}, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "1"
