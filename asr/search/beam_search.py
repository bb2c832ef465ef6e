"""Offline joint beam search over weighted scorers, and n-best rescoring with full scorers.

One search step (:meth:`BeamSearch.expand`) is shared by the offline search and by blockwise
synchronous beam search:

1. every full scorer scores the whole vocabulary for all N live hypotheses; their weighted sum
   picks ``pre_beam_size`` candidate tokens per hypothesis;
2. every partial scorer (CTC prefix) scores only those candidates;
3. weighted sum + ``length_bonus`` per token (``<eos>`` included) + the hypothesis score gives
   (N, V) totals; the best ``beam_size`` of the N * V extensions survive; those ending in ``<eos>``
   are finished, the others form the next beam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from asr.search.scorer import (BLANK, LENGTH_BONUS, SOS_EOS, Beam, Hypothesis, Memory,
                               PartialScorer, Scorer)

__all__ = ["BeamSearchConfig", "SearchStep", "BeamSearch", "rescore"]


@dataclass(frozen=True)
class BeamSearchConfig:
    """Args:
        beam_size: hypotheses kept per step.
        pre_beam_size: candidates per hypothesis handed to partial scorers (None: 1.5 x beam).
        maxlen_ratio: at most ``max(1, int(maxlen_ratio * T))`` tokens for T encoder frames;
            a hypothesis that long can only end.
        nbest: hypotheses that must have ended before the search may stop (None: ``beam_size``).
            ``1`` when only the best one is used: it stops as soon as no live hypothesis can beat
            the best ended one, and that one is the same as with the full n-best (exact when
            scores cannot grow, see :meth:`BeamSearch.search`), in far fewer steps on long inputs.
        end_detect: also stop once, for each of the last 3 lengths, the best hypothesis that
            ended at that length is more than 10 nats worse than the best ended one (ESPnet).
        sos, eos, blank: special ids (``blank`` is never emitted).
    """

    beam_size: int = 10
    pre_beam_size: int | None = None
    maxlen_ratio: float = 1.0
    nbest: int | None = None
    end_detect: bool = True
    sos: int = SOS_EOS
    eos: int = SOS_EOS
    blank: int = BLANK

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.pre_beam_size is not None and self.pre_beam_size < self.beam_size:
            raise ValueError(f"pre_beam_size ({self.pre_beam_size}) must be >= beam_size "
                             f"({self.beam_size})")
        if self.nbest is not None and not 1 <= self.nbest <= self.beam_size:
            raise ValueError(f"nbest must be in 1..beam_size ({self.beam_size}), got {self.nbest}")


class SearchStep(NamedTuple):
    """One expansion: the surviving unfinished hypotheses and those that emitted ``<eos>``."""

    running: Beam
    ended: list[Hypothesis]


def _check_weights(scorers: dict, weights: dict[str, float]) -> None:
    missing = sorted(set(scorers) - set(weights))
    unknown = sorted(set(weights) - set(scorers) - {LENGTH_BONUS})
    if missing:
        raise ValueError(f"no weight for scorer(s) {missing}; weights has {sorted(weights)}")
    if unknown:
        raise ValueError(f"weights {unknown} name no scorer; scorers are {sorted(scorers)} "
                         f"(plus '{LENGTH_BONUS}')")


class BeamSearch:
    """Label-synchronous joint beam search (ESPnet style) over full and partial scorers.

    Args:
        scorers: name -> :class:`Scorer` (full) or :class:`PartialScorer`.
        weights: name -> weight, one per scorer, plus optional ``"length_bonus"`` (added per
            emitted token). Scorers with weight 0 are not run.
        config: search settings.
    """

    def __init__(self, scorers: dict[str, Scorer | PartialScorer], weights: dict[str, float],
                 config: BeamSearchConfig = BeamSearchConfig()) -> None:
        _check_weights(scorers, weights)
        self.scorers = dict(scorers)
        self.weights = dict(weights)
        self.config = config
        self.length_bonus = float(weights.get(LENGTH_BONUS, 0.0))
        used = {k: s for k, s in scorers.items() if weights[k] != 0}
        self.full = {k: s for k, s in used.items() if hasattr(s, "score")}
        self.partial = {k: s for k, s in used.items() if k not in self.full}
        for k, s in self.partial.items():
            if not isinstance(s, PartialScorer):
                raise TypeError(f"scorer '{k}' has neither score() nor score_partial()")
        self.pre_beam_size = config.pre_beam_size or int(1.5 * config.beam_size)

    # -- pieces ----------------------------------------------------------------------------------

    def init_beam(self, memory: Memory) -> Beam:
        """The beam holding only ``[<sos>]``."""
        device = _device(memory)
        zero = torch.zeros(1, dtype=torch.float64, device=device)
        scorers = {**self.full, **self.partial}
        return Beam(tokens=torch.full((1, 1), self.config.sos, dtype=torch.long, device=device),
                    scores=zero, part_scores={k: zero.clone() for k in scorers},
                    states={k: s.init_state(memory) for k, s in scorers.items()})

    def max_len(self, memory: Memory) -> int:
        """Most tokens (``<eos>`` excluded) a hypothesis may hold with this memory."""
        return max(1, int(self.config.maxlen_ratio * memory.num_frames))

    def expand(self, beam: Beam, memory: Memory, eos_only: bool = False) -> SearchStep:
        """Extend every hypothesis of ``beam`` by one token; keep the best ``beam_size``.

        Args:
            beam: N live hypotheses of equal length.
            memory: encoder output received so far.
            eos_only: allow only ``<eos>`` (the maximum length was reached).
        """
        cfg = self.config
        n = len(beam)
        logps: dict[str, Tensor] = {}
        new_states = {}
        weighted = None
        for name, scorer in self.full.items():
            logp, new_states[name] = scorer.score(beam.tokens, beam.states[name], memory)
            logps[name] = logp.to(torch.float64)
            term = self.weights[name] * logps[name]
            weighted = term if weighted is None else weighted + term
        if weighted is None:  # only partial scorers: every token is a candidate
            vocab = memory.ctc_logp.shape[-1]
            weighted = torch.zeros(n, vocab, dtype=torch.float64, device=beam.scores.device)
            candidates = torch.arange(vocab, device=weighted.device).expand(n, vocab)
        else:
            pre = weighted.masked_fill(_blank_mask(weighted, cfg.blank), -torch.inf)
            candidates = pre.topk(min(self.pre_beam_size, pre.shape[1]), dim=1).indices
        if eos_only:
            candidates = torch.full((n, 1), cfg.eos, dtype=torch.long, device=weighted.device)
        for name, scorer in self.partial.items():
            logp, new_states[name] = scorer.score_partial(beam.tokens, beam.states[name], memory,
                                                          candidates)
            logps[name] = logp.to(torch.float64)
            weighted = weighted + self.weights[name] * logps[name]
        vocab = weighted.shape[1]
        allowed = torch.zeros(n, vocab, dtype=torch.bool, device=weighted.device)
        allowed.scatter_(1, candidates, True)
        allowed[:, cfg.blank] = False
        totals = (beam.scores[:, None] + weighted + self.length_bonus).masked_fill(~allowed,
                                                                                  -torch.inf)
        top = totals.flatten().topk(min(cfg.beam_size, totals.numel()))
        finite = top.values > -torch.inf
        flat, values = top.indices[finite], top.values[finite]
        index, token = flat // vocab, flat % vocab
        tokens = torch.cat([beam.tokens[index], token[:, None]], dim=1)
        parts = {k: beam.part_scores[k][index] + logps[k][index, token] for k in logps}
        is_eos = token == cfg.eos
        ended = [Hypothesis(tokens=tokens[i, 1:-1].tolist(), score=float(values[i]),
                            scores={k: float(v[i]) for k, v in parts.items()})
                 for i in is_eos.nonzero().flatten().tolist()]
        keep = ~is_eos
        index, token = index[keep], token[keep]
        running = Beam(tokens=tokens[keep], scores=values[keep],
                       part_scores={k: v[keep] for k, v in parts.items()},
                       states={k: self.scorers[k].select_state(s, index, token)
                               for k, s in new_states.items()})
        return SearchStep(running, ended)

    # -- whole searches --------------------------------------------------------------------------

    def search(self, beam: Beam, memory: Memory,
               ended: list[Hypothesis] | None = None) -> list[Hypothesis]:
        """Run the search from ``beam`` until it is done.

        Done when no hypothesis is left; or when ``nbest`` (default ``beam_size``) hypotheses have
        ended and the best live one scores below all of the best ``nbest`` ended ones (exact when scores
        cannot grow: weights >= 0 and ``length_bonus <= 0``, since every scorer increment is a
        log-probability <= 0; a heuristic otherwise); or by ``end_detect``.

        Returns:
            up to ``beam_size`` finished hypotheses, best first (empty if none could end).
        """
        ended = list(ended or [])
        max_len = self.max_len(memory)
        need = self.config.nbest or self.config.beam_size
        while len(beam) > 0:
            length = beam.tokens.shape[1] - 1
            beam, new = self.expand(beam, memory, eos_only=length >= max_len)
            ended.extend(new)
            if len(ended) >= need and len(beam) > 0:
                kth = sorted((h.score for h in ended), reverse=True)[need - 1]
                if float(beam.scores.max()) < kth:
                    break
            if self.config.end_detect and _end_detected(ended, length + 1):
                break
        return sorted(ended, key=lambda h: h.score, reverse=True)[: self.config.beam_size]

    def __call__(self, memory: Memory) -> list[Hypothesis]:
        """Offline decoding of one utterance: n-best list, best first."""
        return self.search(self.init_beam(memory), memory)


def _end_detected(ended: list[Hypothesis], length: int, patience: int = 3,
                  margin: float = -10.0) -> bool:
    """True when each of the last ``patience`` lengths has an ended hypothesis, and the best of
    each is worse than the overall best by more than ``-margin`` nats. ``length`` counts tokens."""
    if not ended:
        return False
    best = max(h.score for h in ended)
    for m in range(patience):
        same = [h.score for h in ended if len(h.tokens) == length - m]
        if not same or max(same) - best >= margin:
            return False
    return True


def _blank_mask(x: Tensor, blank: int) -> Tensor:
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, blank] = True
    return mask


def _device(memory: Memory) -> torch.device:
    return (memory.enc if memory.enc is not None else memory.ctc_logp).device


@torch.no_grad()
def _teacher_forced(scorer: Scorer, memory: Memory, hyps: list[Hypothesis], sos: int,
                    eos: int) -> Tensor:
    """(N,) log-probability of each hypothesis' tokens followed by ``<eos>`` under ``scorer``."""
    device = _device(memory)
    lengths = torch.tensor([len(h.tokens) + 1 for h in hyps], device=device)
    targets = torch.full((len(hyps), int(lengths.max())), eos, dtype=torch.long, device=device)
    for i, h in enumerate(hyps):
        targets[i, : len(h.tokens)] = torch.tensor(h.tokens, dtype=torch.long)
    rows = torch.arange(len(hyps), device=device)
    prefixes = torch.full((1, 1), sos, dtype=torch.long, device=device)
    logp, new = scorer.score(prefixes, scorer.init_state(memory), memory)
    total = logp[0, targets[:, 0]].to(torch.float64)
    states = scorer.select_state(new, torch.zeros_like(rows), targets[:, 0])
    prefixes = torch.cat([prefixes.expand(len(hyps), 1), targets[:, :1]], dim=1)
    for u in range(1, targets.shape[1]):
        logp, new = scorer.score(prefixes, states, memory)
        gained = logp.gather(1, targets[:, u : u + 1]).squeeze(1).to(torch.float64)
        total = total + torch.where(u < lengths, gained, 0.0)
        states = scorer.select_state(new, rows, targets[:, u])
        prefixes = torch.cat([prefixes, targets[:, u : u + 1]], dim=1)
    return total


def rescore(hyps: list[Hypothesis], scorers: dict[str, Scorer], weights: dict[str, float],
            memory: Memory, sos: int = SOS_EOS, eos: int = SOS_EOS) -> list[Hypothesis]:
    """Rescore an n-best list (e.g. from CTC prefix beam search) with full scorers
    ("attention rescoring").

    The new score is ``sum_k weights[k] * score_k + length_bonus * (len + 1)`` where ``score_k``
    comes from ``scorers[k]`` (teacher forced, ``<eos>`` included) or, for weights naming no
    scorer, from ``hyp.scores[k]`` (e.g. ``"ctc"``).

    Returns:
        the hypotheses with updated ``score``/``scores``, best first.
    """
    if not hyps:
        return []
    new_parts = {k: _teacher_forced(s, memory, hyps, sos, eos).tolist()
                 for k, s in scorers.items()}
    out = []
    for i, h in enumerate(hyps):
        parts = dict(h.scores)
        parts.update({k: v[i] for k, v in new_parts.items()})
        total = weights.get(LENGTH_BONUS, 0.0) * (len(h.tokens) + 1)
        for k, w in weights.items():
            if k == LENGTH_BONUS:
                continue
            if k not in parts:
                raise ValueError(f"rescore: weight '{k}' names no scorer and no score of the "
                                 f"hypotheses (they have {sorted(h.scores)})")
            total += w * parts[k]
        out.append(Hypothesis(tokens=h.tokens, score=total, scores=parts))
    return sorted(out, key=lambda h: h.score, reverse=True)
