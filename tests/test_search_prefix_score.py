"""CTCPrefixScorer: prefix probabilities against brute force; incremental extension over new
frames equals scoring from scratch."""

import itertools
import math

import pytest
import torch

from asr.search import CTCPrefixScorer, Memory

EOS = 2


def _collapse(path):
    out, prev = [], None
    for c in path:
        if c != prev and c != 0:
            out.append(c)
        prev = c
    return out


def _brute(logp, prefix, exact):
    """log P(labels start with prefix) (or == prefix if exact), summing over all frame paths."""
    T, V = logp.shape
    lp = logp.double().tolist()
    total = 0.0
    for path in itertools.product(range(V), repeat=T):
        labels = _collapse(path)
        if labels == prefix if exact else labels[: len(prefix)] == prefix:
            total += math.exp(sum(lp[t][c] for t, c in enumerate(path)))
    return math.log(total) if total > 0 else -math.inf


def _random_logp(T, V, seed):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(T, V, generator=g, dtype=torch.float64)).log_softmax(-1)


def _walk(scorer, memories, paths, vocab):
    """Grow all prefixes in ``paths`` (equal lengths) token by token; the memory for step ``i`` is
    ``memories[i]``. Returns accumulated scores (N,) of each path + <eos> scores (N,) at the end,
    and the final state."""
    n = len(paths)
    state = scorer.init_state(memories[0])
    prefixes = torch.full((1, 1), EOS)
    index = torch.zeros(n, dtype=torch.long)
    acc = torch.zeros(n, dtype=torch.float64)
    cands = torch.arange(vocab).expand(1, vocab)
    for i in range(len(paths[0])):
        logp, new = scorer.score_partial(prefixes, state, memories[i], cands.expand(len(prefixes), vocab))
        token = torch.tensor([p[i] for p in paths])
        acc = acc[index] if i else acc
        acc = acc + logp[index, token].double()
        state = scorer.select_state(new, index, token)
        prefixes = torch.cat([prefixes[index], token[:, None]], dim=1)
        index = torch.arange(n)
    logp, _ = scorer.score_partial(prefixes, state, memories[-1], cands.expand(n, vocab))
    return acc, logp[:, EOS].double(), state


@pytest.mark.parametrize("T,seed", [(4, 0), (5, 1)])
def test_prefix_scores_equal_brute_force(T, seed):
    V = 4
    logp = _random_logp(T, V, seed)
    memory = Memory(ctc_logp=logp)
    paths = [[1, 3], [3, 3], [1, 1], [3, 1]]
    acc, end, _ = _walk(CTCPrefixScorer(eos=EOS), [memory] * 3, paths, V)
    for i, p in enumerate(paths):
        assert acc[i].item() == pytest.approx(_brute(logp, p, exact=False), abs=1e-9)
        assert (acc[i] + end[i]).item() == pytest.approx(_brute(logp, p, exact=True), abs=1e-9)


def test_blank_gets_no_score_and_non_candidates_are_minus_inf():
    logp = _random_logp(6, 5, 0)
    memory = Memory(ctc_logp=logp)
    scorer = CTCPrefixScorer(eos=EOS)
    out, _ = scorer.score_partial(torch.full((1, 1), EOS), scorer.init_state(memory), memory,
                                  torch.tensor([[0, 3, 2]]))
    assert out[0, 0] == -torch.inf and out[0, 1] == -torch.inf and out[0, 4] == -torch.inf
    assert torch.isfinite(out[0, [2, 3]]).all()


@pytest.mark.parametrize("cuts", [[3, 7], [1, 3, 9], [5]])
def test_incremental_extension_equals_from_scratch(cuts):
    """Frames arrive in pieces while prefixes grow; scores and forward variables equal those
    computed with all frames available from the start."""
    T, V = 12, 6
    logp = _random_logp(T, V, seed=len(cuts))
    paths = [[1, 4, 4, 3], [5, 1, 3, 3], [4, 4, 1, 5]]
    bounds = cuts + [T] * (len(paths[0]) + 1 - len(cuts))
    growing = [Memory(ctc_logp=logp[:b]) for b in bounds]
    full = [Memory(ctc_logp=logp)] * len(bounds)
    scorer = CTCPrefixScorer(eos=EOS)
    acc_inc, end_inc, state_inc = _walk(scorer, growing, paths, V)
    acc_ref, end_ref, state_ref = _walk(scorer, full, paths, V)
    # accumulated score telescopes to the prefix probability over the last memory: all frames
    assert torch.allclose(acc_inc, acc_ref, atol=1e-9)
    assert torch.allclose(end_inc, end_ref, atol=1e-9)
    assert torch.allclose(state_inc.r_n, state_ref.r_n, atol=1e-9)
    assert torch.allclose(state_inc.r_b, state_ref.r_b, atol=1e-9)
    assert torch.allclose(state_inc.column, state_ref.column, atol=1e-9)


def test_prefix_impossible_so_far_stays_impossible():
    """[4, 4] cannot be emitted by 2 frames; the search drops it, and the scorer never revives it
    (no -inf - -inf = nan or +inf increments) even when more frames arrive."""
    logp = _random_logp(8, 6, 0)
    memories = [Memory(ctc_logp=logp[:2])] * 2 + [Memory(ctc_logp=logp)] * 2
    acc, _, _ = _walk(CTCPrefixScorer(eos=EOS), memories, [[4, 4, 1]], 6)
    assert acc[0] == -torch.inf


def test_extend_keeps_old_frames_and_matches_brute_force():
    logp = _random_logp(6, 4, 3)
    scorer = CTCPrefixScorer(eos=EOS)
    mem = Memory(ctc_logp=logp[:3])
    _, new = scorer.score_partial(torch.full((1, 1), EOS), scorer.init_state(mem), mem,
                                  torch.tensor([[1, 3]]))
    child = scorer.select_state(new, torch.tensor([0]), torch.tensor([3]))
    grown = scorer.extend(child, torch.tensor([[EOS, 3]]), mem.append(ctc_logp=logp[3:]))
    assert grown.num_frames == 6
    assert torch.equal(grown.r_n[:4], child.r_n) and torch.equal(grown.r_b[:4], child.r_b)
    end = torch.logaddexp(grown.r_n[-1], grown.r_b[-1]).item()
    assert end == pytest.approx(_brute(logp, [3], exact=True), abs=1e-9)
