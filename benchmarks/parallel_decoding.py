"""Blockwise parallel decoding (CTC drafts) against plain greedy attention decoding and plain beam
searches, models/default.

    python benchmarks/parallel_decoding.py [--data MANIFEST.jsonl] [--model DIR] [--utts 420] [--k 4 8]
        [--beam 4 10] [--bsbs 10] [--beam-utts 150]

Full-context encoder output per utterance of the first ``--utts`` rows of a JSONL manifest
(default: the speechocean762 dev-test that models/default never trained on,
egs/default/data/devtest/speechocean762_devtest.jsonl, made by egs/default/local/devtest.py); on it,
1 thread:

- greedy attention decoding, one decoder pass per token, with cached keys/values
  (:func:`asr.search.parallel.greedy_attention`, the reference), and the same recomputing the whole
  prefix at every pass (the greedy search before the cache; its output must be the same);
- :func:`asr.search.parallel.blockwise_parallel_greedy` with one draft per pass (the best-aligned
  CTC tokens) and with several drafts per pass (batch rows: other alignments, Jacobi carry-over,
  CTC's second-best token), for each ``--k``;
- an "oracle" row per k: the greedy output itself as the one draft (the fewest passes any draft
  source can give, ceil((tokens + 1) / (k + 1)));
- on the first ``--beam-utts``: joint CTC/attention offline beam search (each ``--beam``) and BSBS
  (``--bsbs``) with the incremental decoder scorer and with
  :class:`asr.search.parallel.ParallelDecoderScorer` (same best hypothesis, fewer decoder calls).

Reports decoder passes (calls), decoder rows computed (batch rows x positions, summed), wall time
and whether the outputs equal the reference; and how far the collapsed greedy CTC tokens are from
the greedy attention output. Writes benchmarks/results/parallel_decoding.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from asr.audio import load_audio
from asr.data import read_manifest
from asr.features import Fbank
from asr.models.decoder import DecoderScorer
from asr.models.io import default_model_dir, load_model_dir
from asr.search import (BeamSearch, BeamSearchConfig, BlockwiseBeamSearch, BsbsConfig, CTCPrefixScorer,
                        Hypothesis, Memory)
from asr.search.parallel import (CtcDraft, ParallelConfig, ParallelDecoderScorer, ParallelResult,
                                 blockwise_parallel_greedy, greedy_attention)
from asr.tokenizer import SOS_EOS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / "egs" / "default" / "data" / "devtest" / "speechocean762_devtest.jsonl"


def _edits(a: list[int], b: list[int]) -> int:
    """Levenshtein distance between two token lists."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@torch.inference_mode()
def _recompute_greedy(decoder, enc: torch.Tensor, max_len: int) -> ParallelResult:
    """Greedy decoding that runs the whole prefix at every pass (no cache)."""
    prefix, passes, rows = [SOS_EOS], 0, 0
    while len(prefix) - 1 < max_len:
        tok = int(decoder.logits(torch.tensor([prefix]), enc[None], None)[0, -1].argmax())
        passes, rows = passes + 1, rows + len(prefix)
        if tok == SOS_EOS:
            break
        prefix.append(tok)
    return ParallelResult(prefix[1:], passes, rows)


def _searches(ks: list[int]) -> dict[str, tuple[ParallelConfig, bool]]:
    """Row name -> (config, oracle: the greedy output as the draft)."""
    out = {}
    for k in ks:
        out[f"parallel k={k}, 1 row"] = (ParallelConfig(k=k, rows=1, aligns=1), False)
        out[f"parallel k={k}, 4 rows"] = (ParallelConfig(k=k, rows=4, aligns=2), False)
    for k in ks:
        out[f"oracle k={k}, 1 row"] = (ParallelConfig(k=k, rows=1, aligns=1), True)
    return out


class _CountingScorer(DecoderScorer):
    """:class:`DecoderScorer` counting its calls and rows: one new position per hypothesis, or
    the whole prefixes where the memory changed (BSBS's new blocks; an upper bound there)."""

    passes = rows = 0

    def score(self, prefixes, states, memory):
        fresh = states is not None and states.enc is memory.enc and states.caches[0].length == prefixes.shape[1] - 1
        self.passes, self.rows = self.passes + 1, self.rows + (prefixes.shape[0] if fresh else prefixes.numel())
        return super().score(prefixes, states, memory)


BLOCK = 16  # BSBS block, encoder frames (640 ms)


def _beams(sizes: list[int], bsbs: int | None) -> dict[str, tuple[str, int, dict | None]]:
    """Row name -> (search, beam size, ParallelDecoderScorer arguments or None for DecoderScorer)."""
    out = {}
    for search, b in [("beam", b) for b in sizes] + ([("bsbs", bsbs)] if bsbs else []):
        out[f"{search} {b}"] = (search, b, None)
        out[f"{search} {b}, 1 draft"] = (search, b, dict(cfg=ParallelConfig(k=4, rows=1, aligns=1)))
        out[f"{search} {b}, 3 drafts + shadow beam {3 * b}x8"] = (
            search, b, dict(cfg=ParallelConfig(k=4, rows=3, aligns=2), children=max(6, b), width=3 * b, depth=8))
    return out


def _best(search: str, size: int, scorer, enc: torch.Tensor, logp: torch.Tensor) -> Hypothesis:
    """The best hypothesis of joint CTC/attention search (decoder 0.7, CTC 0.3): offline beam
    search (nbest 1, as offline decoding) or BSBS over ``BLOCK``-frame blocks."""
    scorers, weights = {"decoder": scorer, "ctc": CTCPrefixScorer()}, {"decoder": 0.7, "ctc": 0.3}
    with torch.inference_mode():
        if search == "beam":
            search = BeamSearch(scorers, weights, BeamSearchConfig(beam_size=size, nbest=1))
            return search(Memory(enc=enc, ctc_logp=logp))[0]
        bsbs = BlockwiseBeamSearch(scorers, weights, BsbsConfig(beam_size=size))
        for a in range(0, enc.shape[0], BLOCK):
            bsbs.extend_block(enc[a : a + BLOCK], logp[a : a + BLOCK])
        return bsbs.finalize()[0]


def _beam_rows(model, encs: list[tuple[torch.Tensor, torch.Tensor]], sizes: list[int],
               bsbs: int | None) -> dict[str, dict]:
    """Each search of :func:`_beams` with the incremental decoder scorer and with
    :class:`ParallelDecoderScorer`."""
    beams = _beams(sizes, bsbs)
    rows = {name: {"passes": 0, "rows": 0, "seconds": 0.0, "identical": 0, "max_score_diff": 0.0} for name in beams}
    for enc, logp in encs:
        ref = {}
        for name, (search, size, kwargs) in beams.items():
            scorer = _CountingScorer(model.decoder) if kwargs is None else ParallelDecoderScorer(model.decoder, **kwargs)
            t0 = time.perf_counter()
            best = _best(search, size, scorer, enc, logp)
            r = rows[name]
            r["seconds"] += time.perf_counter() - t0
            ref.setdefault((search, size), best)
            r["passes"] += scorer.passes
            r["rows"] += scorer.rows
            r["identical"] += best.tokens == ref[search, size].tokens
            r["max_score_diff"] = max(r["max_score_diff"], abs(best.score - ref[search, size].score))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="JSONL manifest (id, audio, text)")
    p.add_argument("--model", type=Path, default=default_model_dir(), help="model directory")
    p.add_argument("--utts", type=int, default=420)
    p.add_argument("--k", type=int, nargs="+", default=[4, 8])
    p.add_argument("--beam", type=int, nargs="*", default=[4, 10], help="beam sizes (none: no beam rows)")
    p.add_argument("--bsbs", type=int, default=10, help="BSBS beam size (0: no BSBS rows)")
    p.add_argument("--beam-utts", type=int, default=150, help="beam searches on the first this many")
    args = p.parse_args()
    torch.set_num_threads(1)
    loaded = load_model_dir(args.model)
    model = loaded.model
    searches = _searches(args.k)
    names = ["greedy", "greedy, no cache", *searches]
    rows = {name: {"passes": 0, "rows": 0, "seconds": 0.0, "identical": 0} for name in names}
    tokens, ctc_equal, ctc_edits = 0, 0, 0
    lines = read_manifest(args.data)[: args.utts]
    load_start = os.getloadavg()[0]
    encs = []
    for line in lines:
        wave = load_audio(line["audio"], line.get("start"), line.get("end"))
        feats, lens = Fbank(loaded.features)(wave[None], torch.tensor([wave.shape[0]]))
        with torch.inference_mode():
            enc = model.encode(feats, lens)[0][0]
            logp = model.ctc_logp(enc)
            ctc = CtcDraft.from_logp(logp)
        if len(encs) < args.beam_utts:
            encs.append((enc, logp))
        max_len = enc.shape[0]
        runs = {"greedy": lambda: greedy_attention(model.decoder, enc, max_len),
                "greedy, no cache": lambda: _recompute_greedy(model.decoder, enc, max_len)}
        ref = None
        for name in names:
            t0 = time.perf_counter()
            if name in runs:
                out = runs[name]()
            else:
                cfg, oracle = searches[name]
                draft = CtcDraft.of_tokens(ref.tokens) if oracle else ctc
                out = blockwise_parallel_greedy(model.decoder, enc, draft, max_len, cfg)
            r = rows[name]
            r["seconds"] += time.perf_counter() - t0
            ref = ref or out
            r["passes"] += out.passes
            r["rows"] += out.rows
            r["identical"] += out.tokens == ref.tokens
        tokens += len(ref.tokens)
        ctc_equal += ctc.tokens == ref.tokens
        ctc_edits += _edits(ctc.tokens, ref.tokens)
    beam = _beam_rows(model, encs, args.beam, args.bsbs) if args.beam or args.bsbs else {}
    load = (load_start, os.getloadavg()[0])
    result = {"data": str(args.data), "utts": len(lines), "tokens": tokens, "ctc_equals_greedy_utts": ctc_equal,
              "ctc_greedy_token_edits": ctc_edits, "loadavg_1min_start_end": load, "rows": rows,
              "beam_utts": len(encs) if beam else 0, "beam_rows": beam}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parallel_decoding.json").write_text(json.dumps(result, indent=2) + "\n")
    md = _markdown(result, args.model.name, _beams(args.beam, args.bsbs))
    (RESULTS / "parallel_decoding.md").write_text(md)
    print(md, end="")


def _markdown(result: dict, model: str, kinds: dict) -> str:
    """The results page of ``result`` (as written to the json)."""
    n, tokens, rows, beam = result["utts"], result["tokens"], result["rows"], result["beam_rows"]
    load = result["loadavg_1min_start_end"]
    g = rows["greedy"]
    data = Path(result["data"]).name
    md = [f"# Blockwise parallel decoding, models/{model}, first {n} utterances of {data} ({tokens} tokens)", "",
          "Greedy attention decoding over the full-context encoder output; drafts from the collapsed greedy CTC tokens",
          "(asr/search/parallel.py). A pass is one decoder call; its rows are batch rows x positions computed.",
          f"1 thread, host load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end, on "
          f"{os.cpu_count()} cores",
          "(a shared host: wall times are noisy; passes, rows and identical outputs are deterministic, and the",
          "wall-time ratios within one run are what count).", "",
          "| search | decoder passes | passes saved | decoder rows | wall s | identical outputs |",
          "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['passes']} | {g['passes'] / r['passes']:.2f}x | {r['rows']} | {r['seconds']:.2f} "
                  f"| {r['identical']}/{n} |")
    edits = result["ctc_greedy_token_edits"]
    md += ["", f"Collapsed greedy CTC tokens equal the greedy attention output on {result['ctc_equals_greedy_utts']}/{n} "
           "utterances;",
           f"their token edit distance to it is {edits} ({edits / max(tokens, 1) * 100:.1f} % of the {tokens} tokens).",
           "Oracle rows draft the greedy output itself (not a usable search: the bound on passes for each k)."]
    if beam:
        md += ["", f"## Joint CTC/attention beam searches, first {result['beam_utts']} utterances", "",
               "Decoder 0.7, CTC 0.3. `beam N`: offline beam search, nbest 1 (as offline decoding); `bsbs N`: blockwise",
               f"synchronous beam search over {BLOCK}-frame blocks (640 ms) of the same full-context encoder output (the",
               "decoder side of BSBS; the streaming encoder's blocks would differ). Plain rows use the incremental decoder",
               "scorer (one new position per hypothesis and step; BSBS reruns the prefixes at each new block, counted",
               "whole: an upper bound); the others ParallelDecoderScorer (asr/search/parallel.py), which caches only the",
               "positions that all rows of a call share. `shadow beam WxD`: the prefixes run ahead of need, from a beam",
               "search of width W on the decoder's scores alone, D steps ahead. Identical = the same best hypothesis as",
               "the plain row; score diff = largest |score difference| of that best hypothesis.", "",
               "| search | decoder passes | passes saved | decoder rows | wall s | identical best | max score diff |",
               "|---|---|---|---|---|---|---|"]
        for name, r in beam.items():
            search, size, _ = kinds[name]
            base = beam[f"{search} {size}"]
            md.append(f"| {name} | {r['passes']} | {base['passes'] / r['passes']:.2f}x | {r['rows']} | {r['seconds']:.2f} "
                      f"| {r['identical']}/{result['beam_utts']} | {r['max_score_diff']:.1e} |")
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
