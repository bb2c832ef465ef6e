"""JSONL manifests: one utterance per line.

``{"id", "audio" (absolute path), "text", "speaker", "duration" (s), "start", "end"}``; ``start`` and
``end`` (seconds, or null) cut a segment out of the audio file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

__all__ = ["FIELDS", "read_manifest", "write_manifest", "ManifestError"]

FIELDS = ("id", "audio", "text", "speaker", "duration", "start", "end")
_REQUIRED = ("id", "audio", "text", "duration")


class ManifestError(ValueError):
    """A manifest line is not valid JSON or lacks a required field; the message names file and line."""


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
            missing = [k for k in _REQUIRED if k not in row]
            if missing:
                raise ManifestError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
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
            f.write(json.dumps(full, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
