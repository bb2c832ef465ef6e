"""Subtitle cues cut at word boundaries (streaming/subtitles.py) on synthetic word lists, and once
through ``asr transcribe --format srt|vtt`` with the shipped model on a longer real voice."""

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streaming.subtitles import Cue, CueConfig, split_cues, timestamp, to_srt, to_vtt, wrap_lines

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class W:
    word: str
    start: float
    end: float


def _speech(n: int, seed: int = 0, rate: float = 0.35, pauses: dict | None = None) -> list[W]:
    """``n`` words of random lengths, one every ``rate`` s, with extra silence before the indices in ``pauses``."""
    rng = random.Random(seed)
    words, t = [], 0.0
    for i in range(n):
        t += (pauses or {}).get(i, 0.0)
        words.append(W("X" * rng.randint(1, 12), round(t, 3), round(t + 0.04, 3)))
        t += rate
    return words


def _check(cues: list[Cue], words: list[W], cfg: CueConfig) -> None:
    """Every rule, and that the cues are the words in order, cut only at word boundaries."""
    assert " ".join(c.text for c in cues) == " ".join(w.word for w in words)
    i = 0
    for c in cues:
        n = len(c.text.split())
        group = words[i:i + n]
        assert c.start == group[0].start and c.end >= group[-1].end
        assert group[-1].end - group[0].start <= cfg.max_s + 1e-9 or n == 1
        assert len(c.lines) <= cfg.max_lines
        assert all(len(line) <= cfg.max_chars or " " not in line for line in c.lines)
        assert all(b.start - a.end < cfg.pause_s for a, b in zip(group, group[1:]))  # no long pause inside
        i += n


def _maximal(cues: list[Cue], words: list[W], cfg: CueConfig) -> None:
    """Greedy: a cue ends only when the next word would break a rule."""
    i = 0
    for c, nxt in zip(cues, cues[1:]):
        n = len(c.text.split())
        group, w = words[i:i + n], words[i + n]
        too_long = w.end - group[0].start > cfg.max_s
        paused = w.start - group[-1].end >= cfg.pause_s
        too_wide = len(wrap_lines([g.word for g in group] + [w.word], cfg.max_chars)) > cfg.max_lines
        assert too_long or paused or too_wide, (c, nxt)
        i += n


@pytest.mark.parametrize("cfg", [CueConfig(), CueConfig(max_s=3.0), CueConfig(max_lines=1, max_chars=20),
                                 CueConfig(max_lines=3, max_chars=30, pause_s=0.5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cues_obey_every_limit_and_are_maximal(cfg, seed):
    words = _speech(300, seed=seed, pauses={40: 1.5, 41: 0.2, 120: 3.0, 200: 0.9})
    cues = split_cues(words, cfg)
    _check(cues, words, cfg)
    _maximal(cues, words, cfg)


def test_a_long_pause_ends_a_cue():
    words = [W("HELLO", 0.0, 0.3), W("THERE", 0.4, 0.7), W("AGAIN", 1.8, 2.1), W("NOW", 2.2, 2.4)]
    cues = split_cues(words, CueConfig(linger_s=0.0))
    assert [c.text for c in cues] == ["HELLO THERE", "AGAIN NOW"]  # 1.1 s gap >= 1 s
    assert [c.text for c in split_cues(words, CueConfig(pause_s=1.2))] == ["HELLO THERE AGAIN NOW"]


def test_the_seven_second_limit():
    words = [W(f"W{i}", i * 1.0, i * 1.0 + 0.5) for i in range(15)]  # one short word per second
    cues = split_cues(words, CueConfig(linger_s=0.0))
    assert [c.text.split()[0] for c in cues] == ["W0", "W7", "W14"]
    assert [(c.start, c.end) for c in cues] == [(0.0, 6.5), (7.0, 13.5), (14.0, 14.5)]


def test_two_lines_of_42_characters():
    words = [W(t, i * 0.1, i * 0.1 + 0.05) for i, t in enumerate(("ABCDEFGHIJ " * 12).split())]
    cues = split_cues(words)
    # 42 characters hold 3 ten-letter words with spaces (32; a 4th makes 43): 6 words per 2-line cue
    assert [len(c.text.split()) for c in cues] == [6, 6]
    assert cues[0].lines == ("ABCDEFGHIJ ABCDEFGHIJ ABCDEFGHIJ", "ABCDEFGHIJ ABCDEFGHIJ ABCDEFGHIJ")


def test_wrap_lines_balances_and_keeps_long_words_whole():
    assert wrap_lines("THE QUICK BROWN FOX JUMPS".split(), 20) == ["THE QUICK BROWN", "FOX JUMPS"]
    assert wrap_lines("A B C D".split(), 42) == ["A B C D"]
    assert wrap_lines(["SUPERCALIFRAGILISTIC", "IS", "LONG"], 10) == ["SUPERCALIFRAGILISTIC", "IS LONG"]
    assert wrap_lines([], 42) == []
    # a word longer than a line is a cue line of its own, never cut
    cues = split_cues([W("A" * 50, 0.0, 0.5), W("B", 0.6, 0.7)], CueConfig(max_lines=1))
    assert [c.lines for c in cues] == [("A" * 50,), ("B",)]


def test_linger_stops_at_the_next_cue_and_the_end_of_the_audio():
    words = [W("ONE", 0.0, 0.2), W("TWO", 1.5, 1.7), W("THREE", 2.9, 3.0)]
    cues = split_cues(words, CueConfig(pause_s=1.0, linger_s=0.5), end=3.2)
    assert [(c.start, c.end) for c in cues] == [(0.0, 0.7), (1.5, 2.2), (2.9, 3.2)]
    cues = split_cues([W("ONE", 0.0, 0.2), W("TWO", 1.2, 1.4)], CueConfig(pause_s=1.0, linger_s=2.0))
    assert cues[0].end == 1.2


def test_formats():
    assert timestamp(3661.5) == "01:01:01,500" and timestamp(0.0421, ".") == "00:00:00.042"
    cues = [Cue(0.0, 1.5, ("HELLO", "WORLD")), Cue(2.0, 3.25, ("AGAIN",))]
    assert to_srt(cues) == "1\n00:00:00,000 --> 00:00:01,500\nHELLO\nWORLD\n\n2\n00:00:02,000 --> 00:00:03,250\nAGAIN\n"
    assert to_vtt(cues) == "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHELLO\nWORLD\n\n00:00:02.000 --> 00:00:03.250\nAGAIN\n"
    assert split_cues([]) == [] and to_srt([]) == "" and to_vtt([]) == "WEBVTT\n"


@pytest.mark.parametrize("field,value", [("max_s", 0), ("max_lines", 0), ("max_chars", 2.5), ("pause_s", -1),
                                         ("linger_s", -0.1), ("max_lines", True)])
def test_bad_config(field, value):
    with pytest.raises(ValueError, match=f"^{field}: expected a"):
        CueConfig(**{field: value})


def _parse(text: str, fmt: str) -> list[tuple[float, float, list[str]]]:
    def seconds(stamp: str) -> float:
        h, m, s = re.split("[:]", stamp.replace(",", "."))
        return int(h) * 3600 + int(m) * 60 + float(s)

    blocks = text.strip().split("\n\n")
    if fmt == "vtt":
        assert blocks[0] == "WEBVTT"
        blocks = blocks[1:]
    cues = []
    for i, block in enumerate(blocks, 1):
        lines = block.splitlines()
        if fmt == "srt":
            assert lines[0] == str(i)
            lines = lines[1:]
        a, b = lines[0].split(" --> ")
        cues.append((seconds(a), seconds(b), lines[1:]))
    return cues


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_transcribe_subtitles_follow_the_words(tmp_path, capsys, fmt):
    """The shipped model on a real voice said three times (1.5 s of faint noise between): the cues
    are split_cues of the JSON word timestamps, within the limits given on the command line."""
    from blockasr.cli import main

    wave, sr = sf.read(ROOT / "samples/so3027_what_in_short.wav", dtype="float32")
    gap = 0.003 * np.random.default_rng(0).standard_normal(int(1.5 * sr)).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, np.concatenate([wave, gap, wave, gap, wave]), sr)
    limits = ["--cue-max-s", "2.5", "--cue-max-chars", "16", "--cue-max-lines", "2"]
    assert main(["transcribe", str(path), "--format", "json", "--quiet", "--decoder", "ctc"]) == 0
    segments = json.loads(capsys.readouterr().out)["segments"]
    words = [W(w["word"], w["start"], w["end"]) for s in segments for w in s["words"]]
    assert len(words) >= 12
    assert main(["transcribe", str(path), "--format", fmt, "--quiet", "--decoder", "ctc", *limits]) == 0
    got = _parse(capsys.readouterr().out, fmt)
    cfg = CueConfig(max_s=2.5, max_chars=16, max_lines=2)
    expected = split_cues(words, cfg, end=len(wave) * 3 / sr + 3.0)
    assert [(round(a, 3), round(b, 3), lines) for a, b, lines in got] == \
        [(round(c.start, 3), round(c.end, 3), list(c.lines)) for c in expected]
    _check(expected, words, cfg)
    assert len(got) >= 3 and all(len(line) <= 16 for _, _, lines in got for line in lines if " " in line)
