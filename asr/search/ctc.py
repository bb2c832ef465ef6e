"""CTC decoding over frame log-probabilities: greedy (offline and streaming), prefix beam search,
and Viterbi forced alignment (single utterance and batched, for training).

A token's *spike frame* is the first frame of the run of frames that emits it; greedy decoding and
forced alignment use the same definition, so a forced alignment of the greedy output gives back the
greedy spike frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np
import torch
from torch import Tensor

from asr.search.scorer import BLANK, Hypothesis

__all__ = [
    "CtcGreedyResult",
    "CtcGreedyState",
    "ctc_greedy",
    "ctc_greedy_step",
    "ctc_greedy_labels",
    "ctc_prefix_beam_search",
    "CtcAlignment",
    "ctc_forced_align",
    "ctc_forced_align_batch",
]


class CtcGreedyResult(NamedTuple):
    """Collapsed greedy output: ``tokens[k]`` spikes at frame ``frames[k]``."""

    tokens: list[int]
    frames: list[int]


@dataclass(frozen=True)
class CtcGreedyState:
    """Streaming greedy state.

    Args:
        prev_label: argmax label of the last frame received (``blank`` at the start).
        num_frames: frames received so far (the absolute index of the next frame).
    """

    prev_label: int = BLANK
    num_frames: int = 0


def _collapse(labels: list[int], prev_label: int, offset: int, blank: int) -> CtcGreedyResult:
    """Collapse per-frame labels given the label of the frame before them (on the host: a block's
    labels cross to it in one copy, and the collapse is a few dozen integers)."""
    tokens, frames = [], []
    for t, lab in enumerate(labels):
        if lab != blank and lab != prev_label:
            tokens.append(lab)
            frames.append(t + offset)
        prev_label = lab
    return CtcGreedyResult(tokens, frames)


def ctc_greedy(logp: Tensor, blank: int = BLANK) -> CtcGreedyResult:
    """Best-path decoding: per-frame argmax, merge repeats, drop blanks.

    Args:
        logp: (T, V) log-probabilities (or logits: only the argmax matters).
    """
    return _collapse(logp.argmax(dim=-1).tolist(), blank, 0, blank)


def ctc_greedy_step(logp: Tensor, state: CtcGreedyState,
                    blank: int = BLANK) -> tuple[CtcGreedyResult, CtcGreedyState]:
    """Greedy decoding of one block of frames, carrying the previous label across blocks.

    A token whose run of frames straddles the block boundary is emitted once, in the block where
    its run starts. Feeding the blocks of an utterance one by one gives the same tokens and frames
    as :func:`ctc_greedy` on the whole utterance.

    Args:
        logp: (t, V) log-probabilities of the new frames (t may be 0).
        state: state after the previous block; ``CtcGreedyState()`` to start.
    Returns:
        the tokens that spike in this block (absolute frame indices) and the new state.
    """
    return ctc_greedy_labels(logp.argmax(dim=-1).tolist(), state, blank)


def ctc_greedy_labels(labels: list[int], state: CtcGreedyState,
                      blank: int = BLANK) -> tuple[CtcGreedyResult, CtcGreedyState]:
    """:func:`ctc_greedy_step` from the block's per-frame argmax labels, already on the host (a
    server pass takes every stream's labels in one device-to-host copy)."""
    if not labels:
        return CtcGreedyResult([], []), state
    result = _collapse(labels, state.prev_label, state.num_frames, blank)
    return result, CtcGreedyState(labels[-1], state.num_frames + len(labels))


# ---------------------------------------------------------------------------------------------
# Prefix beam search


@numba.njit(cache=True)
def _lae(a: float, b: float) -> float:
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    if a > b:
        return a + np.log1p(np.exp(b - a))
    return b + np.log1p(np.exp(a - b))


@numba.njit(cache=True)
def _grow(arr, size, fill):
    out = np.full(size, fill, dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


@numba.njit(cache=True)
def _prefix_beam_kernel(logp, cands, beam, blank):
    """Prefix beam search over a trie of prefixes (node 0 = empty prefix).

    logp (T, V) float64, cands (T, K) int64 candidate non-blank tokens per frame.
    Returns (parent, token, beam_nodes, beam_scores) with the beam sorted best first.
    """
    T, V = logp.shape
    K = cands.shape[1]
    cap = 1024
    parent = np.full(cap, -1, np.int64)
    token = np.full(cap, -1, np.int64)
    pb = np.full(cap, -np.inf)      # prefix prob ending in blank, at the previous frame
    pnb = np.full(cap, -np.inf)     # prefix prob ending in its last token, previous frame
    npb = np.full(cap, -np.inf)
    npnb = np.full(cap, -np.inf)
    stamp = np.full(cap, -1, np.int64)
    children = numba.typed.Dict.empty(numba.types.int64, numba.types.int64)
    n_nodes = 1
    pb[0] = 0.0
    nodes = np.zeros(1, np.int64)
    scores = np.zeros(1)
    for t in range(T):
        touched = np.empty(nodes.shape[0] * (K + 1), np.int64)
        n_touched = 0
        for n in nodes:
            total = _lae(pb[n], pnb[n])
            if stamp[n] != t:
                stamp[n] = t
                npb[n] = -np.inf
                npnb[n] = -np.inf
                touched[n_touched] = n
                n_touched += 1
            npb[n] = _lae(npb[n], total + logp[t, blank])
            if token[n] >= 0:  # the last token repeats without a blank: same prefix
                npnb[n] = _lae(npnb[n], pnb[n] + logp[t, token[n]])
            for c in cands[t]:
                key = n * V + c
                if key in children:
                    child = children[key]
                else:
                    if n_nodes == parent.shape[0]:
                        size = 2 * n_nodes
                        parent = _grow(parent, size, -1)
                        token = _grow(token, size, -1)
                        pb = _grow(pb, size, -np.inf)
                        pnb = _grow(pnb, size, -np.inf)
                        npb = _grow(npb, size, -np.inf)
                        npnb = _grow(npnb, size, -np.inf)
                        stamp = _grow(stamp, size, -1)
                    child = n_nodes
                    n_nodes += 1
                    parent[child] = n
                    token[child] = c
                    children[key] = child
                if stamp[child] != t:
                    stamp[child] = t
                    npb[child] = -np.inf
                    npnb[child] = -np.inf
                    touched[n_touched] = child
                    n_touched += 1
                # a repeated token needs a blank in between
                src = pb[n] if c == token[n] else total
                npnb[child] = _lae(npnb[child], src + logp[t, c])
        touched = touched[:n_touched]
        totals = np.empty(n_touched)
        for i in range(n_touched):
            totals[i] = _lae(npb[touched[i]], npnb[touched[i]])
        order = np.argsort(-totals, kind="mergesort")[:beam]
        order = order[totals[order] > -np.inf]  # impossible prefixes (too few frames)
        nodes = touched[order]
        scores = totals[order]
        for n in nodes:
            pb[n] = npb[n]
            pnb[n] = npnb[n]
    return parent, token, nodes, scores


def ctc_prefix_beam_search(logp: Tensor, beam: int, blank: int = BLANK,
                           token_topk: int | None = 16) -> list[Hypothesis]:
    """CTC prefix beam search: the ``beam`` most probable label sequences, each scored by the sum
    over all its frame paths (prefixes that collapse to the same labels are merged).

    Exact when ``beam`` exceeds the number of distinct prefixes and ``token_topk`` is None.

    Args:
        logp: (T, V) log-probabilities.
        beam: number of prefixes kept per frame (and the size of the returned n-best).
        token_topk: extend prefixes only with the ``token_topk`` best non-blank tokens of each
            frame (None: all tokens; exact but slow for large vocabularies, ~6 s for T=300,
            V=5000, beam 10 on one CPU core against ~30 ms with 16).
    Returns:
        n-best list, best first; ``score`` and ``scores["ctc"]`` are the log-probability.
    """
    logp = logp.detach().to(torch.float64).cpu()
    T, V = logp.shape
    masked = logp.clone()
    masked[:, blank] = -torch.inf
    k = V - 1 if token_topk is None else min(token_topk, V - 1)
    cands = masked.topk(k, dim=-1).indices if T > 0 else torch.zeros(0, k, dtype=torch.long)
    parent, token, nodes, scores = _prefix_beam_kernel(
        logp.numpy(), cands.numpy().astype(np.int64), beam, blank)
    hyps = []
    for node, score in zip(nodes.tolist(), scores.tolist()):
        tokens = []
        while node > 0:
            tokens.append(int(token[node]))
            node = parent[node]
        hyps.append(Hypothesis(tokens[::-1], score, {"ctc": score}))
    return hyps


# ---------------------------------------------------------------------------------------------
# Forced alignment


class CtcAlignment(NamedTuple):
    """A Viterbi alignment.

    token_frames: (U,) or (B, U) spike frame of each token (first frame of its run); -1 = padding.
    path: (T,) or (B, T) label of every frame (``blank`` or a token id); -1 past the length.
    score: () or (B,) log-probability of the best path.
    """

    token_frames: Tensor
    path: Tensor
    score: Tensor


@torch.no_grad()
def ctc_forced_align_batch(logp: Tensor, logp_lens: Tensor, tokens: Tensor, token_lens: Tensor,
                           blank: int = BLANK) -> CtcAlignment:
    """Viterbi alignment of token sequences to CTC frames, batched (no gradient).

    Vectorised over the batch and the 2U+1 states of the blank-extended label sequence; one loop
    over frames forward (max-product) and one backward (backtracking).

    Args:
        logp: (B, T, V) log-probabilities.
        logp_lens: (B,) valid frames.
        tokens: (B, U) target ids, padded (any value past ``token_lens``).
        token_lens: (B,) target lengths.
    Raises:
        ValueError: if some utterance has fewer frames than its tokens need (one per token plus
            one blank between equal neighbours).
    """
    device = logp.device
    B, T, _ = logp.shape
    U = tokens.shape[1]
    S = 2 * U + 1
    logp_lens = logp_lens.to(device)
    token_lens = token_lens.to(device)
    valid_tok = torch.arange(U, device=device) < token_lens[:, None]        # (B, U)
    tok = torch.where(valid_tok, tokens.to(device).long(), blank)
    ext = torch.full((B, S), blank, dtype=torch.long, device=device)
    ext[:, 1::2] = tok                                                       # (B, S)
    repeats = ((tok[:, 1:] == tok[:, :-1]) & valid_tok[:, 1:]).sum(1)
    need = token_lens + repeats
    if bool((need > logp_lens).any()):
        b = int((need > logp_lens).nonzero()[0])
        raise ValueError(f"ctc_forced_align: utterance {b} has {int(logp_lens[b])} frames but its "
                         f"{int(token_lens[b])} tokens need at least {int(need[b])}")
    skip = torch.zeros(B, S, dtype=torch.bool, device=device)
    skip[:, 3::2] = ext[:, 3::2] != ext[:, 1:-2:2]        # token -> next (different) token
    emit = logp.float().gather(2, ext[:, None, :].expand(B, T, S))          # (B, T, S)
    # The dynamic programme runs on the CPU (numba, one utterance per thread): a frame loop of small
    # GPU kernels was the slowest part of a SAR training step (~0.3 s per 600 s batch).
    # numba's first parallel launch resets the OpenMP thread count that torch's CPU ops share (a
    # process set to 1 thread ran on every core from then on): keep torch's setting
    threads = torch.get_num_threads()
    states_np, score_np = _viterbi(emit.cpu().numpy(), skip.cpu().numpy(), logp_lens.cpu().numpy(),
                                   token_lens.cpu().numpy())
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    states = torch.from_numpy(states_np).to(device)
    score = torch.from_numpy(score_np).to(device)
    valid_frame = states >= 0
    path = torch.where(valid_frame, ext.gather(1, states.clamp(min=0)), -1)
    prev = torch.cat([torch.full((B, 1), -1, device=device, dtype=torch.long), states[:, :-1]], 1)
    starts = valid_frame & (states % 2 == 1) & (states != prev)               # (B, T)
    token_frames = torch.full((B, U), -1, dtype=torch.long, device=device)
    b_idx, t_idx = starts.nonzero(as_tuple=True)
    token_frames[b_idx, (states[b_idx, t_idx] - 1) // 2] = t_idx
    return CtcAlignment(token_frames, path, score)


@numba.njit(cache=True, parallel=True)
def _viterbi(emit: np.ndarray, skip: np.ndarray, lens: np.ndarray, token_lens: np.ndarray):
    """Best CTC state path per utterance: states (B, T) (-1 past the end) and scores (B,).

    emit (B, T, S) log-probabilities of the blank-extended labels; skip (B, S) whether state s
    may be entered from s - 2 (a token after a different token).
    """
    B, T, S = emit.shape
    states = np.full((B, T), -1, dtype=np.int64)
    scores = np.full(B, -np.inf, dtype=np.float32)
    for b in numba.prange(B):  # utterances in parallel (numba's thread pool)
        n, used = lens[b], 2 * token_lens[b] + 1
        alpha = np.full(used, -np.inf, dtype=np.float32)
        alpha[0] = 0.0  # a virtual frame -1 in the initial blank state
        new = np.empty(used, dtype=np.float32)
        back = np.zeros((n, used), dtype=np.uint8)
        for t in range(n):
            for s in range(used):
                best, arg = alpha[s], 0
                if s >= 1 and alpha[s - 1] > best:
                    best, arg = alpha[s - 1], 1
                if s >= 2 and skip[b, s] and alpha[s - 2] > best:
                    best, arg = alpha[s - 2], 2
                new[s] = best + emit[b, t, s]
                back[t, s] = arg
            alpha, new = new, alpha
        last = used - 1
        state = last
        if token_lens[b] > 0 and alpha[last - 1] > alpha[last]:
            state = last - 1
        scores[b] = alpha[state]
        for t in range(n - 1, -1, -1):
            states[b, t] = state
            state -= back[t, state]
    return states, scores


def ctc_forced_align(logp: Tensor, tokens: Tensor | list[int], blank: int = BLANK) -> CtcAlignment:
    """Viterbi alignment of one token sequence to CTC frames (see :func:`ctc_forced_align_batch`).

    Args:
        logp: (T, V) log-probabilities.
        tokens: (U,) target ids.
    Returns:
        token_frames (U,), path (T,), score ().
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1)
    out = ctc_forced_align_batch(logp[None], torch.tensor([logp.shape[0]]), tokens,
                                 torch.tensor([tokens.shape[1]]), blank)
    return CtcAlignment(out.token_frames[0], out.path[0], out.score[0])
