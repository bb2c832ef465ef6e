"""Blockwise parallel decoding (CTC proposals) against plain greedy attention decoding, models/default.

    python benchmarks/parallel_decoding.py [--utts 30] [--k 8]

Full-context encoder output per utterance of speechocean762 dev; greedy attention decoding (one
decoder pass per token) and :func:`asr.search.parallel.blockwise_parallel_greedy` (k CTC-proposed
tokens checked per pass, Jacobi-style carry-over) on the same output; 1 thread. Reports decoder
passes, wall time and whether the outputs are identical. Writes
benchmarks/results/parallel_decoding.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from asr.audio import load_audio
from asr.features import Fbank
from asr.models.io import default_model_dir, load_model_dir
from asr.search.parallel import blockwise_parallel_greedy, ctc_proposals, greedy_attention

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path("/work/shared/corpora/speechocean762/dev")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utts", type=int, default=30)
    p.add_argument("--k", type=int, nargs="+", default=[4, 8])
    args = p.parse_args()
    torch.set_num_threads(1)
    loaded = load_model_dir(default_model_dir())
    model = loaded.model
    rows = {"greedy": {"passes": 0, "seconds": 0.0, "identical": 0}}
    rows.update({f"parallel k={k}": {"passes": 0, "seconds": 0.0, "identical": 0} for k in args.k})
    tokens = 0
    lines = (DATA / "wav.scp").read_text().splitlines()[: args.utts]
    for line in lines:
        wave = load_audio(DATA.parent / line.split(maxsplit=1)[1])
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
        for k in args.k:
            t0 = time.perf_counter()
            out = blockwise_parallel_greedy(model.decoder, enc, proposals, max_len=enc.shape[0], k=k)
            row = rows[f"parallel k={k}"]
            row["seconds"] += time.perf_counter() - t0
            row["passes"] += out.passes
            row["identical"] += out.tokens == ref.tokens
    result = {"utts": len(lines), "tokens": tokens, "loadavg_1min": os.getloadavg()[0], "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parallel_decoding.json").write_text(json.dumps(result, indent=2) + "\n")
    g = rows["greedy"]
    md = [f"# Blockwise parallel decoding, models/default, {len(lines)} speechocean762 dev utterances ({tokens} tokens)", "",
          "Greedy attention decoding over the full-context encoder output; proposals = collapsed greedy CTC tokens.",
          f"1 thread, host load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.", "",
          "| search | decoder passes | passes saved | wall s | identical outputs |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['passes']} | {g['passes'] / r['passes']:.2f}x | {r['seconds']:.2f} | {r['identical']}/{len(lines)} |")
    (RESULTS / "parallel_decoding.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
