"""The TTS voices of the Debian speech engines, and how to make each one speak.

A voice is named ``engine:name``; per engine, the names, the Debian packages, and how rate and
pitch are set:

- ``espeak``: ``<accent>`` or ``<accent>+<variant>`` (``en-us``, ``en-gb+f2``, ``en-029+m3``);
  package ``espeak-ng``; ``-s`` words per minute, ``-p`` pitch 0..99.
- ``mbrola``: ``us1 us2 us3 en1``, spoken through espeak-ng; packages ``mbrola mbrola-<voice>``;
  as espeak.
- ``flite``: ``kal kal16 awb rms slt``; package ``flite``; ``duration_stretch``, ``int_f0_target_mean``.
- ``festival``: every installed English voice (``kal_diphone``); packages ``festival
  festvox-kallpc16k``; ``Duration_Stretch``, ``int_lr_params``.
- ``pico``: ``en-US en-GB``; package ``libttspico-utils`` (Debian non-free); speed/pitch markup.

:func:`available_voices` lists the catalogue with the voices whose engine (or voice data) is missing
left out; :func:`synthesize` runs one engine and returns its samples and sample rate.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["Voice", "Prosody", "ENGINE_PACKAGES", "catalogue", "available_voices", "select_voices",
           "synthesize"]

ENGINE_PACKAGES = {
    "espeak": "espeak-ng",
    "mbrola": "espeak-ng mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1",
    "flite": "flite",
    "festival": "festival festvox-kallpc16k",
    "pico": "libttspico-utils",
}
_ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
                   "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
_ESPEAK_VARIANTS = ("", "f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7",
                    "klatt", "klatt2", "klatt3")
_MBROLA_VOICES = ("us1", "us2", "us3", "en1")
_FLITE_F0 = {"kal": 95.0, "kal16": 95.0, "awb": 124.0, "rms": 108.0, "slt": 175.0}  # measured median f0
_PICO_VOICES = ("en-US", "en-GB")
_FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"), Path("/usr/lib/festival/voices"))
_MBROLA_DIR = Path("/usr/share/mbrola")
_TIMEOUT_S = 60


@dataclass(frozen=True, order=True)
class Voice:
    """One TTS voice: ``engine`` (espeak, mbrola, flite, festival, pico) and its ``name``."""

    engine: str
    name: str

    @property
    def spec(self) -> str:
        """``engine:name``, as given to ``--voices``."""
        return f"{self.engine}:{self.name}"

    @property
    def speaker(self) -> str:
        """Speaker id: ``<engine>-<name with letters and digits only>`` (``espeak-enusf2``).

        The name part has no ``-``, so ``<speaker>-<n>`` utterance ids sort in speaker order.
        """
        return f"{self.engine}-{re.sub(r'[^a-z0-9]', '', self.name.lower())}"

    @staticmethod
    def parse(spec: str) -> "Voice":
        engine, sep, name = spec.partition(":")
        if not sep or engine not in ENGINE_PACKAGES or not name:
            raise ValueError(f"bad voice {spec!r}: expected ENGINE:NAME with ENGINE one of "
                             f"{', '.join(ENGINE_PACKAGES)}")
        return Voice(engine, name)


@dataclass(frozen=True)
class Prosody:
    """Speaking rate and pitch relative to the voice's own (1.0 = unchanged)."""

    rate: float = 1.0
    pitch: float = 1.0


def catalogue() -> list[Voice]:
    """Every voice blockasr knows, installed or not (festival: the installed ones only)."""
    voices = [Voice("espeak", acc + (f"+{var}" if var else ""))
              for acc in _ESPEAK_ACCENTS for var in _ESPEAK_VARIANTS]
    voices += [Voice("mbrola", v) for v in _MBROLA_VOICES]
    voices += [Voice("flite", v) for v in _FLITE_F0]
    voices += [Voice("festival", v) for v in _festival_voices()]
    voices += [Voice("pico", v) for v in _PICO_VOICES]
    return voices


def available_voices(voices: list[Voice] | None = None, verbose: bool = True) -> list[Voice]:
    """The voices of ``voices`` (default: :func:`catalogue`) that can speak on this machine.

    With ``verbose``, one message per engine says which voices are skipped and what to install.
    """
    voices = catalogue() if voices is None else voices
    kept, skipped = [], {}
    for voice in voices:
        reason = _missing(voice)
        if reason is None:
            kept.append(voice)
        else:
            skipped.setdefault((voice.engine, reason), []).append(voice.name)
    if verbose:
        for (engine, reason), names in skipped.items():
            print(f"tts: skipping {len(names)} {engine} voice(s) ({', '.join(names[:6])}"
                  f"{' ...' if len(names) > 6 else ''}): {reason}", file=sys.stderr)
    return kept


def select_voices(voices: list[Voice], patterns: list[str] | None) -> list[Voice]:
    """The voices whose spec matches any of the shell-style ``patterns`` (``espeak:en-gb*``,
    ``flite:*``); all of them when ``patterns`` is None. Order follows ``voices``."""
    if patterns is None:
        return list(voices)
    return [v for v in voices if any(fnmatch.fnmatchcase(v.spec, p) for p in patterns)]


def synthesize(voice: Voice, text: str, prosody: Prosody = Prosody()) -> tuple[np.ndarray, int]:
    """Speak ``text`` with ``voice``.

    Returns:
        (samples (N,) float32 mono, sample rate of the engine).

    Raises:
        RuntimeError: the engine failed or produced no audio; the message names voice and text.
    """
    with tempfile.TemporaryDirectory(prefix="blockasr-tts-") as tmp:
        wav = Path(tmp) / "out.wav"
        cmd, stdin = _command(voice, text.lower(), prosody, wav)  # lower case: no spelled acronyms
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                                  timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{voice.spec}: timed out after {_TIMEOUT_S} s on {text!r}") from None
        if proc.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"{voice.spec}: {cmd[0]} exited {proc.returncode} on {text!r}: "
                               f"{proc.stderr.strip()[-300:]}")
        samples, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    if samples.shape[0] == 0:
        raise RuntimeError(f"{voice.spec}: no audio for {text!r}")
    return samples.mean(axis=1), rate


def _command(voice: Voice, text: str, p: Prosody, wav: Path) -> tuple[list[str], str | None]:
    if voice.engine in ("espeak", "mbrola"):
        name = voice.name if voice.engine == "espeak" else f"mb-{voice.name}"
        pitch = int(np.clip(round(50 + 60 * (p.pitch - 1.0)), 0, 99))
        return ["espeak-ng", "-v", name, "-s", str(round(170 * p.rate)), "-p", str(pitch),
                "-w", str(wav), text], None
    if voice.engine == "flite":
        f0 = _FLITE_F0.get(voice.name, 110.0) * p.pitch
        return ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1.0 / p.rate:.3f}",
                "--setf", f"int_f0_target_mean={f0:.1f}", "-t", text, "-o", str(wav)], None
    if voice.engine == "festival":
        setup = (f"(begin (voice_{voice.name}) (Parameter.set 'Duration_Stretch {1.0 / p.rate:.3f}) "
                 f"(set! int_lr_params (list '(target_f0_mean {110.0 * p.pitch:.1f}) "
                 f"'(target_f0_std 15) '(model_f0_mean 170) '(model_f0_std 34))))")
        return ["text2wave", "-eval", setup, "-o", str(wav)], text + "\n"
    if voice.engine == "pico":
        markup = (f"<speed level='{round(100 * p.rate)}'><pitch level='{round(100 * p.pitch)}'>"
                  f"{text}</pitch></speed>")
        return ["pico2wave", "-l", voice.name, "-w", str(wav), markup], None
    raise ValueError(f"unknown TTS engine {voice.engine!r}")


def _missing(voice: Voice) -> str | None:
    """Why ``voice`` cannot speak here, or None if it can."""
    binary = {"espeak": "espeak-ng", "mbrola": "mbrola", "flite": "flite", "festival": "text2wave",
              "pico": "pico2wave"}[voice.engine]
    if shutil.which(binary) is None or (voice.engine == "mbrola" and not shutil.which("espeak-ng")):
        return f"{binary} not installed (apt-get install {ENGINE_PACKAGES[voice.engine]})"
    if voice.engine == "mbrola" and not (_MBROLA_DIR / voice.name).is_dir():
        return f"mbrola voice data not installed (apt-get install mbrola-{voice.name})"
    if voice.engine == "flite" and voice.name not in _flite_voices():
        return "not compiled into this flite"
    if voice.engine == "festival" and voice.name not in _festival_voices():
        return "festival voice not installed"
    return None


@functools.lru_cache(maxsize=None)
def _flite_voices() -> frozenset[str]:
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
    return frozenset(out.replace("Voices available:", "").split())


@functools.lru_cache(maxsize=None)
def _festival_voices() -> tuple[str, ...]:
    names = set()
    for root in _FESTIVAL_VOICE_DIRS:
        if root.is_dir():
            names.update(d.name for d in root.glob("*/*") if d.is_dir())  # english/, us/, ...
    return tuple(sorted(names))
