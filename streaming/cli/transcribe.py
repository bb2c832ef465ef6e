"""Transcribe audio files with a model, streaming each file through the recognizer (an hour-long
file runs in bounded memory). Output as plain text, JSON (segments with word timestamps), SRT or VTT.

Subtitles are cut at word boundaries: cues of at most 7 s and 2 lines of 42 characters, a new cue
after a pause of 1 s (--cue-max-s, --cue-max-lines, --cue-max-chars, --cue-pause-s).
The files, the model directory and the settings are checked before the model loads.

Examples:
  asr transcribe talk.wav
  asr transcribe a.flac b.opus --decoder bsbs --beam 8 --format json
  asr transcribe lecture.wav --block-ms 320 --format srt > lecture.srt
  asr transcribe lecture.wav --format vtt --cue-max-s 5 --cue-max-lines 1 > lecture.vtt
  asr transcribe talk.wav --decoder bsbs              # with the model's own LM (its lm/ folder)
  asr transcribe talk.wav --decoder bsbs --lm exp/lm/lm --lm-weight 0.3
  asr transcribe talk.wav --decoder bsbs --lm none    # the model alone
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from asr.inference import add_inference_arguments, check_model_files, inference_config_from_args
from streaming.subtitles import CueConfig, split_cues, to_srt, to_vtt

__all__ = ["add_arguments", "check_audio_files", "run"]


def _positive(convert: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {'integer' if convert is int else 'number'}, "
                                             f"got {text!r}")
        return value

    parse.__name__ = convert.__name__
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format soundfile reads)")
    p.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    d = CueConfig()
    g = p.add_argument_group("subtitles (--format srt|vtt): cues cut at word boundaries")
    g.add_argument("--cue-max-s", type=_positive(float), default=d.max_s, metavar="S",
                   help=f"longest cue in seconds (default {d.max_s:g})")
    g.add_argument("--cue-max-lines", type=_positive(int), default=d.max_lines, metavar="N",
                   help=f"lines per cue (default {d.max_lines})")
    g.add_argument("--cue-max-chars", type=_positive(int), default=d.max_chars, metavar="N",
                   help=f"characters per line (default {d.max_chars})")
    g.add_argument("--cue-pause-s", type=_positive(float), default=d.pause_s, metavar="S",
                   help=f"a pause between words at least this long starts a new cue (default {d.pause_s:g})")
    add_inference_arguments(p)


def check_audio_files(paths: list[str]) -> list[str]:
    """One error line per path that is missing or whose header soundfile cannot read (no torch)."""
    import soundfile as sf

    errors = []
    for path in paths:
        if not Path(path).exists():
            errors.append(f"{path}: no such audio file")
        elif Path(path).is_dir():
            errors.append(f"{path}: is a directory, not an audio file")
        else:
            try:
                sf.info(path)
            except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
                errors.append(f"{path}: cannot read audio ({e})")
    return errors


def _format(path: str, finals: list, fmt: str, many: bool, cues: CueConfig, audio_s: float) -> str:
    segments = [r for r in finals if r.text]
    text = " ".join(r.text for r in segments)
    if fmt == "text":
        return f"{path}: {text}" if many else text
    if fmt == "json":
        return json.dumps({"file": path, "text": text, "segments": [
            {"start": r.start, "end": r.end, "text": r.text,
             "words": [{"word": w.word, "start": w.start, "end": w.end} for w in r.words]} for r in segments]})
    cut = split_cues([w for r in segments for w in r.words], cues, end=audio_s)
    return (to_vtt if fmt == "vtt" else to_srt)(cut).rstrip("\n")  # print() ends the file


def run(args: argparse.Namespace) -> int:
    # Everything that can be checked without the model is checked first, without torch: the settings,
    # the model files and every audio file's header. One line each, exit status 2.
    cfg = inference_config_from_args(args)
    cues = CueConfig(max_s=args.cue_max_s, max_lines=args.cue_max_lines, max_chars=args.cue_max_chars,
                     pause_s=args.cue_pause_s)
    check_model_files(cfg)
    errors = check_audio_files(args.files)
    if errors:
        for e in errors:
            print(f"asr transcribe: error: {e}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from asr.audio import AudioError, audio_duration, stream_audio
    from asr.inference import load_inference
    from streaming import Recognizer

    loaded, lm = load_inference(cfg)
    failed = 0
    for path in args.files:
        try:
            total = audio_duration(path)  # the whole-file checks (truncation) that a header cannot show
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
        print(_format(path, finals, args.format, len(args.files) > 1, cues, total), flush=True)
    return 1 if failed else 0
