"""Subtitle cues from word timestamps: SRT and WebVTT.

Cues are cut at word boundaries so that each one is readable: at most ``max_s`` seconds long, at most
``max_lines`` lines of at most ``max_chars`` characters (a single word longer than a line gets a
line of its own), and a pause of ``pause_s`` or more between two words always starts a new cue.
The lines of a cue are balanced: the narrowest layout with the fewest lines. A cue stays on screen
``linger_s`` after its last word's end time (a CTC word ends one frame after its last spike, while
the word is still being spoken), but never past the next cue's start or the end of the audio.

Pure functions on plain word lists (anything with ``word``, ``start`` and ``end`` in seconds, such as
the ``words`` of a recognizer's final results); no model, no torch.

    words = [w for r in finals for w in r.words]
    print(to_srt(split_cues(words, CueConfig(max_s=5.0))))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

__all__ = ["Cue", "CueConfig", "TimedWord", "split_cues", "timestamp", "to_srt", "to_vtt", "wrap_lines"]


class TimedWord(Protocol):
    word: str
    start: float  # seconds
    end: float


@dataclass(frozen=True)
class CueConfig:
    """Args:
        max_s: longest cue, first word's start to last word's end (a single longer word is one cue).
        max_lines: lines per cue.
        max_chars: characters per line.
        pause_s: a silence between two words at least this long ends a cue.
        linger_s: how long a cue stays after its last word's end (up to the next cue).
    """

    max_s: float = 7.0
    max_lines: int = 2
    max_chars: int = 42
    pause_s: float = 1.0
    linger_s: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_s", "max_lines", "max_chars", "pause_s", "linger_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
                    or (name != "linger_s" and value == 0):
                raise ValueError(f"{name}: expected a {'positive' if name != 'linger_s' else 'non-negative'} "
                                 f"number, got {value!r}")
        for name in ("max_lines", "max_chars"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)


_EPS = 1e-6  # timestamps are rounded to ms: 7.0 - 0.0 may come out as 7.000000000001


def _greedy(words: Sequence[str], width: int) -> list[list[str]]:
    """Fill lines of at most ``width`` characters in order (a longer word gets its own line)."""
    lines: list[list[str]] = []
    length = 0
    for w in words:
        if lines and length + 1 + len(w) <= width:
            lines[-1].append(w)
            length += 1 + len(w)
        else:
            lines.append([w])
            length = len(w)
    return lines


def wrap_lines(words: Sequence[str], max_chars: int) -> list[str]:
    """``words`` in the fewest lines of at most ``max_chars`` characters, balanced: the layout's
    longest line is as short as it can be with that many lines.

    >>> wrap_lines("THE QUICK BROWN FOX JUMPS".split(), 20)
    ['THE QUICK BROWN', 'FOX JUMPS']
    """
    if not words:
        return []
    n = len(_greedy(words, max_chars))  # greedy filling gives the fewest lines
    lo, hi = max(len(w) for w in words), max(max_chars, max(len(w) for w in words))
    while lo < hi:  # the narrowest width that still fits in n lines
        mid = (lo + hi) // 2
        if len(_greedy(words, mid)) <= n:
            hi = mid
        else:
            lo = mid + 1
    return [" ".join(line) for line in _greedy(words, lo)]


def _fits(words: Sequence[str], cfg: CueConfig) -> bool:
    return len(_greedy(words, cfg.max_chars)) <= cfg.max_lines


def split_cues(words: Iterable[TimedWord], cfg: CueConfig = CueConfig(), end: float | None = None) -> list[Cue]:
    """Cut a stream of timed words into cues (in order; empty words are skipped).

    A word starts a new cue when the pause before it is at least ``cfg.pause_s``, when it would make
    the cue longer than ``cfg.max_s``, or when the cue's text would no longer fit in
    ``cfg.max_lines`` lines of ``cfg.max_chars``. ``end``: the end of the audio (seconds), which no
    cue outlasts.
    """
    cues: list[Cue] = []
    current: list[TimedWord] = []

    def close() -> None:
        if current:
            cues.append(Cue(current[0].start, current[-1].end,
                            tuple(wrap_lines([w.word for w in current], cfg.max_chars))))
            current.clear()

    for w in words:
        if not w.word:
            continue
        if current and (w.start - current[-1].end >= cfg.pause_s - _EPS or w.end - current[0].start > cfg.max_s + _EPS
                        or not _fits([c.word for c in current] + [w.word], cfg)):
            close()
        current.append(w)
    close()
    starts = [c.start for c in cues[1:]] + [float("inf")]
    limit = float("inf") if end is None else end
    return [Cue(c.start, max(c.end, min(c.end + cfg.linger_s, nxt, limit)), c.lines) for c, nxt in zip(cues, starts)]


def timestamp(seconds: float, sep: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT; ``sep="."`` for WebVTT)."""
    ms = int(round(max(0.0, seconds) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(cues: Sequence[Cue]) -> str:
    """SubRip text: numbered cues separated by blank lines."""
    blocks = [f"{i}\n{timestamp(c.start)} --> {timestamp(c.end)}\n" + "\n".join(c.lines)
              for i, c in enumerate(cues, 1)]
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def to_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT text: the ``WEBVTT`` header, then the cues separated by blank lines."""
    blocks = [f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n" + "\n".join(c.lines) for c in cues]
    return "\n\n".join(["WEBVTT", *blocks]) + "\n"
