"""JSONL manifests: one utterance (or one concatenated segment) per line.

``{"id", "audio" (absolute path), "text", "speaker", "duration" (s), "start", "end"}``; ``start`` and
``end`` (seconds, or null) cut a segment out of the audio file.

A concatenated row (long training segments, ``egs/default/local/long_segments.py``) lists its parts
in place: ``audio`` is a list of paths, ``start`` / ``end`` are null or lists of the same length
(null entries allowed), and the optional ``gap`` (seconds) of silence goes between parts. Its
``text`` is the parts' texts joined with spaces and ``duration`` the whole length, gaps included.
The audio of a row, either form, is read by :func:`asr.data.dataset.load_row_audio`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

__all__ = ["FIELDS", "OPTIONAL_FIELDS", "read_manifest", "write_manifest", "check_row", "ManifestError"]

FIELDS = ("id", "audio", "text", "speaker", "duration", "start", "end")
OPTIONAL_FIELDS = ("gap",)  # written only when set
_REQUIRED = ("id", "audio", "text", "duration")


class ManifestError(ValueError):
    """A manifest line is not valid JSON or lacks a required field; the message names file and line."""


def check_row(row: dict) -> str | None:
    """What is wrong with the form of ``row`` (None if nothing): a required field missing, or a
    concatenated row whose ``audio`` / ``start`` / ``end`` / ``gap`` do not fit together."""
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    audio = row["audio"]
    if isinstance(audio, str):
        return None
    if not isinstance(audio, list) or not audio or not all(isinstance(p, str) for p in audio):
        return "field audio must be a path or a non-empty list of paths"
    for key in ("start", "end"):
        value = row.get(key)
        if value is not None and (not isinstance(value, list) or len(value) != len(audio)):
            return f"field {key} of a row with {len(audio)} audio parts must be null or a list of {len(audio)}"
    gap = row.get("gap")
    if gap is not None and (isinstance(gap, bool) or not isinstance(gap, (int, float)) or gap < 0):
        return f"field gap must be a non-negative number of seconds, got {gap!r}"
    return None


def read_manifest(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            problem = check_row(row)
            if problem:
                raise ManifestError(f"{path}:{n}: {problem}")
            rows.append(row)
    return rows


def write_manifest(path: str | Path, rows: Iterable[dict]) -> int:
    """Write ``rows`` atomically (temp file + rename); returns the number of lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w") as f:
        for row in rows:
            full = {k: row.get(k) for k in FIELDS}
            full.update({k: row[k] for k in OPTIONAL_FIELDS if row.get(k) is not None})
            f.write(json.dumps(full, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
