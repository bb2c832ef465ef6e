"""The block decoders' greedy step over many streams at once (numpy, asr/decode/greedy.py) equals
the per-stream greedy CTC of asr.search.ctc, block after block, with rows of different lengths,
greedy states, tentative tails and segment ends."""

import numpy as np
import pytest
import torch

from asr.decode import CtcGreedyDecoder, SarGreedyDecoder, Tokens
from asr.decode.greedy import greedy_spikes, label_rows
from asr.search.ctc import CtcGreedyState, ctc_greedy_labels
from asr.tokenizer import SOS_EOS

V = 5  # labels 0 (blank) .. 4: runs, repeats and blanks all occur often


def _labels(rng: np.random.Generator, n: int) -> list[int]:
    return rng.integers(0, V, n).tolist()


def test_greedy_spikes_equal_ctc_greedy_labels_per_row():
    rng = np.random.default_rng(0)
    for _ in range(50):
        B = int(rng.integers(1, 9))
        rows = [_labels(rng, int(rng.integers(0, 12))) for _ in range(B)]
        prev = rng.integers(0, V, B)
        offsets = rng.integers(0, 100, B)
        cuts = np.array([rng.integers(0, len(r) + 1) for r in rows])
        labels, lens = label_rows(rows)
        s = greedy_spikes(labels, lens, prev, offsets, cuts)
        for i, row in enumerate(rows):
            state = CtcGreedyState(int(prev[i]), int(offsets[i]))
            head, head_state = ctc_greedy_labels(row[:cuts[i]], state)
            tail, _ = ctc_greedy_labels(row[cuts[i]:], head_state)
            a, m, b = s.bounds[i], s.mids[i], s.bounds[i + 1]
            assert (s.tokens[a:m], s.frames[a:m]) == (head.tokens, head.frames)
            assert (s.tokens[m:b], s.frames[m:b]) == (tail.tokens, tail.frames)
            assert s.last[i] == head_state.prev_label


def test_label_rows_pads_ragged_rows():
    labels, lens = label_rows([[1, 2, 3], [4], []])
    assert labels.tolist() == [[1, 2, 3], [4, 0, 0], [0, 0, 0]] and lens.tolist() == [3, 1, 0]
    labels, lens = label_rows([[1, 2], [3, 4]])
    assert labels.tolist() == [[1, 2], [3, 4]] and lens.tolist() == [2, 2]
    assert label_rows([])[0].shape == (0, 0)


class _OldSarCommit:
    """The per-stream ``SarGreedyDecoder._commit`` before session 15 (two ctc_greedy_labels calls):
    the reference for the batched commit."""

    def __init__(self, g: int):
        self.g, self.state = g, CtcGreedyState()
        self.lm_inputs, self.committed, self.tentative = [SOS_EOS], Tokens(), Tokens()

    def commit(self, labels: list[int], final: bool) -> int:
        keep = 0 if final else min(self.g, len(labels))
        cut = len(labels) - keep
        head, head_state = ctc_greedy_labels(labels[:cut], self.state)
        tail, _ = ctc_greedy_labels(labels[cut:], head_state)
        self.lm_inputs = self.lm_inputs + head.tokens
        self.committed = self.committed + Tokens(head.tokens, head.frames)
        self.tentative = Tokens(tail.tokens, tail.frames)
        self.state = head_state
        return keep


def test_sar_commit_many_equals_the_per_stream_commit():
    """Windows of different lengths (carried tails of different g, a last short block), blocks
    that emit nothing, and a final commit; partial() is the same object until the tokens change and
    a partial taken earlier does not change afterwards."""
    rng = np.random.default_rng(1)
    gs = [0, 1, 2, 3, 2, 5]
    new = [SarGreedyDecoder(None, g) for g in gs]  # the commit reads no model
    old = [_OldSarCommit(g) for g in gs]
    held = [(d.partial(), d.partial().ids[:]) for d in new]
    for block in range(12):
        final = block == 11
        windows = [_labels(rng, int(rng.integers(1, 10))) if rng.random() > 0.2 else [0] * 6 for _ in gs]
        labels, lens = label_rows(windows)
        before = [d.partial() for d in new]
        keeps = SarGreedyDecoder._commit_many(new, labels, lens, final)
        assert keeps.tolist() == [o.commit(w, final) for o, w in zip(old, windows)]
        for d, o, p in zip(new, old, before):
            assert d.lm_inputs == o.lm_inputs
            assert (d.prev_label, d.num_frames) == (o.state.prev_label, o.state.num_frames)
            assert d.tentative == o.tentative
            assert d.partial() == o.committed + o.tentative
            assert (d.partial() is p) == (d.partial() == p)  # the same object exactly while unchanged
        assert all(p.ids == ids for p, ids in held)  # partials handed out are snapshots
        held = [(d.partial(), d.partial().ids[:]) for d in new]
    assert [d.finalize() for d in new] == [o.committed for o in old]


def test_ctc_accept_blocks_equals_the_per_stream_greedy_step():
    """Blocks of different lengths (an empty one too) across a segment end, beam > 1 keeping its log-probs."""
    rng = np.random.default_rng(2)
    decoders = [CtcGreedyDecoder(), CtcGreedyDecoder(), CtcGreedyDecoder(beam=4)]
    states = [CtcGreedyState() for _ in decoders]
    want = [Tokens() for _ in decoders]
    for block in range(10):
        if block == 6:  # the segment ends
            assert [d.finalize() for d in decoders[:2]] == want[:2]
            states[:2], want[:2] = [CtcGreedyState()] * 2, [Tokens()] * 2
            decoders[2].finalize()
            states[2], want[2] = CtcGreedyState(), Tokens()
        lens = [int(rng.integers(0, 8)) for _ in decoders]
        labels = [_labels(rng, n) for n in lens]
        logps = [torch.randn(n, V).log_softmax(-1) for n in lens]
        before = [d.partial() for d in decoders]
        CtcGreedyDecoder.accept_blocks(decoders, [None] * 3, logps, labels)
        for i, (d, lab) in enumerate(zip(decoders, labels)):
            step, states[i] = ctc_greedy_labels(lab, states[i])
            want[i] = want[i] + Tokens(step.tokens, step.frames)
            assert d.partial() == want[i]
            assert (d.prev_label, d.num_frames) == (states[i].prev_label, states[i].num_frames)
            assert (d.partial() is before[i]) == (not step.tokens)
    assert len(decoders[2].logp) == 4 and not decoders[0].logp  # blocks 6 .. 9


@pytest.mark.parametrize("g", [0, 2])
def test_sar_accept_blocks_batched_equals_alone(loaded, g):
    """Through the fusion: streams of one SarGreedyDecoder call (blocks of different lengths) equal each alone."""
    torch.manual_seed(0)
    D = loaded.model.encoder.cfg.d_model
    encs = [[torch.randn(n, D) for n in lens] for lens in ([4, 4, 4, 2], [4, 3, 4, 4], [1, 4, 4, 4])]
    alone = []
    for stream in encs:
        d = SarGreedyDecoder(loaded.model.sar, g)
        parts = []
        for e in stream:
            d.accept_block(e, None)
            parts.append(d.partial())
        alone.append((parts, d.finalize()))
    together = [SarGreedyDecoder(loaded.model.sar, g) for _ in encs]
    parts = [[] for _ in encs]
    for k in range(4):
        SarGreedyDecoder.accept_blocks(together, [s[k] for s in encs], [None] * len(encs))
        for p, d in zip(parts, together):
            p.append(d.partial())
    assert list(zip(parts, SarGreedyDecoder.finalize_many(together))) == alone
