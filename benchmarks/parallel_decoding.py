"""Blockwise parallel decoding (CTC proposals) against plain greedy attention decoding, models/default.

    python benchmarks/parallel_decoding.py [--data MANIFEST.jsonl] [--utts 30] [--k 4 8]

Full-context encoder output per utterance of the first ``--utts`` rows of a JSONL manifest
(default: the speechocean762 dev-test that models/default never trained on,
egs/default/data/devtest/speechocean762_devtest.jsonl, made by egs/default/run.sh); greedy attention decoding (one
decoder pass per token) and :func:`asr.search.parallel.blockwise_parallel_greedy` (k CTC-proposed
tokens checked per pass, Jacobi-style carry-over) on the same output; 1 thread. Reports decoder
passes, wall time and whether the outputs are identical. Two diagnostics say where the passes go:
an "oracle" row per k (the greedy output itself as proposals: the fewest passes any proposal
source can give, ceil((tokens + 1) / (k + 1))) and how many utterances' collapsed CTC tokens equal
the greedy attention output, with the token edit distance between the two. Writes benchmarks/results/parallel_decoding.{md,json}.
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
from asr.models.io import default_model_dir, load_model_dir
from asr.search.parallel import blockwise_parallel_greedy, ctc_proposals, greedy_attention

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="JSONL manifest (id, audio, text)")
    p.add_argument("--utts", type=int, default=30)
    p.add_argument("--k", type=int, nargs="+", default=[4, 8])
    args = p.parse_args()
    torch.set_num_threads(1)
    loaded = load_model_dir(default_model_dir())
    model = loaded.model
    rows = {"greedy": {"passes": 0, "seconds": 0.0, "identical": 0}}
    rows.update({f"parallel k={k}": {"passes": 0, "seconds": 0.0, "identical": 0} for k in args.k})
    rows.update({f"oracle k={k}": {"passes": 0, "seconds": 0.0, "identical": 0} for k in args.k})
    tokens, ctc_equal, ctc_edits = 0, 0, 0
    lines = read_manifest(args.data)[: args.utts]
    for row in lines:
        wave = load_audio(row["audio"], row.get("start"), row.get("end"))
        feats, lens = Fbank(loaded.features)(wave[None], torch.tensor([wave.shape[0]]))
        with torch.inference_mode():
            enc = model.encode(feats, lens)[0][0]
            proposals = ctc_proposals(model.ctc_logp(enc))
        t0 = time.perf_counter()
        ref = greedy_attention(model.decoder, enc, max_len=enc.shape[0])
        rows["greedy"]["seconds"] += time.perf_counter() - t0
        rows["greedy"]["passes"] += ref.passes
        rows["greedy"]["identical"] += 1
        tokens += len(ref.tokens)
        ctc_equal += proposals == ref.tokens
        ctc_edits += _edits(proposals, ref.tokens)
        for k in args.k:
            for name, guess in ((f"parallel k={k}", proposals), (f"oracle k={k}", ref.tokens)):
                t0 = time.perf_counter()
                out = blockwise_parallel_greedy(model.decoder, enc, guess, max_len=enc.shape[0], k=k)
                row = rows[name]
                row["seconds"] += time.perf_counter() - t0
                row["passes"] += out.passes
                row["identical"] += out.tokens == ref.tokens
    result = {"data": str(args.data), "utts": len(lines), "tokens": tokens, "ctc_equals_greedy_utts": ctc_equal,
              "ctc_greedy_token_edits": ctc_edits,
              "loadavg_1min": os.getloadavg()[0], "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parallel_decoding.json").write_text(json.dumps(result, indent=2) + "\n")
    g = rows["greedy"]
    md = [f"# Blockwise parallel decoding, models/default, first {len(lines)} utterances of {args.data.name} ({tokens} tokens)", "",
          "Greedy attention decoding over the full-context encoder output; proposals = collapsed greedy CTC tokens.",
          f"1 thread, host load average (1 min) {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared host: wall",
          "times are noisy; decoder passes and identical outputs are deterministic, and the wall-time ratios",
          "within one run are what count).", "",
          "| search | decoder passes | passes saved | wall s | identical outputs |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['passes']} | {g['passes'] / r['passes']:.2f}x | {r['seconds']:.2f} | {r['identical']}/{len(lines)} |")
    md += ["", f"Collapsed greedy CTC tokens equal the greedy attention output on {ctc_equal}/{len(lines)} utterances;",
           f"their token edit distance to it is {ctc_edits} ({ctc_edits / max(tokens, 1) * 100:.1f} % of the {tokens} tokens).",
           "Oracle rows propose the greedy output itself (not a usable search: the bound on passes for each k)."]
    (RESULTS / "parallel_decoding.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
