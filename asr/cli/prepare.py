"""Prepare a corpus into a JSONL manifest (one utterance per line).

Examples:
  asr prepare kaldi data/train data/train.jsonl
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    k = sub.add_parser("kaldi", help="a Kaldi data dir (wav.scp, text, utt2spk, optional segments)")
    k.add_argument("src", help="the Kaldi data directory")
    k.add_argument("out", help="output manifest (.jsonl)")
    k.add_argument("--workers", type=int, default=4, help="threads probing audio files (default 4)")
    k.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from asr.data.kaldi import kaldi_to_manifest

    report = kaldi_to_manifest(args.src, args.out, workers=args.workers, progress=not args.quiet)
    print(f"{args.src} -> {args.out}: {report.summary()}", file=sys.stderr)
    return 0 if not report.errors else 1
