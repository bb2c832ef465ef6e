"""Scorers over the beams of several sessions at once: padded rows, per-row lengths, masks.

The batched blockwise search (:mod:`asr.search.batched`) lays the beams of ``S`` sessions out as
``S`` slots of ``B`` rows (``B`` = beam size; a slot's rows past its live hypotheses are padding),
row ``r`` belonging to slot ``r // B``. Every session has its own prefix length ``U_s`` (the rows of
one slot share it: the search is label synchronous within a session), its own number of encoder
frames ``T_s`` and its own CTC state. The pieces here score all ``S * B`` rows in one call:

- :class:`RaggedPrefixStack`: the attention decoder (cross-attention to each slot's own memory,
  padded to the longest and masked) or the LM, stepped incrementally over self-attention caches
  ``(S * B, H, capacity, head_dim)`` in which each row's positions are ``0 .. U_s - 1`` and a step
  writes each row's new key at its own position (keys past a row's query position are masked);
- :class:`RaggedCtc`: the CTC prefix scorer of :mod:`asr.search.ctc_prefix_score` over frames padded
  to ``T = max T_s + 1``. A padded frame has blank log-probability 0 and every other token ``-inf``
  (:func:`padded_ctc_logp`): appending such frames leaves every prefix score unchanged, so all
  sessions score over the same ``T`` frames. The forward variables of the padded frames follow
  from the last real one (``r^n = -inf``, ``r^b = r^n + r^b`` at ``T_s``); the column that a later
  block extends stays at each session's last real frame.

Each function equals the per-session scorer on every live row (float rounding aside; tested in
``tests/test_bsbs_batched.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.search.ctc_prefix_score import CtcPrefixState, _linear_recurrence

__all__ = ["CrossMemory", "RaggedPrefixStack", "RaggedCtc", "RaggedCandidates", "padded_ctc_logp"]

_NEG = -torch.inf
SPARE = 16  # cache positions allocated beyond the longest prefix


@dataclass(frozen=True)
class CrossMemory:
    """Each slot's encoder memory projected for every decoder layer.

    Args:
        kv: per layer, keys and values (S, H, S_max, head_dim), padded.
        mask: (S, 1, 1, S_max) True at each slot's real frames.
    """

    kv: list[tuple[Tensor, Tensor]]
    mask: Tensor

    def select(self, slots: Tensor) -> "CrossMemory":
        return CrossMemory([(k.index_select(0, slots), v.index_select(0, slots)) for k, v in self.kv],
                           self.mask.index_select(0, slots))


class RaggedPrefixStack:
    """A transformer prefix scorer (embedding -> layers -> norm -> vocabulary) over ragged rows.

    Built from an :class:`~asr.models.decoder.AttentionDecoder` (cross-attention layers) or a
    :class:`~asr.models.lm.TransformerLM` (self-attention only; plain causal layers without a
    context bound, which :func:`asr.search.batched.batch_signature` checks).
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.layers = list(module.layers)
        attn = self.layers[0].self_attn
        self.n_heads, self.head_dim = attn.n_heads, attn.head_dim

    def memory(self, encs: list[Tensor]) -> list[Tensor]:
        """Every layer's cross-attention keys and values of each (t_i, Dm) in ``encs``, in one
        projection: (t_i, layers * 2 * D) per input (see :meth:`cross_memory`)."""
        lens = [e.shape[0] for e in encs]
        x = torch.cat(encs)
        parts = []
        for layer in self.layers:
            parts += [layer.cross_attn.k_proj(x), layer.cross_attn.v_proj(x)]
        return list(torch.cat(parts, dim=-1).split(lens))

    def cross_memory(self, projected: list[Tensor]) -> CrossMemory:
        """Padded :class:`CrossMemory` of each session's projected frames (T_s, layers * 2 * D)."""
        lens = torch.tensor([p.shape[0] for p in projected], device=projected[0].device)
        padded = nn.utils.rnn.pad_sequence(projected, batch_first=True)  # (S, S_max, layers * 2 * D)
        d = self.n_heads * self.head_dim
        kv = []
        for i in range(len(self.layers)):
            k, v = (padded[..., (2 * i + j) * d:(2 * i + j + 1) * d] for j in (0, 1))
            kv.append(tuple(x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2) for x in (k, v)))
        mask = torch.arange(padded.shape[1], device=lens.device) < lens[:, None]
        return CrossMemory(kv, mask[:, None, None, :])

    def empty_caches(self, rows: int, capacity: int, like: Tensor) -> list[tuple[Tensor, Tensor]]:
        size = (rows, self.n_heads, capacity, self.head_dim)
        return [(like.new_zeros(size), like.new_zeros(size)) for _ in self.layers]

    def _run(self, inputs: Tensor, start: Tensor, caches: list[tuple[Tensor, Tensor]],
             memory: CrossMemory | None, out_at: Tensor | None) -> Tensor | None:
        """Feed ``inputs`` (R, t) at positions ``start[r] ..`` of each row; their keys/values are
        written into ``caches`` (R, H, capacity, head_dim) in place. Rows are slots of
        ``R // len(memory)`` rows each. Returns (R, V) float32 log-probabilities after position
        ``start[r] + out_at[r]`` (None when ``out_at`` is None)."""
        r, t = inputs.shape
        pos = start[:, None] + torch.arange(t, device=inputs.device)  # (R, t)
        capacity = caches[0][0].shape[2]
        allowed = (torch.arange(capacity, device=inputs.device) <= pos[:, :, None])[:, None]  # (R, 1, t, cap)
        rows = torch.arange(r, device=inputs.device)[:, None].expand(r, t)
        x = self.module.embed(inputs)  # (R, t, D)
        for i, (layer, (ck, cv)) in enumerate(zip(self.layers, caches)):
            q, k, v = layer.self_attn.project_self(layer.norm_self(x), start)
            ck[rows, :, pos] = k.transpose(1, 2)
            cv[rows, :, pos] = v.transpose(1, 2)
            x = x + layer.self_attn.merge_heads(layer.self_attn.attend(q, ck, cv, mask=allowed))
            if memory is not None:
                slots = memory.mask.shape[0]
                h = layer.cross_attn.q_proj(layer.norm_cross(x)).reshape(slots, -1, self.n_heads, self.head_dim)
                mk, mv = memory.kv[i]
                a = layer.cross_attn.attend(h.transpose(1, 2), mk, mv, mask=memory.mask)  # (S, H, rows * t, dh)
                x = x + layer.cross_attn.merge_heads(a).reshape(x.shape)
            x = x + layer.ff(x)
        if out_at is None:
            return None
        last = x[torch.arange(r, device=x.device), out_at]  # (R, D)
        return self.module.out(self.module.norm(last)).float().log_softmax(-1)

    def _run_grouped(self, inputs: Tensor, start: Tensor, lens: list[int], rows: int,
                     caches: list[tuple[Tensor, Tensor]], memory: CrossMemory | None,
                     out_at: Tensor | None) -> Tensor | None:
        """:meth:`_run` of slots whose inputs are ``lens[s]`` tokens long (padded in ``inputs``,
        (S * rows, L)): slots of about the same length (rounded up to a power of two) run
        together, so that one long input does not make every row run its length. Slots with no
        input are left out (no output for their rows)."""
        groups: dict[int, list[int]] = {}
        for slot, n in enumerate(lens):
            if n:
                groups.setdefault(1 << (n - 1).bit_length(), []).append(slot)
        if len(groups) == 1 and len(next(iter(groups.values()))) == len(lens):
            return self._run(inputs[:, :max(lens)], start, caches, memory, out_at)
        device = inputs.device
        out = None
        for members in groups.values():
            width = max(lens[m] for m in members)
            slots = torch.tensor(members, device=device)
            index = (slots[:, None] * rows + torch.arange(rows, device=device)).reshape(-1)
            part = [(k.index_select(0, index), v.index_select(0, index)) for k, v in caches]
            logp = self._run(inputs.index_select(0, index)[:, :width], start[index], part,
                             None if memory is None else memory.select(slots),
                             None if out_at is None else out_at[index])
            for (k, v), (pk, pv) in zip(caches, part):
                k.index_copy_(0, index, pk)
                v.index_copy_(0, index, pv)
            if logp is not None:
                out = logp.new_empty(inputs.shape[0], logp.shape[1]) if out is None else out
                out[index] = logp
        return out

    def start(self, tokens: Tensor, lengths: Tensor, lengths_host: list[int], memory: CrossMemory | None
              ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Score whole prefixes: tokens (S, B, U_max), each slot's rows ``U_s = lengths[s]`` long
        (padding rows repeat a live row; ``lengths_host``: the same on the host). The positions
        that all rows of a slot share run once per slot, the rest per row (as
        :meth:`DecoderScorer._shared_start`; equal to running every row whole). Returns
        (S * B, V) log-probabilities and the caches, positions ``0 .. U_s - 1``."""
        s, b, u = tokens.shape
        same = (tokens == tokens[:, :1]).all(1).long().cumprod(1).sum(1)  # (S,)
        shared = torch.minimum(same, lengths - 1)
        shared_host = shared.tolist()
        rest = [n - m for n, m in zip(lengths_host, shared_host)]
        top = max(shared_host)
        capacity = max(u, top + max(rest)) + SPARE
        device = tokens.device
        caches = self.empty_caches(s * b, capacity, self.module.embed.weight)
        if top:
            heads = self.empty_caches(s, top, self.module.embed.weight)
            self._run_grouped(tokens[:, 0, :top], torch.zeros(s, dtype=torch.long, device=device), shared_host, 1,
                              heads, memory, None)
            slot = torch.arange(s, device=device).repeat_interleave(b)
            for (ck, cv), (hk, hv) in zip(caches, heads):
                ck[:, :, :top] = hk.index_select(0, slot)
                cv[:, :, :top] = hv.index_select(0, slot)
        starts = shared.repeat_interleave(b)  # (R,)
        index = (starts[:, None] + torch.arange(max(rest), device=device)).clamp(max=u - 1)
        inputs = tokens.reshape(s * b, u).gather(1, index)
        logp = self._run_grouped(inputs, starts, rest, b, caches, memory,
                                 (lengths - 1 - shared).repeat_interleave(b))
        return logp, caches

    def step(self, last: Tensor, position: Tensor, need: int, caches: list[tuple[Tensor, Tensor]],
             memory: CrossMemory | None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """One token per row: last (R,) at ``position`` (R,), all below ``need``; returns (R, V)
        log-probabilities and the caches (grown when ``need`` exceeds their capacity)."""
        if need > caches[0][0].shape[2]:
            caches = [(_grow(k, need + SPARE), _grow(v, need + SPARE)) for k, v in caches]
        logp = self._run(last[:, None], position, caches, memory, torch.zeros_like(position))
        return logp, caches


def _grow(x: Tensor, capacity: int) -> Tensor:
    out = x.new_zeros(x.shape[0], x.shape[1], capacity, x.shape[3])
    out[:, :, :x.shape[2]] = x
    return out


def padded_ctc_logp(logps: list[Tensor], blank: int) -> Tensor:
    """(T_s, V) CTC log-probabilities of each session -> (S, max T_s + 1, V) float64, every frame
    past a session's end blank with probability 1 (at least one such frame for every session)."""
    lens = torch.tensor([x.shape[0] for x in logps], device=logps[0].device)
    padded = nn.utils.rnn.pad_sequence([x.to(torch.float64) for x in logps], batch_first=True,
                                       padding_value=_NEG)
    padded = torch.cat([padded, padded.new_full((padded.shape[0], 1, padded.shape[2]), _NEG)], dim=1)
    pad = torch.arange(padded.shape[1], device=lens.device)[None, :] >= lens[:, None]  # (S, T)
    padded[..., blank] = padded[..., blank].masked_fill(pad, 0.0)
    return padded


@dataclass(frozen=True)
class RaggedCtc:
    """CTC prefix states of ragged rows (the padded counterpart of :class:`CtcPrefixState`).

    Args:
        r_n, r_b: (T + 1, R) forward variables; rows past a session's frames follow the padding rule.
        column: (R, C) forward column at each row's last real frame, entries ``0 .. 2 L_r`` valid.
        psi: (R,) prefix probability of each row when it was made.
        frames: (R,) each row's real frame count T_s.
    """

    r_n: Tensor
    r_b: Tensor
    column: Tensor
    psi: Tensor
    frames: Tensor

    @staticmethod
    def gather(states: list[CtcPrefixState], index: Tensor, frames: Tensor) -> "RaggedCtc":
        """The rows ``index`` (R,) of every session's state (n_s rows each, over its own frames)
        put one after another, padded to the longest time axis; ``frames``: (R,) the frame count
        of each row's state."""
        t = max(st.r_n.shape[0] for st in states)
        c = max(st.column.shape[1] for st in states)

        def rows(pieces: list[Tensor]) -> Tensor:
            return torch.cat(pieces).index_select(0, index)

        r_n = rows([_pad_to(st.r_n.T, t, 1) for st in states]).T
        r_b = rows([_pad_to(st.r_b.T, t, 1) for st in states]).T
        column = rows([_pad_to(st.column, c, 1) for st in states])
        return RaggedCtc(r_n, r_b, column, rows([st.psi for st in states]), frames)

    def state(self, rows: slice, frames: int, length: int) -> CtcPrefixState:
        """The :class:`CtcPrefixState` of ``rows`` (one session, ``frames`` frames, prefixes of ``length``)."""
        return CtcPrefixState(num_frames=frames, r_n=self.r_n[:frames + 1, rows], r_b=self.r_b[:frames + 1, rows],
                              column=self.column[rows, :2 * length + 1], psi=self.psi[rows])

    def extend(self, labels: Tensor, lengths: Tensor, new_frames: Tensor, span: int, logp: Tensor,
               slot: Tensor, blank: int) -> "RaggedCtc":
        """Advance every row over its session's frames ``frames .. frames + new_frames`` (as
        :meth:`CTCPrefixScorer.extend`, one loop over the most new frames for all rows).

        Args:
            labels: (R, L_max) each row's prefix without ``<sos>``; lengths: (R,) L_r.
            new_frames: (R,) frames to add, ``span`` of them at most; logp: :func:`padded_ctc_logp`
                (S, T, V) of the grown memories; slot: (R,) each row's session.
        The time axis of the result is ``T + 1`` (every frame of ``logp`` and the virtual one).
        """
        r = labels.shape[0]
        device = labels.device
        c = 2 * labels.shape[1] + 1
        ext = labels.new_full((r, c), blank)
        ext[:, 1::2] = labels
        skip = torch.zeros(r, c, dtype=torch.bool, device=device)
        skip[:, 3::2] = ext[:, 3::2] != ext[:, 1:-2:2]
        old = _pad_to(self.column, c, 1)
        at_n, at_b = (2 * lengths - 1).clamp(min=0), 2 * lengths
        steps = span + 1  # the last step is past every session's frames: the padding rule
        frame = (self.frames[:, None] + torch.arange(steps, device=device)).clamp(max=logp.shape[1] - 1)
        emit = logp[slot[:, None, None], frame[:, :, None], ext[:, None, :]]  # (R, steps, C)
        columns = old.new_empty(steps, r, c)  # the column after each step
        column, no_skip = old, ~skip
        for i in range(steps):
            step1 = F.pad(column, (1, 0), value=_NEG)[:, :c]
            step2 = F.pad(column, (2, 0), value=_NEG)[:, :c].masked_fill(no_skip, _NEG)
            column = torch.logaddexp(torch.logaddexp(column, step1), step2) + emit[:, i]
            columns[i] = column
        new_n = torch.where(lengths > 0, columns.gather(2, at_n.expand(steps, r)[:, :, None])[..., 0], _NEG)
        new_b = columns.gather(2, at_b.expand(steps, r)[:, :, None])[..., 0]  # (steps, R)
        last = columns[(new_frames - 1).clamp(min=0), torch.arange(r, device=device)]  # after the last real frame
        final = torch.where((new_frames > 0)[:, None], last, old)
        grown = self.frames + new_frames
        t = logp.shape[1] + 1
        times = torch.arange(t, device=device)[:, None]  # (T + 1, 1)
        index = (times - self.frames - 1).clamp(0, span)
        fresh = times > self.frames

        def series(old: Tensor, new: Tensor) -> Tensor:
            return torch.where(fresh, new.gather(0, index), _pad_to(old, t, 0)[:t])

        return RaggedCtc(series(self.r_n, new_n), series(self.r_b, new_b), final, self.psi, grown)

    def score(self, labels_last: Tensor, candidates: Tensor, logp: Tensor, slot: Tensor, blank: int,
              eos: int, vocab: int) -> tuple[Tensor, "RaggedCandidates"]:
        """:meth:`CTCPrefixScorer.score_partial` of every row: (R, V) float64 increments at the
        candidates (R, K), ``-inf`` elsewhere. ``labels_last``: (R,) each prefix's last token (-1 if
        empty); ``logp``: (S, T, V) with T = ``r_n.shape[0] - 1`` frames (padded)."""
        r, k = candidates.shape
        t = self.r_n.shape[0] - 1
        lp = logp[:, :t]
        s = lp.shape[0]
        x_c = lp.gather(2, candidates.reshape(s, 1, -1).expand(s, t, -1))  # (S, T, B * K)
        x_c = x_c.reshape(s, t, -1, k).permute(1, 0, 2, 3).reshape(t, r, k).clamp(min=-1e5)
        r_n, r_b = self.r_n[:, :, None], self.r_b[:, :, None]
        phi = torch.where(candidates == labels_last[:, None], r_b, torch.logaddexp(r_b, r_n))[:-1]
        psi = torch.logsumexp(phi + x_c, dim=0)  # (R, K)
        end = torch.logaddexp(self.r_n[-1], self.r_b[-1])
        psi = torch.where(candidates == eos, end[:, None], psi)
        psi = psi.masked_fill(candidates == blank, _NEG)
        delta = (psi - self.psi[:, None]).masked_fill(self.psi[:, None] == _NEG, _NEG)
        out = psi.new_full((r, vocab), _NEG).scatter(1, candidates, delta)
        x_b = lp[:, :, blank].clamp(min=-1e5).T.index_select(1, slot)  # (T, R)
        return out, RaggedCandidates(self, candidates, phi, x_c, x_b, psi)


@dataclass(frozen=True)
class RaggedCandidates:
    """What :meth:`RaggedCtc.score` leaves for :meth:`select` (see :class:`CtcPrefixCandidates`)."""

    parent: RaggedCtc
    candidates: Tensor
    phi: Tensor
    x_c: Tensor
    x_b: Tensor
    psi: Tensor

    def select(self, index: Tensor, token: Tensor, lengths: Tensor) -> RaggedCtc:
        """States of ``row index[m] + [token[m]]``; ``lengths``: (M,) the parents' prefix lengths L."""
        match = self.candidates[index] == token[:, None]
        k = match.to(torch.int8).argmax(dim=1)
        psi = self.psi[index, k].masked_fill(~match.any(dim=1), _NEG)
        phi, x_c = self.phi[:, index, k], self.x_c[:, index, k]  # (T, M)
        r_n = _linear_recurrence(phi, x_c)
        r_b = _linear_recurrence(torch.cat([phi.new_full((1, phi.shape[1]), _NEG), r_n[:-1]]),
                                 self.x_b.index_select(1, index))
        head = phi.new_full((1, phi.shape[1]), _NEG)
        r_n, r_b = torch.cat([head, r_n]), torch.cat([head, r_b])  # (T + 1, M)
        frames = self.parent.frames[index]
        column = _pad_to(self.parent.column.index_select(0, index), self.parent.column.shape[1] + 2, 1)
        at = (2 * lengths + 1)[:, None]
        column = column.scatter(1, at, r_n.gather(0, frames[None]).T).scatter(1, at + 1, r_b.gather(0, frames[None]).T)
        return RaggedCtc(r_n, r_b, column, psi, frames)


def _pad_to(x: Tensor, size: int, dim: int) -> Tensor:
    """``x`` cut or padded with ``-inf`` to ``size`` along ``dim``."""
    have = x.shape[dim]
    if have >= size:
        return x.narrow(dim, 0, size)
    return F.pad(x, [0, 0] * (x.dim() - 1 - dim) + [0, size - have], value=_NEG)
