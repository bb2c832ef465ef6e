"""Blockwise parallel decoding (asr.search.parallel) gives exactly the greedy output, in fewer passes
when the proposals are right."""

import pytest
import torch

from asr.models.config import DecoderConfig
from asr.models.decoder import AttentionDecoder
from asr.search.parallel import blockwise_parallel_greedy, ctc_proposals, greedy_attention
from asr.tokenizer import BLANK, SOS_EOS


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    dec = AttentionDecoder(40, 24, DecoderConfig(d_model=32, n_heads=4, n_layers=2, ff_mult=2, dropout=0.0)).eval()
    with torch.no_grad():
        dec.out.bias[SOS_EOS] -= 2.0  # random weights: make <eos> rarer so hypotheses get long
    return dec


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 8])
def test_output_equals_greedy_whatever_the_proposals(decoder, seed, k):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(30, 24, generator=g)
    ref = greedy_attention(decoder, enc, max_len=25)
    assert ref.passes == min(len(ref.tokens) + 1, 26) or len(ref.tokens) == 25
    noisy = list(ref.tokens)
    for i in range(0, len(noisy), 4):  # substitutions, a deletion and an insertion
        noisy[i] = (noisy[i] + 7) % 40
    noisy = noisy[:5] + noisy[6:9] + [11] + noisy[9:]
    for proposals in (ref.tokens, noisy, [], [SOS_EOS] * 5, torch.randint(3, 40, (40,), generator=g).tolist()):
        out = blockwise_parallel_greedy(decoder, enc, proposals, max_len=25, k=k)
        assert out.tokens == ref.tokens
        assert out.passes <= ref.passes


def test_right_proposals_take_one_pass_per_k_plus_one_tokens(decoder):
    enc = torch.randn(30, 24, generator=torch.Generator().manual_seed(3))
    ref = greedy_attention(decoder, enc, max_len=40)
    for k in (1, 4, 8):
        out = blockwise_parallel_greedy(decoder, enc, ref.tokens, max_len=40, k=k)
        assert out.tokens == ref.tokens
        full = len(ref.tokens) == 40  # stopped by max_len: no pass for <eos>
        assert out.passes == -(-(len(ref.tokens) + (0 if full else 1)) // (k + 1))


def test_ctc_proposals_collapse_repeats_and_blanks():
    ids = torch.tensor([BLANK, 5, 5, BLANK, 5, 7, 7, BLANK])
    logp = torch.nn.functional.one_hot(ids, 10).float().log()
    assert ctc_proposals(logp) == [5, 5, 7]
