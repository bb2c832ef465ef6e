"""The scorer interface shared by every search, and the small types the searches pass around.

A *scorer* gives log-probabilities of the next token for a batch of prefixes. Searches never look
inside a scorer's state: they call ``init_state`` once, ``score`` (or ``score_partial``) once per
step for all live hypotheses at once, and ``select_state`` to keep the states of the hypotheses
that survive the step. Everything is in natural-log probabilities.

Two kinds of scorers plug in:

- a **full scorer** (:class:`Scorer`) scores the whole vocabulary: the attention decoder (over its
  cached decoder states), a language model;
- a **partial scorer** (:class:`PartialScorer`) scores only a few candidate tokens per hypothesis,
  pre-selected by the weighted sum of the full scorers (the "pre-beam"): the CTC prefix scorer,
  whose cost grows with the number of candidates.

Contract details, shared by all implementations:

- ``prefixes`` is a ``(N, U)`` LongTensor; every row starts with ``<sos>`` (id 2) and all rows have
  the same length (the searches are label synchronous).
- States are batched (one object for all ``N`` hypotheses) and are treated as immutable values:
  ``score`` and ``select_state`` return new objects, so a search may keep an old beam and resume
  from it (blockwise synchronous beam search backs off this way).
- ``score`` returns ``new_states``: whatever ``select_state(new_states, index, token)`` needs to
  build the state of hypothesis ``prefixes[index[m]] + [token[m]]`` for each kept ``m``.
- ``memory`` is a :class:`Memory`: all encoder output received so far for one utterance. It may
  grow between calls (streaming); a scorer must then use the new frames (the CTC prefix scorer
  extends its forward variables over them). A scorer whose cache depends on the memory (an
  attention decoder's per-layer caches) may keep entries computed with fewer frames, as ESPnet's
  blockwise search does, or recompute them: the full prefix is passed on every call.

Example, a bigram table as a full scorer::

    class BigramScorer:
        def __init__(self, table):            # (V, V) log-probabilities, rows sum to 1
            self.table = table
        def init_state(self, memory):
            return None                       # the prefix itself is the state
        def score(self, prefixes, states, memory):
            return self.table[prefixes[:, -1]], None   # (N, V)
        def select_state(self, states, index, token):
            return None

    search = BeamSearch({"decoder": BigramScorer(table), "ctc": CTCPrefixScorer()},
                        weights={"decoder": 0.7, "ctc": 0.3, "length_bonus": 0.5}, beam_size=4)
    nbest = search(Memory(enc=enc, ctc_logp=ctc_logp))   # list[Hypothesis], best first
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "BLANK",
    "SOS_EOS",
    "LENGTH_BONUS",
    "Memory",
    "Scorer",
    "PartialScorer",
    "Hypothesis",
    "Beam",
]

BLANK = 0
SOS_EOS = 2
LENGTH_BONUS = "length_bonus"  # the weight name of the per-token length bonus


@dataclass(frozen=True)
class Memory:
    """Everything the encoder has produced so far for one utterance.

    Args:
        enc: (T, D) encoder output frames, or None when no scorer needs them.
        ctc_logp: (T, V) CTC log-probabilities of the same frames, or None.
    """

    enc: Tensor | None = None
    ctc_logp: Tensor | None = None

    def __post_init__(self) -> None:
        if self.enc is None and self.ctc_logp is None:
            raise ValueError("Memory needs at least one of enc (T, D) and ctc_logp (T, V)")
        if self.enc is not None and self.ctc_logp is not None and len(self.enc) != len(self.ctc_logp):
            raise ValueError(
                f"Memory: enc has {len(self.enc)} frames but ctc_logp has {len(self.ctc_logp)}")

    @property
    def num_frames(self) -> int:
        return len(self.enc) if self.enc is not None else len(self.ctc_logp)

    def append(self, enc: Tensor | None = None, ctc_logp: Tensor | None = None) -> "Memory":
        """A new Memory with ``enc`` (t, D) and ``ctc_logp`` (t, V) frames appended."""
        return Memory(enc=_cat(self.enc, enc), ctc_logp=_cat(self.ctc_logp, ctc_logp))


def _cat(old: Tensor | None, new: Tensor | None) -> Tensor | None:
    if new is None:
        return old
    return new if old is None else torch.cat([old, new.to(old)], dim=0)


@runtime_checkable
class Scorer(Protocol):
    """A full scorer: log-probabilities of every next token."""

    def init_state(self, memory: Memory) -> Any:
        """The state of the single hypothesis ``[<sos>]`` (a batch of one)."""

    def score(self, prefixes: Tensor, states: Any, memory: Memory) -> tuple[Tensor, Any]:
        """Score the next token of each prefix.

        Args:
            prefixes: (N, U) token ids, each row starting with ``<sos>``.
            states: the batched state of these N prefixes.
            memory: encoder output received so far.
        Returns:
            logp: (N, V) log-probabilities of the next token.
            new_states: input of ``select_state``.
        """

    def select_state(self, states: Any, index: Tensor, token: Tensor) -> Any:
        """The batched state of the M hypotheses ``prefixes[index[m]] + [token[m]]``.

        Args:
            states: ``new_states`` returned by ``score``.
            index: (M,) row of the parent prefix.
            token: (M,) appended token.
        """


@runtime_checkable
class PartialScorer(Protocol):
    """A scorer that only scores candidate tokens (non-candidates get ``-inf``)."""

    def init_state(self, memory: Memory) -> Any: ...

    def score_partial(self, prefixes: Tensor, states: Any, memory: Memory,
                      candidates: Tensor) -> tuple[Tensor, Any]:
        """Like ``Scorer.score`` but only for ``candidates`` (N, K) token ids per prefix.

        Returns (N, V) log-probabilities that are ``-inf`` outside the candidates.
        """

    def select_state(self, states: Any, index: Tensor, token: Tensor) -> Any: ...


@dataclass(frozen=True)
class Hypothesis:
    """One finished (or best partial) hypothesis.

    Args:
        tokens: output token ids, without ``<sos>`` and ``<eos>``.
        score: the total weighted score used for ranking.
        scores: accumulated unweighted log-probability of each scorer, by name.
    """

    tokens: list[int]
    score: float
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Beam:
    """The live hypotheses of a label-synchronous search, batched.

    Args:
        tokens: (N, U) token ids, each row starting with ``<sos>``.
        scores: (N,) total weighted scores.
        part_scores: scorer name -> (N,) accumulated unweighted log-probabilities.
        states: scorer name -> batched scorer state of the N hypotheses.
    """

    tokens: Tensor
    scores: Tensor
    part_scores: dict[str, Tensor]
    states: dict[str, Any]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def hypothesis(self, i: int, drop_last: bool = False) -> Hypothesis:
        """Row ``i`` as a :class:`Hypothesis` (``drop_last`` removes a trailing ``<eos>``)."""
        tokens = self.tokens[i, 1:].tolist()
        if drop_last:
            tokens = tokens[:-1]
        return Hypothesis(tokens=tokens, score=float(self.scores[i]),
                          scores={k: float(v[i]) for k, v in self.part_scores.items()})
