"""Writing Kaldi-style data directories (``wav.scp``, ``text``, ``utt2spk``, ``spk2utt``).

Follows the layout of the corpora in ``shared/corpora``: a corpus folder holds one folder per split
and the audio; ``wav.scp`` paths are relative to the corpus folder (``asr.data.kaldi`` resolves them
against the split folder, then its parent).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

__all__ = ["KaldiEntry", "write_kaldi_dir"]


class KaldiEntry(NamedTuple):
    """One utterance of a Kaldi data directory."""

    utt: str
    audio: str  # path as written to wav.scp
    text: str
    speaker: str


def write_kaldi_dir(data_dir: str | Path, entries: list[KaldiEntry]) -> None:
    """Write ``wav.scp``, ``text``, ``utt2spk`` and ``spk2utt`` for ``entries``, sorted by id.

    Utterance ids must begin with their speaker id (Kaldi's convention, so that sorting by utterance
    also groups by speaker).

    Raises:
        ValueError: duplicate utterance ids, whitespace in an id or path, or an utterance id that
            does not begin with its speaker id.
    """
    data_dir = Path(data_dir)
    entries = sorted(entries)
    seen: set[str] = set()
    for e in entries:
        if e.utt in seen:
            raise ValueError(f"{data_dir}: duplicate utterance id {e.utt!r}")
        seen.add(e.utt)
        for name, value in (("utterance id", e.utt), ("speaker id", e.speaker), ("path", e.audio)):
            if not value or any(c.isspace() for c in value):
                raise ValueError(f"{data_dir}: {name} {value!r} is empty or holds whitespace")
        if not e.utt.startswith(e.speaker):
            raise ValueError(f"{data_dir}: utterance id {e.utt!r} does not begin with its "
                             f"speaker id {e.speaker!r}")
    spk2utt: dict[str, list[str]] = defaultdict(list)
    for e in entries:
        spk2utt[e.speaker].append(e.utt)
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_lines(data_dir / "wav.scp", (f"{e.utt} {e.audio}" for e in entries))
    _write_lines(data_dir / "text", (f"{e.utt} {e.text}".rstrip() for e in entries))
    _write_lines(data_dir / "utt2spk", (f"{e.utt} {e.speaker}" for e in entries))
    _write_lines(data_dir / "spk2utt",
                 (f"{spk} {' '.join(utts)}" for spk, utts in sorted(spk2utt.items())))


def _write_lines(path: Path, lines) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)
