"""Synthetic speech: text lines spoken by the Debian TTS voices into a Kaldi data directory.

Output (the layout of ``shared/corpora``; ``wav.scp`` paths relative to ``--out``)::

    <out>/audio/<speaker>/<utt>.wav        16 kHz mono 16-bit
    <out>/<split>/{wav.scp,text,utt2spk,spk2utt}
    <out>/<heldout-split>/...              utterances of --heldout-voices, if any

Lines are read from ``--text`` files (plain, or Kaldi ``<id> <text>`` with ``--text-format kaldi``),
normalised (upper case, letters and apostrophes), filtered by word count (and lines with
vowel-less words like ``MRS`` or ``JR``, which voices expand, are dropped), and ``--num-utts`` of them
drawn with the seed. Line ``i`` goes to voice ``i mod len(voices)`` in a seeded order (speakers balanced);
speaking rate, pitch and gain come from an RNG seeded by ``(seed, utterance id)``, so an utterance
sounds the same whatever the number of workers. Audio already on disk is kept (re-runs resume).

    python -m recipes.tts --text shared/text/brown.txt --num-utts 2000 --out data/tts \\
        --voices 'espeak:*' 'flite:*' --heldout-voices 'flite:slt' 'espeak:en-gb-scotland*'
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from recipes.kaldi_dir import KaldiEntry, write_kaldi_dir
from asr.text import normalize_text
from recipes.voices import Prosody, Voice, available_voices, select_voices, synthesize

__all__ = ["TtsConfig", "Job", "read_text_lines", "plan_jobs", "render", "generate", "add_arguments",
           "run", "main"]

SAMPLE_RATE = 16000
_VOWEL = re.compile(r"[AEIOUY]")


@dataclass(frozen=True)
class TtsConfig:
    """How to turn text into synthetic speech.

    Args:
        num_utts: how many lines to speak (None: all that pass the word-count filter).
        min_words, max_words: keep lines with this many words.
        seed: seeds the line draw and every utterance's prosody.
        rate_range, pitch_range: uniform ranges of :class:`recipes.voices.Prosody` factors.
        gain_range: uniform range of the peak amplitude of the written audio.
        pad_s: silence added before and after the speech, seconds.
    """

    num_utts: int | None = None
    min_words: int = 3
    max_words: int = 25
    seed: int = 0
    rate_range: tuple[float, float] = (0.8, 1.25)
    pitch_range: tuple[float, float] = (0.85, 1.2)
    gain_range: tuple[float, float] = (0.3, 0.95)
    pad_s: float = 0.15


@dataclass(frozen=True)
class Job:
    """One utterance to synthesise."""

    utt: str
    text: str
    voice: Voice
    prosody: Prosody
    gain: float
    path: Path  # absolute output path

    @property
    def speaker(self) -> str:
        return self.voice.speaker


def read_text_lines(paths: list[str | Path], text_format: str = "plain") -> list[str]:
    """Normalised lines of ``paths`` (``kaldi`` format: the first field, an id, is dropped)."""
    if text_format not in ("plain", "kaldi"):
        raise ValueError(f"unknown text format {text_format!r}; expected plain or kaldi")
    lines = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            if text_format == "kaldi":
                line = line.partition(" ")[2]
            line = normalize_text(line)
            if line:
                lines.append(line)
    return lines


def plan_jobs(lines: list[str], voices: list[Voice], out_dir: Path, cfg: TtsConfig) -> list[Job]:
    """Choose the lines, assign voices round-robin and draw each utterance's prosody.

    Raises:
        ValueError: no voices, or no line passes the word-count filter.
    """
    if not voices:
        raise ValueError("no TTS voice available (install espeak-ng or flite, or widen --voices)")
    pool = [line for line in lines
            if cfg.min_words <= len(line.split()) <= cfg.max_words and _speakable(line)]
    if not pool:
        raise ValueError(f"no text line has {cfg.min_words}..{cfg.max_words} words")
    rng = random.Random(cfg.seed)
    count = len(pool) if cfg.num_utts is None else min(cfg.num_utts, len(pool))
    chosen = rng.sample(pool, count)
    voices = rng.sample(sorted(voices), len(voices))  # engines mixed even when count is small
    jobs = []
    for i, text in enumerate(chosen):
        voice = voices[i % len(voices)]
        utt = f"{voice.speaker}-{i:06d}"
        urng = random.Random(f"{cfg.seed}:{utt}")
        prosody = Prosody(rate=round(urng.uniform(*cfg.rate_range), 3),
                          pitch=round(urng.uniform(*cfg.pitch_range), 3))
        gain = round(urng.uniform(*cfg.gain_range), 3)
        path = (out_dir / "audio" / voice.speaker / f"{utt}.wav").resolve()
        jobs.append(Job(utt, text, voice, prosody, gain, path))
    return jobs


def _speakable(line: str) -> bool:
    """False for lines with vowel-less words (``MRS``, ``JR``, ``J``): a voice would expand or spell
    them, and the audio would no longer match the text."""
    return all(_VOWEL.search(word) for word in line.split())


def render(job: Job, pad_s: float = 0.15) -> np.ndarray:
    """Speak one job: engine output resampled to 16 kHz, padded and scaled to the job's peak gain.

    Returns:
        (N,) float32 samples at 16 kHz.
    """
    import torch  # deferred: workers import it once each, the parent only when it renders

    from asr.audio import resample

    samples, rate = synthesize(job.voice, job.text, job.prosody)
    wave = resample(torch.from_numpy(np.ascontiguousarray(samples)), rate, SAMPLE_RATE).numpy()
    pad = np.zeros(int(pad_s * SAMPLE_RATE), dtype=np.float32)
    wave = np.concatenate([pad, wave, pad])
    peak = float(np.abs(wave).max())
    if peak == 0.0:
        raise RuntimeError(f"{job.voice.spec}: silent output for {job.text!r}")
    return (wave * (job.gain / peak)).astype(np.float32)


def _run_job(args: tuple[Job, float]) -> tuple[str, str | None]:
    job, pad_s = args
    if job.path.is_file():
        return job.utt, None
    try:
        wave = render(job, pad_s)
    except RuntimeError as e:
        return job.utt, str(e)
    job.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.path.with_name(job.path.stem + ".tmp.wav")
    sf.write(str(tmp), wave, SAMPLE_RATE, subtype="PCM_16")
    tmp.replace(job.path)
    return job.utt, None


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def generate(jobs: list[Job], out_dir: str | Path, split: str = "train",
             heldout: list[Voice] = (), heldout_split: str = "heldout", workers: int = 1,
             pad_s: float = 0.15) -> dict[str, int]:
    """Synthesise ``jobs`` with ``workers`` processes and write the Kaldi directories.

    Utterances whose engine fails are reported on stderr and left out.

    Returns:
        split name -> number of utterances written.
    """
    out_dir = Path(out_dir).resolve()
    errors: dict[str, str] = {}
    tasks = [(job, pad_s) for job in jobs]
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")  # torch and fork do not mix
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            results = list(pool.imap_unordered(_run_job, tasks, chunksize=8))
    else:
        results = [_run_job(task) for task in tasks]
    for utt, error in results:
        if error is not None:
            errors[utt] = error
            print(f"tts: error: {utt}: {error}", file=sys.stderr)
    held = set(heldout)
    splits: dict[str, list[KaldiEntry]] = {split: []}
    if held:
        splits[heldout_split] = []
    for job in jobs:
        if job.utt in errors:
            continue
        name = heldout_split if job.voice in held else split
        splits[name].append(KaldiEntry(job.utt, job.path.relative_to(out_dir).as_posix(),
                                       job.text, job.speaker))
    for name, entries in splits.items():
        write_kaldi_dir(out_dir / name, entries)
        print(f"tts {name}: {len(entries)} utterances, "
              f"{len({e.speaker for e in entries})} voices -> {out_dir / name}")
    return {name: len(entries) for name, entries in splits.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options (``asr prepare tts`` and ``python -m recipes.tts``)."""
    parser.add_argument("--text", nargs="+", help="text files, one utterance per line")
    parser.add_argument("--text-format", default="plain", choices=("plain", "kaldi"))
    parser.add_argument("--out", help="corpus folder to write")
    parser.add_argument("--split", default="train", help="name of the main data dir (train)")
    parser.add_argument("--num-utts", type=int, default=None)
    parser.add_argument("--min-words", type=int, default=TtsConfig.min_words)
    parser.add_argument("--max-words", type=int, default=TtsConfig.max_words)
    parser.add_argument("--voices", nargs="+", default=None, metavar="PATTERN",
                        help="voice specs or globs (espeak:en-us+f2, 'flite:*'); default: all")
    parser.add_argument("--exclude-voices", nargs="+", default=(), metavar="PATTERN")
    parser.add_argument("--heldout-voices", nargs="+", default=None, metavar="PATTERN",
                        help="voices whose utterances go to --heldout-split instead")
    parser.add_argument("--heldout-split", default="heldout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--list-voices", action="store_true", help="print usable voices and exit")


def run(args: argparse.Namespace) -> int:
    """Run with parsed options; returns the exit status (errors: one line on stderr)."""
    voices = available_voices()
    voices = select_voices(voices, args.voices)
    voices = [v for v in voices if v not in select_voices(voices, list(args.exclude_voices))]
    if args.list_voices:
        print("\n".join(v.spec for v in voices))
        return 0
    if not args.text or not args.out:
        print("error: --text and --out are required (unless --list-voices)", file=sys.stderr)
        return 2
    heldout = select_voices(voices, args.heldout_voices) if args.heldout_voices else []
    if args.heldout_voices and (not heldout or len(heldout) == len(voices)):
        print(f"error: --heldout-voices matched {len(heldout)} of {len(voices)} voices; "
              "it must leave some for training and hold some out", file=sys.stderr)
        return 1
    cfg = TtsConfig(num_utts=args.num_utts, min_words=args.min_words, max_words=args.max_words,
                    seed=args.seed)
    try:
        lines = read_text_lines(args.text, args.text_format)
        jobs = plan_jobs(lines, voices, Path(args.out), cfg)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = generate(jobs, args.out, args.split, heldout, args.heldout_split, args.jobs, cfg.pad_s)
    return 0 if counts[args.split] > 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asr prepare tts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
