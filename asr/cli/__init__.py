"""The library's commands (tokenizer, cmvn, train, train-lm, average, export); the ``asr``
dispatcher that lists them with the other packages' commands is ``blockasr.cli``.

The command modules import nothing heavy at module level (``asr CMD --help`` must not wait for
torch); each ``run`` checks its paths with :func:`require` before it imports torch or loads anything.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["require"]


def require(flag: str, path: str | Path | None, kind: str = "file") -> None:
    """Raise :class:`FileNotFoundError` naming ``flag`` unless ``path`` is an existing ``kind``
    (``file``, ``dir`` or ``any``); None passes (an optional flag not given)."""
    if path is None:
        return
    p = Path(path)
    ok = {"file": p.is_file, "dir": p.is_dir, "any": p.exists}[kind]()
    if not ok:
        what = {"file": "file", "dir": "directory", "any": "file or directory"}[kind]
        raise FileNotFoundError(f"{flag} {path}: no such {what}" if not p.exists() else f"{flag} {path}: not a {what}")
