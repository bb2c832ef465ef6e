"""Prepare a corpus into JSONL manifests (one utterance per line).

Examples:
  asr prepare kaldi data/train data/train.jsonl
  asr prepare librispeech --root /data/LibriSpeech --out data/librispeech
  asr prepare tedlium --root /data/TEDLIUM_release2 --out data/tedlium
  asr prepare tts --text prompts.txt --out data/tts --heldout-voices 'flite:slt'
"""

from __future__ import annotations

import argparse
import sys

from recipes import fixtures, librispeech, tedlium, tts

__all__ = ["add_arguments", "run"]

# corpus -> (module with add_arguments/run, help)
_RECIPES = {
    "librispeech": (librispeech, "LibriSpeech upstream layout (flac + trans.txt), every subset found"),
    "tedlium": (tedlium, "TED-LIUM release 2 or 3 (sph + stm), segments cut by stm times"),
    "tts": (tts, "synthesise a Kaldi dir of speech with the installed Debian TTS voices"),
    "fixtures": (fixtures, "tiny LibriSpeech / TED-LIUM corpora in the upstream layouts (tests)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    k = sub.add_parser("kaldi", help="a Kaldi data dir (wav.scp, text, utt2spk, optional segments)")
    k.add_argument("src", help="the Kaldi data directory")
    k.add_argument("out", help="output manifest (.jsonl)")
    k.add_argument("--workers", type=int, default=4, help="threads probing audio files (default 4)")
    k.add_argument("--quiet", action="store_true", help="no progress bar")
    for name, (module, help_text) in _RECIPES.items():
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))


def run(args: argparse.Namespace) -> int:
    if args.corpus in _RECIPES:
        return int(_RECIPES[args.corpus][0].run(args) or 0)
    from asr.data.kaldi import kaldi_to_manifest

    report = kaldi_to_manifest(args.src, args.out, workers=args.workers, progress=not args.quiet)
    print(f"{args.src} -> {args.out}: {report.summary()}", file=sys.stderr)
    return 0 if not report.errors else 1
