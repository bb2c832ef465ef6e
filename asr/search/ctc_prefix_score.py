"""CTC prefix scorer: a partial scorer whose forward variables grow with the encoder output.

For a prefix ``g`` (without ``<sos>``) and frames ``0..t`` the forward variables are

    r^n_t(g): probability that frames 0..t emit ``g`` with frame t emitting the last token of g,
    r^b_t(g): the same with frame t emitting blank,

and the prefix probability is ``psi(g + c) = sum_t phi_{t-1}(g, c) * x_t(c)`` with
``phi_{t-1} = r^b_{t-1}(g) + [c != last(g)] r^n_{t-1}(g)``: the probability that the labels emitted
by the frames received so far start with ``g + c``. ``<eos>`` scores ``r^n_{T-1}(g) + r^b_{T-1}(g)``,
the probability that the frames received so far emit exactly ``g`` (Watanabe et al. 2017).

Scoring candidates ``c`` of all hypotheses is vectorised over hypotheses, candidates *and* frames:
the recursion ``r^n_t = (r^n_{t-1} + phi_{t-1}) x_t(c)`` is a first-order linear recurrence, solved
with a log-cumulative-sum (float64) instead of a loop over frames. The scores need only ``psi``;
the recurrence runs in ``select_state``, for the children the search keeps.

Streaming: when the memory has grown since a state was made, the state's forward variables are
extended over the new frames only. ``r_t(g)`` needs ``r_{t-1}`` of every shorter prefix of ``g``,
so each state also keeps, for its last frame, the CTC forward column over all prefixes of ``g``
(the ``2L+1`` states of the blank-extended label sequence) and advances that column frame by frame
(a loop over the new frames, vectorised over hypotheses and label states). Nothing is recomputed
from frame 0, and the result equals scoring from scratch over all frames.

The score of a hypothesis telescopes: ``score_partial`` returns ``psi(g + c) - psi(g)`` where
``psi(g)`` was computed when ``g`` was made, so the accumulated CTC score of a hypothesis is always
its prefix probability over the frames received when it was last extended.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from asr.search.scorer import BLANK, SOS_EOS, Memory

__all__ = ["CtcPrefixState", "CtcPrefixCandidates", "CTCPrefixScorer"]

_NEG = -torch.inf


@dataclass(frozen=True)
class CtcPrefixState:
    """Forward variables of N prefixes ``g`` of L tokens each, over ``num_frames`` frames.

    Row ``j`` of ``r_n``/``r_b`` is frame ``j - 1``; row 0 is a virtual frame before the first
    one (where only the empty prefix has probability 1, in ``r_b``).

    Args:
        num_frames: T, the frames covered.
        r_n: (T + 1, N) log r^n of each prefix.
        r_b: (T + 1, N) log r^b of each prefix.
        column: (N, 2L + 1) log CTC forward variables at frame T - 1 of every blank-extended
            state ``[blank, g_1, blank, ..., g_L, blank]``; the last two equal ``r_n[T], r_b[T]``.
        psi: (N,) log prefix probability of each prefix when it was made.
    """

    num_frames: int
    r_n: Tensor
    r_b: Tensor
    column: Tensor
    psi: Tensor


@dataclass(frozen=True)
class CtcPrefixCandidates:
    """What ``score_partial`` leaves for ``select_state``: the parents and their scored children.

    The children's forward variables are computed by ``select_state`` for the kept ones only (a
    search keeps ``beam`` of the N * K candidates; the recurrence over all frames was most of
    the scorer's time); each child's own recurrence is the same whichever others are computed.

    Args:
        parent: the (extended) state of the N scored prefixes.
        candidates: (N, K) candidate tokens.
        phi: (T, N, K) log probability that ``g`` ends by frame t - 1 such that ``c`` may start at t.
        x_c: (T, N, K) log probability of ``c`` at each frame (clamped at -1e5).
        x_b: (T, 1) log probability of blank at each frame (clamped at -1e5).
        psi: (N, K) log prefix probability of each ``g + c`` (``<eos>``: of ``g`` ending here).
    """

    parent: CtcPrefixState
    candidates: Tensor
    phi: Tensor
    x_c: Tensor
    x_b: Tensor
    psi: Tensor


def _extended_labels(prefixes: Tensor, blank: int) -> Tensor:
    """(N, 1 + L) prefixes with ``<sos>`` -> (N, 2L + 1) blank-extended labels."""
    labels = prefixes[:, 1:]
    ext = labels.new_full((labels.shape[0], 2 * labels.shape[1] + 1), blank)
    ext[:, 1::2] = labels
    return ext


class CTCPrefixScorer:
    """The CTC prefix score as a :class:`~asr.search.scorer.PartialScorer`.

    Reads ``memory.ctc_logp`` (T, V). Blank never gets a score; ``<eos>`` gets the probability
    that the frames received so far emit exactly the prefix.

    Args:
        blank: the blank id.
        eos: the ``<eos>`` id.
    """

    def __init__(self, blank: int = BLANK, eos: int = SOS_EOS) -> None:
        self.blank = blank
        self.eos = eos

    def init_state(self, memory: Memory) -> CtcPrefixState:
        """The empty prefix before any frame; ``score_partial`` extends it over the memory."""
        zero = torch.zeros(1, 1, dtype=torch.float64, device=_device(memory))
        return CtcPrefixState(num_frames=0, r_n=torch.full_like(zero, _NEG), r_b=zero,
                              column=zero.clone(), psi=zero[0].clone())

    # -- streaming: extension over new frames --------------------------------------------------

    def extend(self, state: CtcPrefixState, prefixes: Tensor, memory: Memory) -> CtcPrefixState:
        """Advance ``state`` over the frames of ``memory`` it has not seen (no-op if none).

        Args:
            state: state of ``prefixes`` (N, 1 + L) over ``state.num_frames`` frames.
            memory: with ``memory.ctc_logp`` (T, V), T >= state.num_frames.
        """
        logp = memory.ctc_logp
        t0, t1 = state.num_frames, logp.shape[0]
        if t1 < t0:
            raise ValueError(f"CTCPrefixScorer: memory shrank from {t0} to {t1} frames")
        if t1 == t0:
            return state
        ext = _extended_labels(prefixes, self.blank)                       # (N, S)
        n, s = ext.shape
        skip = torch.zeros(n, s, dtype=torch.bool, device=ext.device)
        skip[:, 3::2] = ext[:, 3::2] != ext[:, 1:-2:2]
        emit = logp[t0:t1].to(torch.float64)[:, ext]                         # (t, N, S)
        neg = state.column.new_full((n, 1), _NEG)
        column = state.column
        new_n, new_b = [], []
        for t in range(t1 - t0):
            step1 = torch.cat([neg, column], dim=1)[:, :s]
            step2 = torch.cat([neg, neg, column], dim=1)[:, :s].masked_fill(~skip, _NEG)
            column = torch.logsumexp(torch.stack([column, step1, step2]), dim=0) + emit[t]
            new_n.append(column[:, -2] if s > 1 else neg[:, 0])
            new_b.append(column[:, -1])
        return CtcPrefixState(num_frames=t1,
                              r_n=torch.cat([state.r_n, torch.stack(new_n)]),
                              r_b=torch.cat([state.r_b, torch.stack(new_b)]),
                              column=column, psi=state.psi)

    # -- scoring -------------------------------------------------------------------------------

    def score_partial(self, prefixes: Tensor, states: CtcPrefixState, memory: Memory,
                      candidates: Tensor) -> tuple[Tensor, CtcPrefixCandidates]:
        """Prefix-score increments of the candidate tokens.

        Args:
            prefixes: (N, 1 + L) token ids starting with ``<sos>``.
            states: their state (over any number of frames <= memory.num_frames).
            memory: ``memory.ctc_logp`` (T, V).
            candidates: (N, K) token ids to score.
        Returns:
            logp: (N, V) float64 ``psi(g + c) - psi(g)`` at the candidates, ``-inf`` elsewhere.
            new_states: input of ``select_state``.
        """
        if memory.ctc_logp is None:
            raise ValueError("CTCPrefixScorer needs memory.ctc_logp (T, V); the memory has none")
        state = self.extend(states, prefixes, memory)
        logp = memory.ctc_logp
        n, v = prefixes.shape[0], logp.shape[1]
        x_c = logp[:, candidates].to(torch.float64).clamp(min=-1e5)         # (T, N, K)
        r_n, r_b = state.r_n[:, :, None], state.r_b[:, :, None]             # (T + 1, N, 1)
        last = prefixes[:, -1:] if prefixes.shape[1] > 1 else prefixes.new_full((n, 1), -1)
        # phi[j]: probability of g ending at frame j - 1 such that c may start at frame j
        phi = torch.where(candidates == last, r_b, torch.logaddexp(r_b, r_n))  # (T + 1, N, K)
        phi = phi[:-1]                                                         # (T, N, K)
        psi = torch.logsumexp(phi + x_c, dim=0)                               # (N, K)
        end = torch.logaddexp(state.r_n[-1], state.r_b[-1])                  # (N,)
        psi = torch.where(candidates == self.eos, end[:, None], psi)
        psi = psi.masked_fill(candidates == self.blank, _NEG)
        # a prefix that was impossible when made stays impossible (no -inf - -inf, no +inf)
        delta = (psi - state.psi[:, None]).masked_fill(state.psi[:, None] == _NEG, _NEG)
        out = logp.new_full((n, v), _NEG, dtype=torch.float64).scatter(1, candidates, delta)
        x_b = logp[:, self.blank].to(torch.float64).clamp(min=-1e5)[:, None]  # (T, 1)
        new = CtcPrefixCandidates(parent=state, candidates=candidates, phi=phi, x_c=x_c, x_b=x_b, psi=psi)
        return out, new

    def select_state(self, states: CtcPrefixCandidates, index: Tensor,
                     token: Tensor) -> CtcPrefixState:
        """States of ``prefixes[index[m]] + [token[m]]`` (tokens that were not candidates get a
        zero-probability state)."""
        match = states.candidates[index] == token[:, None]                  # (M, K)
        k = match.to(torch.int8).argmax(dim=1)
        psi = states.psi[index, k].masked_fill(~match.any(dim=1), _NEG)
        phi, x_c = states.phi[:, index, k], states.x_c[:, index, k]         # (T, M)
        r_n = _linear_recurrence(phi, x_c)                                    # (T, M)
        r_b = _linear_recurrence(torch.cat([phi.new_full((1, phi.shape[1]), _NEG), r_n[:-1]]),
                                 states.x_b.expand_as(r_n))
        head = phi.new_full((1, phi.shape[1]), _NEG)
        r_n, r_b = torch.cat([head, r_n]), torch.cat([head, r_b])             # (T + 1, M)
        column = torch.cat([states.parent.column[index], r_n[-1:].T, r_b[-1:].T], dim=1)
        return CtcPrefixState(num_frames=states.parent.num_frames, r_n=r_n, r_b=r_b,
                              column=column, psi=psi)


def _linear_recurrence(start: Tensor, x: Tensor) -> Tensor:
    """Solve ``y[t] = logaddexp(y[t-1], start[t]) + x[t]`` (``y[-1] = -inf``) along dim 0.

    ``y[t] = X[t] + logcumsumexp_{tau<=t}(start[tau] - X[tau-1])`` with ``X`` the cumulative sum of
    ``x``; done in float64 so that the large cumulative sums do not cost precision.
    """
    cum = torch.cumsum(x, dim=0)
    prev = torch.cat([torch.zeros_like(cum[:1]), cum[:-1]])
    return cum + torch.logcumsumexp(start - prev, dim=0)


def _device(memory: Memory) -> torch.device:
    return (memory.ctc_logp if memory.ctc_logp is not None else memory.enc).device
