"""Tiny corpora in the exact upstream layouts, for tests and for trying a recipe end to end.

- :func:`make_librispeech`: ``LibriSpeech/<subset>/<spk>/<chapter>/<utt>.flac`` + ``*.trans.txt``.
- :func:`make_tedlium`: ``TEDLIUM_release2/<split>/{sph,stm}`` or ``TEDLIUM_release-3/{legacy,
  speaker-adaptation}/<split>/{sph,stm}`` + ``TEDLIUM_release-3/data``; NIST sphere audio, stm files
  with the quirks of the real ones (``;;`` headers, ``inter_segment_gap`` lines, noise tokens,
  ``<unk>``, split apostrophes, ``word(2)`` variants, a segment that is all noise, a last segment
  that overruns the audio).

The speech comes from a waveform source ``(text, index) -> (N,) float32 16 kHz``: espeak-ng when it is
installed (:func:`tts_source`), otherwise :func:`tone_source` (one deterministic harmonic tone per
word). Each maker returns the manifest rows a correct preparation must produce (ids, texts, speakers,
segment times), written down independently of the preparation code.

    python -m recipes.fixtures --out /tmp/fixtures            # both corpora
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

__all__ = ["WaveSource", "tts_source", "tone_source", "default_source", "make_librispeech",
           "make_tedlium", "add_arguments", "run", "main"]

SAMPLE_RATE = 16000
WaveSource = Callable[[str, int], np.ndarray]

_LIBRI_TEXTS = (
    "HE HOPED THERE WOULD BE STEW FOR DINNER",
    "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM",
    "AFTER EARLY NIGHTFALL THE YELLOW LAMPS WOULD LIGHT UP HERE AND THERE",
    "HELLO BERTIE ANY GOOD IN YOUR MIND",
    "THE MUSIC CAME NEARER AND HE RECALLED THE WORDS",
    "WE DON'T KNOW WHERE IT WILL TAKE US",
)
# (stm words as in TED-LIUM, the text a correct preparation gives); None: the segment is dropped
_TED_SEGMENTS = (
    ("{NOISE} so it 's the people who 've left", "SO IT'S THE PEOPLE WHO'VE LEFT"),
    ("and i said <unk> well {SMACK} that 's it", "AND I SAID WELL THAT'S IT"),
    ("we can 't do that(2) anymore {BREATH}", "WE CAN'T DO THAT ANYMORE"),
    ("{NOISE} <unk> {COUGH}", None),
    ("thank you very much <sil>", "THANK YOU VERY MUCH"),
)
_TED_TALKS = {"train": ("AaronHuey_2010X", "BillGates_2010"), "dev": ("DanBarber_2010",),
              "test": ("JaneMcGonigal_2010",)}


def tts_source(voice: str = "en-us") -> WaveSource:
    """Speech from espeak-ng ``voice``, resampled to 16 kHz (rate varies a little with the index)."""
    from recipes.voices import Prosody, Voice, synthesize

    def speak(text: str, index: int) -> np.ndarray:
        samples, rate = synthesize(Voice("espeak", voice), text, Prosody(rate=1.0 + 0.05 * (index % 3)))
        return _to_16k(samples, rate)

    return speak


def tone_source(word_s: float = 0.25, gap_s: float = 0.05) -> WaveSource:
    """A stand-in for speech: per word, a harmonic tone whose pitch is a hash of the word."""

    def speak(text: str, index: int) -> np.ndarray:
        parts = []
        t = np.arange(int(word_s * SAMPLE_RATE)) / SAMPLE_RATE
        envelope = np.hanning(t.size)
        for word in text.split():
            f0 = 90.0 + int(hashlib.md5(word.encode()).hexdigest()[:4], 16) % 160
            tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
            parts += [0.3 * envelope * tone, np.zeros(int(gap_s * SAMPLE_RATE))]
        return np.concatenate(parts).astype(np.float32)

    return speak


def default_source() -> WaveSource:
    """:func:`tts_source` where espeak-ng is installed, else :func:`tone_source`."""
    return tts_source() if shutil.which("espeak-ng") else tone_source()


def make_librispeech(root: str | Path, subsets: tuple[str, ...] = ("dev-clean", "test-clean"),
                     speakers: int = 2, utts_per_speaker: int = 2,
                     source: WaveSource | None = None) -> dict[str, list[dict]]:
    """Write ``root/LibriSpeech/<subset>/...`` with ``speakers`` x ``utts_per_speaker`` flac files.

    Returns:
        subset -> expected manifest rows (``id``, ``text``, ``speaker``, ``duration``, ``audio``),
        sorted by id.
    """
    source = source or default_source()
    expected: dict[str, list[dict]] = {}
    index = 0
    for s, subset in enumerate(subsets):
        rows = []
        for k in range(speakers):
            speaker, chapter = str(1000 + 100 * s + k), str(120000 + 7 * k)
            folder = Path(root) / "LibriSpeech" / subset / speaker / chapter
            folder.mkdir(parents=True, exist_ok=True)
            lines = []
            for n in range(utts_per_speaker):
                utt = f"{speaker}-{chapter}-{n:04d}"
                text = _LIBRI_TEXTS[index % len(_LIBRI_TEXTS)]
                wave = source(text, index)
                index += 1
                audio = folder / f"{utt}.flac"
                sf.write(str(audio), wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
                lines.append(f"{utt} {text}")
                rows.append({"id": utt, "text": text, "speaker": speaker,
                             "duration": wave.size / SAMPLE_RATE, "audio": str(audio.resolve())})
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
        expected[subset] = sorted(rows, key=lambda r: r["id"])
    return expected


def make_tedlium(root: str | Path, release: int = 2, source: WaveSource | None = None
                 ) -> dict[str, list[dict]]:
    """Write a TED-LIUM release ``release`` (2 or 3) layout under ``root``.

    Release 2: ``TEDLIUM_release2/{train,dev,test}``. Release 3: the same splits under
    ``TEDLIUM_release-3/legacy`` and ``TEDLIUM_release-3/speaker-adaptation`` (talks renamed with an
    ``SA`` suffix there), and the train talks again under ``TEDLIUM_release-3/data``.

    Returns:
        ``<layout>/<split>`` (release 3) or ``<split>`` (release 2) -> expected manifest rows sorted
        by id (``id``, ``text``, ``speaker``, ``start``, ``end``, ``duration``, ``audio``).
    """
    if release not in (2, 3):
        raise ValueError(f"TED-LIUM release must be 2 or 3, got {release}")
    source = source or default_source()
    root = Path(root)
    expected: dict[str, list[dict]] = {}
    if release == 2:
        for split, talks in _TED_TALKS.items():
            expected[split] = _write_split(root / "TEDLIUM_release2" / split, talks, source)
        return expected
    base = root / "TEDLIUM_release-3"
    for split, talks in _TED_TALKS.items():
        expected[f"legacy/{split}"] = _write_split(base / "legacy" / split, talks, source)
        expected[f"speaker-adaptation/{split}"] = _write_split(
            base / "speaker-adaptation" / split, tuple(f"{t}SA" for t in talks), source)
    expected["data/train"] = _write_split(base / "data", _TED_TALKS["train"], source)
    return expected


def _write_split(folder: Path, talks: tuple[str, ...], source: WaveSource) -> list[dict]:
    (folder / "sph").mkdir(parents=True, exist_ok=True)
    (folder / "stm").mkdir(parents=True, exist_ok=True)
    rows = []
    for t, talk in enumerate(talks):
        pieces, lines, cursor = [_silence(0.5)], [], 0.5
        lines.append(";; LABEL \"o\" \"Overall\" \"Overall results\"")
        lines.append(";; LABEL \"f0\" \"f0\" \"Wideband channel\"")
        talk_rows = []
        for n, (words, text) in enumerate(_TED_SEGMENTS):
            spoken = text.lower() if text else "mm hmm"
            wave = source(spoken, 10 * t + n)
            start = cursor
            end = round(start + wave.size / SAMPLE_RATE + 0.05, 2)  # stm times in centiseconds
            pieces += [wave, _silence(end - start - wave.size / SAMPLE_RATE)]
            lines.append(f"{talk} 1 {talk} {start:.2f} {end:.2f} <o,f0,male> {words}")
            if text is not None:
                talk_rows.append({"id": f"{talk}-{round(start * 100):07d}-{round(end * 100):07d}",
                                  "text": text, "speaker": talk, "start": start, "end": end})
            gap_end = round(end + 0.4, 2)
            lines.append(f"{talk} 1 inter_segment_gap {end:.2f} {gap_end:.2f} <o,,unknown> "
                         "ignore_time_segment_in_scoring")
            pieces.append(_silence(gap_end - end))
            cursor = gap_end
        # The audio stops 0.3 s before the last stm segment ends, as some real talks do.
        last = talk_rows[-1]
        audio = np.concatenate(pieces).astype(np.float32)[: int(round((last["end"] - 0.3) * SAMPLE_RATE))]
        last["end"] = audio.size / SAMPLE_RATE
        sph = folder / "sph" / f"{talk}.sph"
        sf.write(str(sph), audio, SAMPLE_RATE, format="NIST", subtype="PCM_16")
        (folder / "stm" / f"{talk}.stm").write_text("\n".join(lines) + "\n")
        for row in talk_rows:
            row["duration"] = row["end"] - row["start"]
            row["audio"] = str(sph.resolve())
        rows += talk_rows
    return sorted(rows, key=lambda r: r["id"])


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(max(0, int(round(seconds * SAMPLE_RATE))), dtype=np.float32)


def _to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    import torch

    from asr.audio import resample

    return resample(torch.from_numpy(np.ascontiguousarray(samples)), rate).numpy().astype(np.float32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options (``asr prepare fixtures`` and ``python -m recipes.fixtures``)."""
    parser.add_argument("--out", required=True, help="folder to write the corpora into")
    parser.add_argument("--corpus", choices=("librispeech", "tedlium", "both"), default="both")
    parser.add_argument("--tedlium-release", type=int, choices=(2, 3), default=2)
    parser.add_argument("--tones", action="store_true", help="tones instead of TTS speech")


def run(args: argparse.Namespace) -> int:
    """Run with parsed options; returns the exit status (errors: one line on stderr)."""
    source = tone_source() if args.tones else default_source()
    if args.corpus in ("librispeech", "both"):
        made = make_librispeech(args.out, source=source)
        print(f"librispeech fixture: {sum(map(len, made.values()))} utterances in {args.out}")
    if args.corpus in ("tedlium", "both"):
        made = make_tedlium(args.out, args.tedlium_release, source=source)
        print(f"tedlium fixture: {sum(map(len, made.values()))} segments in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asr prepare fixtures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
