"""What every block decoder returns, and turning token spikes into timed words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from asr.tokenizer import Tokenizer

__all__ = ["Tokens", "Word", "BlockDecoder", "words_from_tokens", "FRAME_SECONDS"]

FRAME_SECONDS = 0.04  # one encoder frame


@dataclass(frozen=True)
class Tokens:
    """Token ids and the encoder frame (relative to the segment start) where each one spikes."""

    ids: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)

    def __add__(self, other: "Tokens") -> "Tokens":
        return Tokens(self.ids + other.ids, self.frames + other.frames)


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the stream
    end: float


class BlockDecoder(Protocol):
    """A streaming decoder fed one encoder block at a time (one object per segment)."""

    def accept_block(self, enc: torch.Tensor, ctc_logp: torch.Tensor) -> None:
        """enc (t, D) and ctc_logp (t, V) of the next frames of the segment."""

    def partial(self) -> Tokens:
        """The current best tokens (may change later)."""

    def finalize(self) -> Tokens:
        """The final tokens once the segment has ended."""


def words_from_tokens(tokens: Tokens, tokenizer: Tokenizer, offset_seconds: float = 0.0) -> list[Word]:
    """Group pieces into words at sentencepiece word starts; a word spans from its first piece's
    spike to one frame after its last piece's spike."""
    groups: list[tuple[list[int], list[int]]] = []
    for i, f in zip(tokens.ids, tokens.frames):
        if tokenizer.is_word_start(i) or not groups:
            groups.append(([], []))
        groups[-1][0].append(i)
        groups[-1][1].append(f)
    words = []
    for ids, frames in groups:
        text = tokenizer.decode(ids)
        if text:
            words.append(Word(text, round(offset_seconds + frames[0] * FRAME_SECONDS, 3),
                              round(offset_seconds + (frames[-1] + 1) * FRAME_SECONDS, 3)))
    return words
