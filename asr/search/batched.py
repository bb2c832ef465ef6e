"""Blockwise synchronous beam search of many sessions in lockstep.

:class:`~asr.search.bsbs.BlockwiseBeamSearch` extends one session's beam step by step: on a GPU a
server pass of 200 sessions is then thousands of small kernel launches, one session after another.
Here the block searches of all sessions run together. At every step each session that still
searches contributes its beam (``B`` = beam size rows, padded); one expansion scores all rows (the
attention decoder against each session's own memory, the LM, the CTC prefix scorer over each
session's own frames: :mod:`asr.search.ragged`), the pre-beam and each session's beam top-k run
batched (a top-k over each session's ``B * V`` extensions), and one copy to the host per step
carries every session's counts (hypotheses alive and ended, the repetition test). Each session then
applies its own loop rules (length and CTC-trigger frontier, repetition test, backoff, ``ending``)
and drops out of the lockstep when its block search stops. :func:`finalize_searches` does the same
for the final searches to ``<eos>`` (``nbest``, ``end_detect`` per session).

The sessions' state stays in their :class:`BlockwiseBeamSearch` objects (a per-session call may
follow a batched one and the reverse): their beams come back with the CTC state and the LM caches
of the batched rows (views), and no decoder state (the decoder runs the prefixes again against the
grown memory at the next block in any case). Results equal running each session alone, float
rounding aside (``tests/test_bsbs_batched.py``).

Batched sessions share one attention decoder, CTC prefix scorer and optionally one LM (plain
causal, no context bound), with equal weights and search settings (:func:`batch_signature`);
others run alone.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch
from torch import Tensor

from asr.attention import KVCache
from asr.models.decoder import DecoderScorer
from asr.models.lm import LMScorer, LMState
from asr.search.beam_search import _end_detected
from asr.search.bsbs import BlockwiseBeamSearch
from asr.search.ctc_prefix_score import CTCPrefixScorer
from asr.search.ragged import CrossMemory, RaggedCandidates, RaggedCtc, RaggedPrefixStack, padded_ctc_logp
from asr.search.scorer import Beam, Hypothesis

__all__ = ["batch_signature", "extend_blocks", "finalize_searches"]

_NEG = -torch.inf
# each search's decoder memory projected for every layer: (frames covered, (T, layers * 2 * D))
_PROJECTED: "weakref.WeakKeyDictionary[BlockwiseBeamSearch, tuple[int, Tensor]]" = weakref.WeakKeyDictionary()


def batch_signature(search: BlockwiseBeamSearch) -> Hashable | None:
    """Searches with equal signatures can run in one lockstep; None: this one runs alone (another
    scorer than the attention decoder, the CTC prefix scorer and a plain :class:`LMScorer`, e.g. a
    session-context LM, or an LM with a bounded or sparse context)."""
    bs = search.search
    used = {**bs.full, **bs.partial}
    decoder, ctc, lm = used.get("decoder"), used.get("ctc"), used.get("lm")
    if set(used) - {"decoder", "ctc", "lm"} or type(decoder) is not DecoderScorer:
        return None
    if ctc is not None and type(ctc) is not CTCPrefixScorer:
        return None
    if lm is not None and (type(lm) is not LMScorer or lm.lm.cfg.longgen is not None
                           or lm.lm.cfg.max_context is not None):
        return None
    return ("bsbs", id(decoder.decoder), None if lm is None else id(lm.lm),
            None if ctc is None else (ctc.blank, ctc.eos), tuple(bs.weights.items()), search.config)


def _on(values: list, device: torch.device) -> Tensor:
    """A small host list as a tensor on ``device``; on a GPU through pinned memory without waiting
    for the device (the copy is queued behind the step's kernels)."""
    x = torch.tensor(values)
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


@dataclass
class _Slots:
    """The beams of the sessions still in the lockstep: slot ``j`` holds session ``ids[j]``'s
    ``live[j]`` hypotheses of ``lengths[j]`` tokens (``<sos>`` included) in rows ``j * B ..``."""

    ids: list[int]
    lengths: list[int]
    live: list[int]
    tokens: Tensor  # (S, B, U_max)
    scores: Tensor  # (S, B) float64
    parts: dict[str, Tensor]  # (S, B) float64
    live_t: Tensor  # (S,) live on the device
    lengths_t: Tensor  # (S,) lengths on the device
    ctc: RaggedCtc | None
    caches: dict[str, list[tuple[Tensor, Tensor]]]  # self-attention caches, (S * B, H, cap, dh)
    memory: CrossMemory
    logp: Tensor | None  # (S, T, V) padded CTC log-probabilities
    origin: list[Beam] | None = None  # the sessions' own beams (before any step)

    @property
    def size(self) -> int:
        return len(self.ids)


class _Lockstep:
    """One call's sessions, the scorers they share and the step they all take."""

    def __init__(self, searches: Sequence[BlockwiseBeamSearch]):
        self.searches = searches
        first = searches[0].search
        self.bs = first
        self.cfg = first.config
        self.beam = self.cfg.beam_size
        self.full = list(first.full)
        self.weights = first.weights
        self.ctc = first.partial.get("ctc")
        self.stacks = {name: RaggedPrefixStack(first.full[name].decoder if name == "decoder" else first.full[name].lm)
                       for name in self.full}

    # -- entering ----------------------------------------------------------------------------------

    def slots(self, ids: list[int]) -> _Slots:
        """The batched beams of sessions ``ids`` (each with a beam and frames)."""
        searches = [self.searches[i] for i in ids]
        beams = [s.beam for s in searches]
        b = self.beam
        device = beams[0].tokens.device
        u = max(bm.tokens.shape[1] for bm in beams)
        live = [len(bm) for bm in beams]
        # the beams' rows one after another; slot j's rows past its live ones repeat its last one
        starts = [0]
        for n in live[:-1]:
            starts.append(starts[-1] + n)
        index = _on([at + min(j, n - 1) for at, n in zip(starts, live) for j in range(b)], device)

        def rows(pieces: list[Tensor]) -> Tensor:
            return torch.cat(pieces).index_select(0, index).reshape((len(ids), b) + pieces[0].shape[1:])

        tokens = rows([torch.nn.functional.pad(bm.tokens, (0, u - bm.tokens.shape[1])) for bm in beams])
        scores = rows([bm.scores for bm in beams])
        parts = {k: rows([bm.part_scores[k] for bm in beams]) for k in beams[0].part_scores}
        memory = self._cross_memory(searches)
        logp, ctc = None, None
        if self.ctc is not None:
            logp = padded_ctc_logp([s.memory.ctc_logp for s in searches], self.ctc.blank)
            states = [bm.states["ctc"] for bm in beams]
            old = _on([st.num_frames for st in states], device).repeat_interleave(b)
            new = _on([s.memory.num_frames - st.num_frames for s, st in zip(searches, states)],
                      device).repeat_interleave(b)
            span = max(s.memory.num_frames - st.num_frames for s, st in zip(searches, states))
            lengths = _on([bm.tokens.shape[1] - 1 for bm in beams], device).repeat_interleave(b)
            slot_of_row = torch.arange(len(ids), device=device).repeat_interleave(b)
            ctc = RaggedCtc.gather(states, index, old).extend(tokens.reshape(len(ids) * b, u)[:, 1:], lengths, new,
                                                              span, logp, slot_of_row, self.ctc.blank)
        lengths = [bm.tokens.shape[1] for bm in beams]
        return _Slots(list(ids), lengths, live, tokens, scores, parts, _on(live, device), _on(lengths, device),
                      ctc, {}, memory, logp, origin=beams)

    def _cross_memory(self, searches: list[BlockwiseBeamSearch]) -> CrossMemory:
        """Every session's decoder memory projected for every layer; each session keeps its
        projection and only its new frames are projected (all sessions' in one call)."""
        stack = self.stacks["decoder"]
        todo, pieces = [], []
        for s in searches:
            done, kv = _PROJECTED.get(s, (0, None))
            enc = s.memory.enc
            if kv is None or done > enc.shape[0] or kv.device != enc.device or kv.dtype != enc.dtype:
                done, kv = 0, None
            todo.append((s, done, kv))
            pieces.append(enc[done:])
        fresh = stack.memory(pieces)
        projected = []
        for (s, done, kv), new in zip(todo, fresh):
            kv = new if kv is None else torch.cat([kv, new]) if new.shape[0] else kv
            _PROJECTED[s] = (s.memory.num_frames, kv)
            projected.append(kv)
        return stack.cross_memory(projected)

    # -- one step ------------------------------------------------------------------------------------

    def expand(self, slots: _Slots, first: bool, eos_only: list[bool] | None = None) -> "_Step":
        """Score every live row of ``slots``, keep each session's best ``beam`` extensions."""
        cfg, b = self.cfg, self.beam
        s = slots.size
        r = s * b
        device = slots.tokens.device
        lengths = slots.lengths_t
        logps: dict[str, Tensor] = {}
        weighted = None
        for name in self.full:
            stack = self.stacks[name]
            memory = slots.memory if name == "decoder" else None
            if first:
                logp, caches = stack.start(slots.tokens, lengths, slots.lengths, memory)
            else:
                last = slots.tokens.reshape(r, -1).gather(1, (lengths - 1).repeat_interleave(b)[:, None])[:, 0]
                logp, caches = stack.step(last, (lengths - 1).repeat_interleave(b), max(slots.lengths),
                                          slots.caches[name], memory)
            slots.caches[name] = caches
            logps[name] = logp.to(torch.float64)
            term = self.weights[name] * logps[name]
            weighted = term if weighted is None else weighted + term
        vocab = weighted.shape[1]
        pre = weighted.clone()
        pre[:, cfg.blank] = _NEG
        candidates = pre.topk(min(self.bs.pre_beam_size, vocab), dim=1).indices
        if eos_only is not None and any(eos_only):
            only = _on(eos_only, device).repeat_interleave(b)
            candidates = torch.where(only[:, None], cfg.eos, candidates)
        cands = None
        if self.ctc is not None:
            last_label = slots.tokens.reshape(r, -1).gather(1, (lengths - 1).repeat_interleave(b)[:, None])[:, 0]
            last_label = torch.where(lengths.repeat_interleave(b) > 1, last_label, -1)
            slot_of_row = torch.arange(s, device=device).repeat_interleave(b)
            logps["ctc"], cands = slots.ctc.score(last_label, candidates, slots.logp, slot_of_row, self.ctc.blank,
                                                  self.ctc.eos, vocab)
            weighted = weighted + self.weights["ctc"] * logps["ctc"]
        allowed = torch.zeros(r, vocab, dtype=torch.bool, device=device)
        allowed.scatter_(1, candidates, True)
        allowed[:, cfg.blank] = False
        valid = (torch.arange(b, device=device) < slots.live_t[:, None]).reshape(r)
        allowed &= valid[:, None]
        totals = (slots.scores.reshape(r)[:, None] + weighted + self.bs.length_bonus).masked_fill(~allowed, _NEG)
        top = totals.reshape(s, b * vocab).topk(min(cfg.beam_size, b * vocab), dim=1)
        parent = top.indices // vocab  # (S, k) row within the slot
        token = top.indices % vocab
        rows = parent + torch.arange(s, device=device)[:, None] * b  # (S, k) row of the batch
        parts = {k: slots.parts[k].reshape(r)[rows] + v[rows, token] for k, v in logps.items()}
        u = slots.tokens.shape[2]
        children = torch.nn.functional.pad(slots.tokens.reshape(r, u)[rows], (0, 1))  # (S, k, U + 1)
        children.scatter_(2, lengths[:, None, None].expand(s, token.shape[1], 1), token[:, :, None])
        finite = top.values > _NEG
        is_eos = token == cfg.eos
        keep = finite & ~is_eos
        history = torch.arange(u, device=device)
        in_history = (history >= 1) & (history[None, :] < lengths[:, None])  # (S, U)
        repeats = ((children[:, :, :u] == token[:, :, None]) & in_history[:, None, :]).any(-1) & keep
        best = top.values.masked_fill(~keep, _NEG).max(1).values
        return _Step(top.values, rows, token, parts, children, keep, finite & is_eos, repeats.any(1), best,
                     logps, cands)

    def select(self, slots: _Slots, step: "_Step", which: list[int]) -> _Slots:
        """The beams after ``step`` of slots ``which`` (each: its surviving hypotheses, best first)."""
        b = self.beam
        device = slots.tokens.device
        same = which == list(range(slots.size))
        pick = None if same else _on(which, device)

        def sub(x: Tensor) -> Tensor:
            return x if pick is None else x.index_select(0, pick)

        keep = sub(step.keep)  # (S', k)
        k = keep.shape[1]
        rank = (~keep).long() * k + torch.arange(k, device=device)
        order = rank.argsort(dim=1)  # the surviving extensions first, each group in the top-k's order
        if k < b:  # fewer extensions than beam rows (tiny vocabularies): pad with the first one
            order = torch.cat([order, order[:, :1].expand(-1, b - k)], dim=1)
        order = order[:, :b]

        def take(x: Tensor) -> Tensor:
            return sub(x).gather(1, order.reshape(order.shape + (1,) * (x.dim() - 2)).expand(
                order.shape + x.shape[2:]))

        rows = take(step.rows).reshape(-1)  # (S' * B,) parent rows
        token = take(step.token).reshape(-1)
        live_t = keep.sum(1)
        lengths = [slots.lengths[j] + 1 for j in which]
        ctc = None
        if step.cands is not None:
            parent_len = slots.lengths_t.repeat_interleave(b)[rows] - 1
            ctc = step.cands.select(rows, token, parent_len)
        caches = {name: [(kk.index_select(0, rows), vv.index_select(0, rows)) for kk, vv in c]
                  for name, c in slots.caches.items()}
        return _Slots([slots.ids[j] for j in which], lengths, [step.live[j] for j in which], take(step.children),
                      take(step.values), {n: take(v) for n, v in step.parts.items()}, live_t,
                      sub(slots.lengths_t) + 1, ctc, caches, slots.memory if same else slots.memory.select(pick),
                      None if slots.logp is None else sub(slots.logp))

    def beam_of(self, slots: _Slots, j: int) -> Beam:
        """Slot ``j``'s beam as its session's :class:`Beam` (views of the batched rows)."""
        if slots.origin is not None:
            return slots.origin[j]
        b, n, u = self.beam, slots.live[j], slots.lengths[j]
        rows = slice(j * b, j * b + n)
        states = {"decoder": None}
        if slots.ctc is not None:
            states["ctc"] = slots.ctc.state(rows, self.searches[slots.ids[j]].memory.num_frames, u - 1)
        if "lm" in slots.caches:
            states["lm"] = LMState([KVCache(k[rows, :, :u - 1], v[rows, :, :u - 1], 0, None)
                                    for k, v in slots.caches["lm"]])
        return Beam(tokens=slots.tokens[j, :n, :u], scores=slots.scores[j, :n],
                    part_scores={k: v[j, :n] for k, v in slots.parts.items()}, states=states)


@dataclass
class _Step:
    values: Tensor  # (S, k) the best extensions' scores, best first
    rows: Tensor  # (S, k) their parent rows
    token: Tensor  # (S, k)
    parts: dict[str, Tensor]  # (S, k)
    children: Tensor  # (S, k, U + 1) their tokens
    keep: Tensor  # (S, k) alive (finite, not <eos>)
    ended: Tensor  # (S, k) finite and <eos>
    repeats: Tensor  # (S,) a surviving extension repeats a token of its history
    best: Tensor  # (S,) best surviving score
    logps: dict[str, Tensor]
    cands: RaggedCandidates | None
    live: list[int] | None = None  # host copies of the counts, filled by host()
    n_ended: list[int] | None = None
    repeated: list[bool] | None = None
    best_host: list[float] | None = None

    def host(self, with_ended: bool) -> list:
        """One copy to the host: the per-session counts (and, for final searches, the ended
        hypotheses' scores and flags)."""
        stats = [self.keep.sum(1).to(torch.float64), self.ended.sum(1).to(torch.float64),
                 self.repeats.to(torch.float64), self.best]
        if with_ended:
            stats += [self.values.T, self.ended.T.to(torch.float64)] + [p.T for p in self.parts.values()]
        flat = torch.cat([x.reshape(-1) for x in stats]).tolist()
        s = self.keep.shape[0]
        self.live = [int(x) for x in flat[:s]]
        self.n_ended = [int(x) for x in flat[s:2 * s]]
        self.repeated = [x > 0 for x in flat[2 * s:3 * s]]
        self.best_host = flat[3 * s:4 * s]
        return flat[4 * s:]


def _best(searches: Sequence[BlockwiseBeamSearch]) -> list[Hypothesis]:
    """Each search's best hypothesis, in two copies to the host for all of them."""
    have = [i for i, s in enumerate(searches) if s.beam is not None and len(s.beam)]
    out = [Hypothesis(tokens=[], score=0.0) for _ in searches]
    if have:
        beams = [searches[i].beam for i in have]
        tokens = torch.cat([bm.tokens[0, 1:] for bm in beams]).tolist()
        scores = torch.stack([bm.scores[0] for bm in beams]).tolist()
        at = 0
        for i, bm, score in zip(have, beams, scores):
            n = bm.tokens.shape[1] - 1
            out[i] = Hypothesis(tokens=tokens[at:at + n], score=score)
            at += n
    return out


@torch.no_grad()
def extend_blocks(searches: Sequence[BlockwiseBeamSearch], encs: Sequence[Tensor], ctc_logps: Sequence[Tensor],
                  labels: Sequence[list[int]] | None = None) -> list[Hypothesis]:
    """:meth:`BlockwiseBeamSearch.extend_block` of every search (equal :func:`batch_signature`),
    their block searches in lockstep.

    Args:
        encs, ctc_logps: (t_i, D) and (t_i, V) the next frames of each search (t_i may be 0).
        labels: each block's per-frame argmax of ``ctc_logps`` on the host, when the caller has it.
    Returns:
        each search's best partial hypothesis (its tokens and total score, no per-scorer scores).
    Raises:
        ValueError: the searches cannot share a lockstep (their :func:`batch_signature` differ).
    """
    _check_signatures(searches)
    for i, (s, enc, logp) in enumerate(zip(searches, encs, ctc_logps)):
        s._append(enc, logp, None if labels is None else labels[i])
    run = [i for i, s in enumerate(searches)
           if not s.ending and s.memory is not None and s.memory.num_frames > 0]
    limits = {}
    for i in run:
        s = searches[i]
        if s.beam is None:
            s.beam = s.search.init_beam(s.memory)
        limit = s.search.max_len(s.memory)
        if s.config.ctc_trigger and s.memory.ctc_logp is not None:
            limit = min(limit, s._frontier())
        limits[i] = limit
    active = [i for i in run if searches[i].beam.tokens.shape[1] - 1 < limits[i]]
    if active:
        _block_lockstep(_Lockstep(searches), active, limits)
    return _best(searches)


def _check_signatures(searches: Sequence[BlockwiseBeamSearch]) -> None:
    signatures = {batch_signature(s) for s in searches}
    if None in signatures or len(signatures) > 1:
        raise ValueError("these searches cannot run in one lockstep (batch_signature: other scorers, weights "
                         "or settings); run them alone or group them by batch_signature")


def _block_lockstep(lock: _Lockstep, active: list[int], limits: dict[int, int]) -> None:
    """The block searches of sessions ``active`` (``limits``: each one's most tokens), in lockstep;
    each session's beam is left in its search (as :meth:`BlockwiseBeamSearch.extend_block`)."""
    searches, cfg = lock.searches, lock.cfg
    slots = lock.slots(active)
    before: dict[int, tuple[_Slots, int]] = {}  # each session's beam before its last committed step
    first = True
    while slots.size:
        step = lock.expand(slots, first)
        first = False
        step.host(with_ended=False)
        going, done = [], []
        for j, sid in enumerate(slots.ids):
            s, u = searches[sid], slots.lengths[j]  # the children are u + 1 tokens long
            unreliable = step.n_ended[j] > 0
            if not unreliable and cfg.repetition_test and u + 1 >= 3 and step.repeated[j]:
                unreliable = not (cfg.ctc_trigger and u < s._frontier() - 1)
            if unreliable or step.live[j] == 0:
                if cfg.backoff and sid in before:
                    s.beam = lock.beam_of(*before[sid])
                    s.steps_backed_off += 1
                else:
                    s.beam = lock.beam_of(slots, j)
            elif u < limits[sid]:  # children of u tokens past <sos> may still grow
                going.append(j)
            else:
                done.append(j)
        if done:
            ended = lock.select(slots, step, done)
            for jj, sid in enumerate(ended.ids):
                searches[sid].beam = lock.beam_of(ended, jj)
        for j in going:
            before[slots.ids[j]] = (slots, j)
        if not going:
            break
        slots = lock.select(slots, step, going)
        before = {sid: before[sid] for sid in slots.ids}


@torch.no_grad()
def finalize_searches(searches: Sequence[BlockwiseBeamSearch]) -> list[list[Hypothesis]]:
    """:meth:`BlockwiseBeamSearch.finalize` (no new frames) of every search, in lockstep: each
    session's n-best list, best first. Raises ValueError as :func:`extend_blocks`."""
    _check_signatures(searches)
    out: list[list[Hypothesis]] = [[] for _ in searches]
    run = [i for i, s in enumerate(searches) if s.memory is not None and s.memory.num_frames > 0]
    if not run:
        return out
    for i in run:
        if searches[i].beam is None:
            searches[i].beam = searches[i].search.init_beam(searches[i].memory)
    lock = _Lockstep(searches)
    cfg = lock.cfg
    need = cfg.nbest or cfg.beam_size
    limits = {i: searches[i].search.max_len(searches[i].memory) for i in run}
    ended: dict[int, list[Hypothesis]] = {i: [] for i in run}
    searching = [i for i in run if len(searches[i].beam) > 0]
    slots = lock.slots(searching) if searching else None
    first = True
    while slots is not None and slots.size:
        eos_only = [slots.lengths[j] - 1 >= limits[sid] for j, sid in enumerate(slots.ids)]
        step = lock.expand(slots, first, eos_only)
        first = False
        names = list(step.parts)
        rest = step.host(with_ended=True)
        s, k = step.keep.shape
        values, flags = rest[:s * k], rest[s * k:2 * s * k]
        parts = [rest[(2 + m) * s * k:(3 + m) * s * k] for m in range(len(names))]
        tokens = step.children[step.ended].tolist() if any(step.n_ended) else []
        at = 0
        going = []
        for j, sid in enumerate(slots.ids):
            u = slots.lengths[j]
            for e in range(k):  # values are (k, S) flattened: entry e of slot j at e * S + j
                if flags[e * s + j]:
                    ended[sid].append(Hypothesis(tokens=tokens[at][1:u], score=values[e * s + j],
                                                 scores={n: p[e * s + j] for n, p in zip(names, parts)}))
                    at += 1
            hyps = ended[sid]
            if step.live[j] == 0:
                continue
            if len(hyps) >= need:
                kth = sorted((h.score for h in hyps), reverse=True)[need - 1]
                if step.best_host[j] < kth:
                    continue
            if cfg.end_detect and _end_detected(hyps, u):
                continue
            going.append(j)
        if not going:
            break
        slots = lock.select(slots, step, going)
    for i in run:
        out[i] = sorted(ended[i], key=lambda h: h.score, reverse=True)[:cfg.beam_size]
    return out
