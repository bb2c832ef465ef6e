"""Transcribe audio files with a model, streaming each file through the recognizer (an hour-long
file runs in bounded memory). Output as plain text, JSON (segments with word timestamps), SRT or VTT.

Examples:
  asr transcribe talk.wav
  asr transcribe a.flac b.opus --decoder bsbs --beam 8 --format json
  asr transcribe lecture.wav --block-ms 320 --format srt > lecture.srt
  asr transcribe talk.wav --decoder bsbs --lm exp/lm/lm --lm-weight 0.3
"""

from __future__ import annotations

import argparse
import json
import sys


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by ``transcribe`` and ``decode``."""
    p.add_argument("--model", default=None, help="model directory (default: the shipped models/default)")
    p.add_argument("--decoder", choices=["ctc", "sar", "bsbs", "offline"], default="sar",
                   help="ctc: streaming greedy CTC; sar: semi-autoregressive (default); bsbs: blockwise "
                        "synchronous beam search; offline: full-context joint beam search per segment")
    p.add_argument("--block-ms", default="640", help="encoder block in ms, a multiple of 40 (default 640)")
    p.add_argument("--left-blocks", type=int, default=4, help="encoder left context in blocks (default 4)")
    p.add_argument("--beam", type=int, default=10, help="beam size for bsbs/offline (default 10)")
    p.add_argument("--ctc-beam", type=int, default=1,
                   help="ctc decoder: final result by CTC prefix beam search of this width (default 1 = greedy)")
    p.add_argument("--ctc-weight", type=float, default=0.3, help="CTC weight in joint searches (default 0.3)")
    p.add_argument("--lm", default=None, metavar="DIR",
                   help="LM directory (asr train-lm) for shallow fusion in bsbs/offline; same tokenizer as the model")
    p.add_argument("--lm-weight", type=float, default=None, help="shallow-fusion weight (default 0.3 with --lm)")
    p.add_argument("--tentative-frames", type=int, default=2, help="SAR boundary rule g; 0 = naive (default 2)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def recognizer_config(args: argparse.Namespace):
    from streaming import RecognizerConfig

    return RecognizerConfig(decoder=args.decoder, block_ms=int(args.block_ms), left_blocks=args.left_blocks,
                            beam=args.beam, ctc_beam=args.ctc_beam, ctc_weight=args.ctc_weight,
                            tentative_frames=args.tentative_frames,
                            lm_weight=lm_weight(args))


def lm_weight(args: argparse.Namespace) -> float:
    """The shallow-fusion weight: ``--lm-weight``, 0.3 when only ``--lm`` is given, 0 without ``--lm``."""
    if args.lm is None:
        if args.lm_weight:
            raise ValueError("--lm-weight needs --lm DIR")
        return 0.0
    return 0.3 if args.lm_weight is None else args.lm_weight


def load_lm(args: argparse.Namespace, loaded):
    """The ``--lm`` model (checked against the ASR model's tokenizer), or None."""
    if args.lm is None:
        return None
    from asr.models.lm_io import load_lm_dir

    return load_lm_dir(args.lm, args.device, tokenizer=loaded.tokenizer).lm


def load(args: argparse.Namespace):
    import torch

    from asr.models.io import default_model_dir, load_model_dir

    torch.set_num_threads(args.threads)
    return load_model_dir(args.model or default_model_dir(), args.device)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format soundfile reads)")
    add_decoding_arguments(p)
    p.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _format(path: str, finals: list, fmt: str, many: bool) -> str:
    segments = [r for r in finals if r.text]
    text = " ".join(r.text for r in segments)
    if fmt == "text":
        return f"{path}: {text}" if many else text
    if fmt == "json":
        return json.dumps({"file": path, "text": text, "segments": [
            {"start": r.start, "end": r.end, "text": r.text,
             "words": [{"word": w.word, "start": w.start, "end": w.end} for w in r.words]} for r in segments]})
    lines = ["WEBVTT", ""] if fmt == "vtt" else []
    for i, r in enumerate(segments, 1):
        sep = "." if fmt == "vtt" else ","
        lines += ([str(i)] if fmt == "srt" else []) + [f"{_stamp(r.start, sep)} --> {_stamp(r.end, sep)}", r.text, ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from asr.audio import AudioError, audio_duration, stream_audio
    from streaming import Recognizer

    loaded = load(args)
    cfg = recognizer_config(args)
    lm = load_lm(args, loaded)
    failed = 0
    for path in args.files:
        try:
            total = audio_duration(path)
            rec = Recognizer(loaded, cfg, lm=lm)
            finals = []
            with tqdm(total=round(total, 1), unit="s", desc=path, disable=args.quiet or total < 30,
                      file=sys.stderr, leave=False) as bar:
                for chunk in stream_audio(path, chunk_seconds=1.0):
                    finals += [r for r in rec.accept_waveform(chunk.numpy()) if r.is_final]
                    bar.update(round(chunk.numel() / 16000, 1))
            finals += [r for r in rec.finalize() if r.is_final]
        except AudioError as e:
            print(f"asr transcribe: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(_format(path, finals, args.format, len(args.files) > 1), flush=True)
    return 1 if failed else 0
