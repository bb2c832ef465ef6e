"""Feature extraction speed (x real time, 1 thread) offline vs online, and their max difference.

    python benchmarks/features.py [--corpus ../shared/corpora/speechocean762/dev] [--utts 100]

Prints a table and writes benchmarks/results/features.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from asr.audio import load_audio
from asr.data.kaldi import read_kaldi_dir
from asr.features import Fbank, FbankConfig, OnlineFbank

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared/corpora/speechocean762/dev"))
    p.add_argument("--utts", type=int, default=100)
    p.add_argument("--chunk-ms", type=int, default=100, help="online chunk size (default 100 ms)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = read_kaldi_dir(args.corpus, progress=False).rows
    rows = random.Random(0).sample(rows, min(args.utts, len(rows)))
    waves = [load_audio(r["audio"]) for r in rows]
    seconds = sum(w.numel() for w in waves) / 16000
    cfg = FbankConfig()
    offline, online = Fbank(cfg), OnlineFbank(cfg)
    chunk = 16 * args.chunk_ms

    t0 = time.perf_counter()
    with torch.no_grad():
        off = [offline(w[None], torch.tensor([w.numel()]))[0][0] for w in waves]
    t_off = time.perf_counter() - t0

    t0 = time.perf_counter()
    on = []
    for w in waves:
        online.reset()
        on.append(torch.cat([online.accept(w[i:i + chunk]) for i in range(0, w.numel(), chunk)]))
    t_on = time.perf_counter() - t0
    diff = max(float((a - b).abs().max()) for a, b in zip(off, on))
    frames_equal = all(a.shape == b.shape for a, b in zip(off, on))

    result = {"audio_seconds": round(seconds, 1), "utterances": len(waves), "threads": 1,
              "offline_x_realtime": round(seconds / t_off, 1), "online_x_realtime": round(seconds / t_on, 1),
              "online_chunk_ms": args.chunk_ms, "max_abs_diff": diff, "frame_counts_equal": frames_equal}
    table = ("| path | x real time (1 thread) |\n|---|---|\n"
             f"| offline (per utterance) | {result['offline_x_realtime']} |\n"
             f"| online ({args.chunk_ms} ms chunks) | {result['online_x_realtime']} |\n\n"
             f"{len(waves)} utterances, {seconds:.0f} s of speech; online vs offline max abs diff "
             f"{diff:.2e}, frame counts equal: {frames_equal}\n")
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "features.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "features.md").write_text(table)


if __name__ == "__main__":
    main()
