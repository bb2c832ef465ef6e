"""Blockwise parallel decoding (Stern et al., 2018) of the attention decoder: greedy, and a
decoder scorer for the beam searches.

Greedy decoding runs the decoder once per output token. Blockwise parallel decoding proposes the
next ``k`` tokens at once, checks them with one decoder pass over ``prefix + draft`` (the decoder
is causal, so position ``i`` of that pass is exactly what greedy decoding would see after
``prefix + draft[:i]``), keeps the longest prefix of the draft that agrees with the decoder's own
argmax plus the decoder's next token after it, and repeats. The output is the greedy output; only
the number of decoder passes changes.

Drafts come from the CTC head (the paper's extra prediction heads would need retraining): the
collapsed greedy CTC tokens (:class:`CtcDraft`). Where CTC and the decoder disagree, one guess of
where the output stands in the CTC tokens is often wrong, so each pass checks several drafts at
once, one per batch row, and keeps the row that agrees longest:

- the CTC tokens from each position that aligns best with the output so far (an edit-distance
  alignment of the whole output to the CTC tokens, kept up to date token by token);
- the decoder's own predictions of the last pass after its first disagreement (Jacobi-style),
  then CTC's;
- CTC's second-best token at the spike of the next CTC token, then CTC's.

A batched pass is one decoder call (one iteration); :attr:`ParallelResult.rows` counts the
positions computed (rows x draft length) so the extra compute stays visible. The decoder's
self-attention keys/values of the accepted prefix are cached, so a pass computes only the
positions of its drafts.

:class:`ParallelDecoderScorer` brings the drafts to the beam searches (offline and BSBS) as a full
scorer whose scores are the decoder's own: the search and its result do not change, only the
number of decoder calls: fewer, each with more rows (benchmarks/results/parallel_decoding.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asr.attention import KVCache
from asr.tokenizer import BLANK, SOS_EOS

__all__ = ["ParallelConfig", "ParallelResult", "CtcDraft", "greedy_attention", "blockwise_parallel_greedy",
           "ParallelDecoderScorer"]


@dataclass(frozen=True)
class ParallelConfig:
    """Args:
        k: draft tokens checked per pass (0: plain greedy).
        rows: at most this many drafts per pass (batch rows; 1: one draft, no batching).
        aligns: drafts from the best-aligned CTC positions (at most this many of them).
        jacobi: a draft of the last pass's predictions after its first disagreement.
        second_best: a draft that starts with CTC's second-best token at the next spike.
    """

    k: int = 4
    rows: int = 4
    aligns: int = 2
    jacobi: bool = True
    second_best: bool = True

    def __post_init__(self) -> None:
        if self.k < 0 or self.rows < 1 or self.aligns < 1:
            raise ValueError(f"ParallelConfig: need k >= 0, rows >= 1 and aligns >= 1, got k={self.k}, "
                             f"rows={self.rows}, aligns={self.aligns}")


@dataclass(frozen=True)
class ParallelResult:
    """tokens: the hypothesis without sos/eos; passes: decoder calls it took; rows: decoder
    positions computed over all passes (batch rows x positions per pass)."""

    tokens: list[int]
    passes: int
    rows: int


@dataclass(frozen=True)
class CtcDraft:
    """The collapsed greedy CTC tokens (blanks and repeats removed) and, per token, CTC's
    second-best non-blank token at its spike (the frame where the token is most probable),
    ``BLANK`` where there is none."""

    tokens: list[int]
    second: list[int]

    @classmethod
    def of_tokens(cls, tokens: list[int]) -> "CtcDraft":
        """Drafts from any token sequence (no second-best tokens)."""
        return cls(list(tokens), [BLANK] * len(tokens))

    @classmethod
    def from_logp(cls, ctc_logp: torch.Tensor) -> "CtcDraft":
        """Of (T, V) CTC log-probabilities."""
        best = ctc_logp.argmax(-1)  # (T,)
        ids, counts = best.unique_consecutive(return_counts=True)
        tokens, second, start = [], [], 0
        for tok, n in zip(ids.tolist(), counts.tolist()):
            if tok != BLANK:
                seg = ctc_logp[start : start + n]  # (n, V)
                spike = seg[int(seg[:, tok].argmax())].clone()
                spike[[BLANK, tok]] = -torch.inf
                tokens.append(tok)
                second.append(int(spike.argmax()))
            start += n
        return cls(tokens, second)


class _Alignment:
    """Edit distances ``row[j]`` between the output so far and the first ``j`` CTC tokens (one DP
    row, a new one per output token); the best-aligned ``j`` are where the next CTC tokens start."""

    def __init__(self, tokens: list[int], row: list[int] | None = None):
        self.tokens = tokens
        self.row = list(range(len(tokens) + 1)) if row is None else row

    def appended(self, tok: int) -> "_Alignment":
        """The alignment of the output followed by ``tok``."""
        old, new = self.row, [self.row[0] + 1]
        for j, t in enumerate(self.tokens, 1):
            new.append(min(old[j] + 1, new[j - 1] + 1, old[j - 1] + (t != tok)))
        return _Alignment(self.tokens, new)

    def best(self, n: int) -> list[int]:
        """The ``n`` positions of least distance, the furthest on first among equals."""
        order = sorted(range(len(self.row)), key=lambda j: (self.row[j], -j))
        return order[:n]


def _common(seqs: list[list[int]]) -> int:
    """Length of the longest prefix that all ``seqs`` share."""
    n = min(len(q) for q in seqs)
    for i in range(n):
        if any(q[i] != seqs[0][i] for q in seqs):
            return i
    return n


class _Decoder:
    """The decoder over one utterance, caching the self-attention keys/values of a prefix shared by
    every row: :meth:`run` computes only the positions after it, :meth:`keep` and :meth:`cut`
    move its end."""

    def __init__(self, decoder, enc: torch.Tensor):
        self.decoder = decoder
        self.kv = decoder.project_memory(enc[None])  # per layer, (1, H, S, head_dim)
        self.caches: list[KVCache] = decoder.empty_caches(1, enc.device, enc.dtype)
        self.grown: list[KVCache] = []

    @property
    def length(self) -> int:
        """Positions cached."""
        return self.caches[0].length

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        """(R, t) ids at positions ``length ..`` of R rows after the cached prefix -> (R, t, V)
        logits after each of them."""
        r = inputs.shape[0]
        x = self.decoder.embed(inputs)  # (R, t, D)
        self.grown = []
        for layer, cache, kv in zip(self.decoder.layers, self.caches, self.kv):
            rows = KVCache(cache.k.expand(r, -1, -1, -1), cache.v.expand(r, -1, -1, -1), cache.start, None)
            x, cache = layer.step(x, rows, memory_kv=kv)
            self.grown.append(cache)
        return self.decoder.out(self.decoder.norm(x)).float()

    def keep(self, row: int, n: int) -> None:
        """Cache the first ``n`` positions of batch row ``row`` of the last :meth:`run` as well."""
        end = self.length + n
        self.caches = [KVCache(c.k[row : row + 1, :, :end], c.v[row : row + 1, :, :end], c.start, None)
                       for c in self.grown]

    def cut(self, n: int) -> None:
        """Keep only the first ``n`` cached positions."""
        self.caches = [KVCache(c.k[:, :, :n], c.v[:, :, :n], c.start, None) for c in self.caches]


@torch.inference_mode()
def greedy_attention(decoder, enc: torch.Tensor, max_len: int) -> ParallelResult:
    """Plain greedy decoding, one decoder pass per token (the reference), cached keys/values.

    Args:
        decoder: :class:`~asr.models.decoder.AttentionDecoder`.
        enc: (T, D) encoder output of one utterance.
        max_len: at most this many tokens.
    """
    return blockwise_parallel_greedy(decoder, enc, CtcDraft.of_tokens([]), max_len, ParallelConfig(k=0, rows=1))


def _drafts(cfg: ParallelConfig, ctc: CtcDraft, align: _Alignment, carry: list[int], room: int) -> list[list[int]]:
    """Up to ``cfg.rows`` distinct drafts of at most ``room`` tokens, the most trusted first."""
    props = ctc.tokens
    starts = align.best(cfg.aligns)
    out = [props[j : j + room] for j in starts]
    j = starts[0]
    if cfg.jacobi and carry:
        out.append((carry + props[j + len(carry) :])[:room])
    if cfg.second_best and j < len(props) and ctc.second[j] != BLANK:
        out.append(([ctc.second[j]] + props[j + 1 :])[:room])
    unique = []
    for d in out:
        if d not in unique:
            unique.append(d)
    return unique[: cfg.rows]


@torch.inference_mode()
def blockwise_parallel_greedy(decoder, enc: torch.Tensor, ctc: CtcDraft, max_len: int,
                              cfg: ParallelConfig = ParallelConfig()) -> ParallelResult:
    """Greedy decoding with blockwise parallel verification of several drafts per pass.

    Args:
        decoder, enc, max_len: as :func:`greedy_attention`.
        ctc: where drafts come from (:meth:`CtcDraft.from_logp`; any tokens give the same output).
        cfg: draft settings.

    Returns:
        the tokens :func:`greedy_attention` gives (same argmax decisions), the passes taken and
        the decoder positions computed.
    """
    dec = _Decoder(decoder, enc)
    align = _Alignment(ctc.tokens)
    out, last, carry, passes, computed = [], SOS_EOS, [], 0, 0
    while len(out) < max_len:
        room = min(cfg.k, max_len - len(out))
        drafts = _drafts(cfg, ctc, align, carry, room) if room else [[]]
        width = max(len(d) for d in drafts)
        inputs = torch.tensor([[last] + d + [SOS_EOS] * (width - len(d)) for d in drafts], device=enc.device)
        pred = dec.run(inputs).argmax(-1).tolist()  # (R, width + 1)
        passes += 1
        computed += inputs.numel()
        agree = []
        for d, p in zip(drafts, pred):
            a = 0
            while a < len(d) and p[a] == d[a] and d[a] != SOS_EOS:
                a += 1
            agree.append(a)
        row = max(range(len(drafts)), key=lambda i: agree[i])  # the first of the longest
        a, d, p = agree[row], drafts[row], pred[row]
        new = d[:a] + [p[a]]
        dec.keep(row, a + 1)
        for tok in new:
            if tok == SOS_EOS:
                return ParallelResult(out, passes, computed)
            out.append(tok)
            align = align.appended(tok)
            if len(out) >= max_len:
                break
        # the decoder's predictions after the first disagreement, made with one wrong token in
        # their context: the next draft where they differ from CTC's
        carry = [t for t in p[a + 1 : len(d)] if t != SOS_EOS]
        last = new[-1]
    return ParallelResult(out, passes, computed)


class ParallelDecoderScorer:
    """Full scorer over the attention decoder for the beam searches, with blockwise parallel drafts.

    A prefix the scorer has not seen runs the decoder over itself plus drafts (as in
    :func:`blockwise_parallel_greedy`: CTC tokens from where the prefix aligns best, CTC's
    second-best token), one batch row each, and the log-probabilities at every draft position are
    kept, keyed by the prefix they follow. A beam step whose prefixes all lie along checked drafts
    needs no decoder call. A beam holds siblings, which one draft does not cover, so a call also
    runs (one draft each) the unseen prefixes that a shadow beam search on the decoder's scores
    alone reaches from the current prefixes within ``depth`` steps: the ones the next steps may
    need.

    The positions that all rows of a call share are cached across calls (keys/values), so a call
    computes the rows' positions after them. Scores are those of the decoder run on each whole
    prefix (:class:`~asr.models.decoder.RecomputeDecoderScorer`, float rounding aside), so the
    search and its result are the same; only the decoder calls change, fewer but with more rows.
    The kept scores belong to one memory and are dropped when it changes (a streaming memory grows).

    Args:
        decoder: :class:`~asr.models.decoder.AttentionDecoder`.
        cfg: the drafts of each unseen prefix (``rows``, ``aligns``, ``second_best``; ``jacobi``
            is not used).
        children, width, depth: the shadow beam: each prefix's ``children`` best children, the
            ``width`` best of them kept per step, ``depth`` steps (0: no prefixes run ahead).

    ``passes`` and ``rows`` count the decoder calls and the positions computed (rows x length).
    """

    def __init__(self, decoder, cfg: ParallelConfig = ParallelConfig(), *, children: int = 0, width: int = 0,
                 depth: int = 0):
        self.decoder, self.cfg = decoder, cfg
        self.children, self.width, self.depth = children, width, depth
        self.passes = self.rows = 0
        self._enc: torch.Tensor | None = None
        self._dec: _Decoder | None = None
        self._shared: list[int] = []  # the tokens whose positions self._dec has cached
        self._ctc = CtcDraft.of_tokens([])
        self._seen: dict[tuple[int, ...], torch.Tensor] = {}  # prefix -> (V,) log-probabilities
        self._aligned: dict[tuple[int, ...], _Alignment] = {}
        self._paths: dict[tuple[int, ...], float] = {}

    def init_state(self, memory) -> None:
        """None: the prefix itself is the state."""
        return None

    def _use(self, memory) -> None:
        if memory.enc is not self._enc:
            self._enc, self._dec, self._shared = memory.enc, _Decoder(self.decoder, memory.enc), []
            self._ctc = CtcDraft.from_logp(memory.ctc_logp) if memory.ctc_logp is not None else CtcDraft.of_tokens([])
            self._seen, self._aligned, self._paths = {}, {}, {}

    def _drafts(self, prefix: tuple[int, ...]) -> list[list[int]]:
        return _drafts(self.cfg, self._ctc, self._align(prefix), [], self.cfg.k)

    def _align(self, prefix: tuple[int, ...]) -> _Alignment:
        """The alignment of ``prefix`` (sos first) to the CTC tokens, from its parent's."""
        if prefix not in self._aligned:
            short = len(prefix) == 1
            self._aligned[prefix] = (_Alignment(self._ctc.tokens) if short
                                     else self._align(prefix[:-1]).appended(prefix[-1]))
        return self._aligned[prefix]

    def _path(self, prefix: tuple[int, ...]) -> float:
        """The decoder's log-probability of ``prefix`` (sos first) after its longest prefix that
        has not been scored with this memory (all of it offline)."""
        if prefix not in self._paths:
            parent = prefix[:-1]
            known = len(prefix) > 1 and parent in self._seen
            self._paths[prefix] = self._path(parent) + float(self._seen[parent][prefix[-1]]) if known else 0.0
        return self._paths[prefix]

    def _ahead(self, frontier: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Unseen prefixes the next steps may need, from a shadow beam search on the decoder's
        scores alone: from the scored prefixes, ``depth`` levels of the ``width`` best children
        (of each prefix's ``children`` best), going on through the children already scored."""
        level, out = {key: self._path(key) for key in frontier}, []
        for _ in range(self.depth if self.children else 0):
            found = []
            for key, score in level.items():
                top = self._seen[key].topk(self.children)
                found += [(score + v, key + (c,)) for v, c in zip(top.values.tolist(), top.indices.tolist())
                          if c != SOS_EOS]  # an ended hypothesis has no children
            found.sort(key=lambda x: -x[0])
            level = {}
            for score, child in found[: self.width]:
                if child in self._seen:
                    level[child] = score
                else:
                    out.append(child)
        return list(dict.fromkeys(out))

    @torch.inference_mode()
    def score(self, prefixes: torch.Tensor, states: None, memory) -> tuple[torch.Tensor, None]:
        self._use(memory)
        keys = [tuple(p) for p in prefixes.tolist()]
        unseen = list(dict.fromkeys(key for key in keys if key not in self._seen))
        if unseen:
            ahead = self._ahead([key for key in keys if key in self._seen])
            rows = [(key, d) for key in unseen for d in self._drafts(key)]
            rows += [(key, self._drafts(key)[0]) for key in ahead]  # one draft each: they may not be needed
            seqs = [list(key) + d for key, d in rows]
            # every row needs the positions from its prefix's last token on; those before, shared
            # by all rows, are cached once (a beam's prefixes mostly differ in their last tokens)
            shared = min(_common(seqs), min(len(key) for key, _ in rows) - 1)
            cached = _common([self._shared, seqs[0][:shared]])
            self._dec.cut(cached)
            width = max(len(q) for q in seqs)
            inputs = torch.tensor([q[cached:] + [SOS_EOS] * (width - len(q)) for q in seqs],
                                  device=memory.enc.device)  # (R, width - cached)
            logp = self._dec.run(inputs).log_softmax(-1)  # (R, width - cached, V)
            self._dec.keep(0, shared - cached)
            self._shared = seqs[0][:shared]
            self.passes, self.rows = self.passes + 1, self.rows + inputs.numel()
            new = {}
            for r, (key, d) in enumerate(rows):
                for i in range(len(d) + 1):
                    new.setdefault(key + tuple(d[:i]), (r, len(key) - 1 + i - cached))
            new = {key: rp for key, rp in new.items() if key not in self._seen}
            at = torch.tensor(list(new.values()), device=logp.device)  # (M, 2) row, position
            kept = logp[at[:, 0], at[:, 1]]  # (M, V), a copy: the pass's logits are not kept
            self._seen.update(zip(new, kept))
        return torch.stack([self._seen[key] for key in keys]), None

    def select_state(self, states: None, index: torch.Tensor, token: torch.Tensor) -> None:
        return None
