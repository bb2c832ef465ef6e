"""Blockwise parallel decoding (Stern et al., 2018) of the attention decoder, greedy and exact.

Greedy decoding runs the decoder once per output token. Blockwise parallel decoding proposes the
next ``k`` tokens at once, checks them with one decoder pass over ``prefix + proposal`` (the
decoder is causal, so position ``i`` of that pass is exactly what greedy decoding would see after
``prefix + proposal[:i]``), keeps the longest prefix of the proposal that agrees with the
decoder's own argmax plus the decoder's next token after it, and repeats. The output is the
greedy output; only the number of decoder passes changes.

Proposals come from the CTC head (the paper's extra prediction heads would need retraining):
the collapsed greedy CTC tokens. A pointer into them follows the output: an accepted token that
equals the pointed-at CTC token advances it by one; a token the CTC sequence has a little further
on (within ``resync`` tokens) moves it past that one (CTC had extra tokens); any other token
counts as a substitution. Where CTC and the decoder agree, one pass accepts up to ``k + 1`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asr.tokenizer import BLANK, SOS_EOS

__all__ = ["ParallelResult", "ctc_proposals", "greedy_attention", "blockwise_parallel_greedy"]


@dataclass(frozen=True)
class ParallelResult:
    """tokens: the hypothesis without sos/eos; passes: decoder calls it took."""

    tokens: list[int]
    passes: int


def ctc_proposals(ctc_logp: torch.Tensor) -> list[int]:
    """Collapsed greedy CTC tokens of (T, V) log-probabilities (blanks and repeats removed)."""
    ids = ctc_logp.argmax(-1).unique_consecutive().tolist()
    return [i for i in ids if i != BLANK]


def _logits(decoder, inputs: list[int], enc: torch.Tensor) -> torch.Tensor:
    """(len(inputs), V) decoder logits for the ids ``inputs`` (sos first) over enc (T, D)."""
    x = torch.tensor([inputs], device=enc.device)
    return decoder.logits(x, enc[None], None)[0].float()


@torch.inference_mode()
def greedy_attention(decoder, enc: torch.Tensor, max_len: int) -> ParallelResult:
    """Plain greedy decoding, one decoder pass per token (the reference).

    Args:
        decoder: :class:`~asr.models.decoder.AttentionDecoder`.
        enc: (T, D) encoder output of one utterance.
        max_len: at most this many tokens.
    """
    prefix, passes = [SOS_EOS], 0
    while len(prefix) - 1 < max_len:
        tok = int(_logits(decoder, prefix, enc)[-1].argmax())
        passes += 1
        if tok == SOS_EOS:
            break
        prefix.append(tok)
    return ParallelResult(prefix[1:], passes)


@torch.inference_mode()
def blockwise_parallel_greedy(decoder, enc: torch.Tensor, proposals: list[int], max_len: int,
                              k: int = 8, resync: int = 3, jacobi: bool = True) -> ParallelResult:
    """Greedy decoding with blockwise parallel verification of ``k`` proposed tokens per pass.

    Args:
        decoder, enc, max_len: as :func:`greedy_attention`.
        proposals: guessed output tokens (e.g. :func:`ctc_proposals`).
        k: proposed tokens per pass (0 = plain greedy).
        resync: how far ahead in ``proposals`` a token that differs is looked for.
        jacobi: after a disagreement, propose the decoder's own predictions of the last pass for
            the positions after it (then CTC's), instead of CTC's alone.

    Returns:
        the tokens :func:`greedy_attention` gives (same argmax decisions) and the passes taken.
    """
    prefix, passes, j, carry = [SOS_EOS], 0, 0, []  # j: the next proposal to use
    while len(prefix) - 1 < max_len:
        room = min(k, max_len - (len(prefix) - 1))
        guess = (carry + proposals[j + len(carry) :])[:room] if jacobi else proposals[j : j + room]
        pred = _logits(decoder, prefix + guess, enc)[len(prefix) - 1 :].argmax(-1).tolist()  # len(guess) + 1
        passes += 1
        agree = 0
        while agree < len(guess) and pred[agree] == guess[agree] and guess[agree] != SOS_EOS:
            agree += 1
        j += agree
        tok = pred[agree]  # the decoder's own next token after the agreeing part
        for t in guess[:agree]:
            prefix.append(t)
            if len(prefix) - 1 >= max_len:
                return ParallelResult(prefix[1:], passes)
        if tok == SOS_EOS:
            break
        prefix.append(tok)
        ahead = proposals[j : j + resync + 1]
        j += ahead.index(tok) + 1 if tok in ahead else 1
        # Jacobi-style: the decoder's predictions after the first disagreement (made with one
        # wrong token in their context) are the next proposals where they differ from CTC's
        carry = [t for t in pred[agree + 1 :] if t != SOS_EOS][: max(0, len(guess) - agree - 1)]
    return ParallelResult(prefix[1:], passes)
