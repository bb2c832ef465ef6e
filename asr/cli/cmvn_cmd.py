"""Estimate global CMVN statistics (per-dimension mean and inverse std of fbank) from a manifest.

Example:
  asr cmvn --manifest data/train.jsonl --out data/cmvn.json --max-utts 2000
"""

from __future__ import annotations

import argparse
import random
import sys

from asr.cli import require


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="training manifest (.jsonl)")
    p.add_argument("--out", required=True, help="output statistics (.json)")
    p.add_argument("--max-utts", type=int, default=2000, help="random subset size (default 2000)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    require("--manifest", args.manifest)
    import torch
    from tqdm import tqdm

    from asr.audio import AudioError
    from asr.data import load_row_audio
    from asr.data.manifest import read_manifest
    from asr.features import CmvnAccumulator, Fbank, FbankConfig

    rows = read_manifest(args.manifest)
    random.Random(args.seed).shuffle(rows)
    rows = rows[: args.max_utts]
    fbank = Fbank(FbankConfig())
    acc = CmvnAccumulator()
    errors = 0
    for row in tqdm(rows, desc="cmvn", unit="utt"):
        try:
            wave = load_row_audio(row)
        except AudioError as e:
            print(f"error: {row['id']}: {e}", file=sys.stderr)
            errors += 1
            continue
        feats, lens = fbank(wave[None], torch.tensor([wave.numel()]))
        acc.add(feats[0, : int(lens[0])])
    acc.result().save(args.out, frames=acc.frames)
    print(f"wrote {args.out} ({acc.frames} frames from {len(rows) - errors} utterances, {errors} errors)")
    return 0
