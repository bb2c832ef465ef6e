"""Transcript normalisation: the corpus recipes and the LM trainer write text this way.

blockasr's convention (``docs/INTERFACES.md``): upper-case words of letters and apostrophes, single
spaces.
"""

from __future__ import annotations

import re

__all__ = ["normalize_text"]

_HYPHENS = re.compile(r"[-_/]+")
_NOT_WORD = re.compile(r"[^A-Z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Upper-case ``text`` and keep letters and apostrophes only.

    Hyphens, underscores and slashes separate words (``"twenty-one"`` -> ``"TWENTY ONE"``); every other
    character is dropped; apostrophes that do not touch a letter are dropped.

    >>> normalize_text("  Don't stop-believing, 'til 3 AM!  ")
    "DON'T STOP BELIEVING 'TIL AM"
    """
    text = _HYPHENS.sub(" ", text.upper())
    text = _NOT_WORD.sub("", text)
    words = [w for w in _SPACES.split(text) if w.strip("'")]
    return " ".join(words)
