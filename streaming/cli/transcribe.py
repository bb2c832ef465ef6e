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

from asr.inference import add_inference_arguments

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format soundfile reads)")
    p.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_arguments(p)


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
    from asr.inference import inference_config_from_args, load_inference
    from streaming import Recognizer

    cfg = inference_config_from_args(args)
    loaded, lm = load_inference(cfg)
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
                    bar.update(round(chunk.numel() / loaded.features.sample_rate, 1))
            finals += [r for r in rec.finalize() if r.is_final]
        except AudioError as e:
            print(f"asr transcribe: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(_format(path, finals, args.format, len(args.files) > 1), flush=True)
    return 1 if failed else 0
