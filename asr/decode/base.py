"""What every block decoder returns, and turning token spikes into timed words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence
import torch

from asr.encoder.conformer import FRAME_MS
from asr.tokenizer import Tokenizer

__all__ = ["Tokens", "Word", "BlockDecoder", "words_from_tokens"]


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


class BlockDecoder:
    """A decoder fed one encoder block at a time, one object per stream.

    ``finalize()`` ends the current segment (an endpoint or the end of the stream) and leaves the
    decoder ready for the next one. Subclasses implement ``accept_block``, ``partial``, ``finalize``;
    ``accept_features`` is for decoders that re-read the raw features (the offline one).
    """

    partials = True  # False: partial() is always empty, the recognizer sends no partial results

    def accept_features(self, feats: torch.Tensor) -> None:
        """Raw fbank frames (t, F) of the stream as they arrive, before the encoder sees them."""

    def accept_block(self, enc: torch.Tensor, ctc_logp: torch.Tensor) -> None:
        """enc (t, D) and ctc_logp (t, V) of the next frames of the segment."""
        raise NotImplementedError

    def partial(self) -> Tokens:
        """The current best tokens (may change later). A decoder may return the same object until
        they change (the recognizer then skips comparing and detokenizing them)."""
        raise NotImplementedError

    def finalize(self) -> Tokens:
        """The segment's final tokens; the decoder then starts the next segment afresh."""
        raise NotImplementedError

    def end_of_stream(self) -> None:
        """The blocks still to come are the stream's last (the recognizer's flush), and
        ``finalize`` follows them. A decoder that would redo their work in ``finalize`` may take
        them in without searching (bsbs); the default does nothing."""

    def batch_key(self) -> Hashable:
        """Decoders with equal keys (and class) take their blocks in one :meth:`accept_blocks` call."""
        return id(self)

    @staticmethod
    def finalize_many(decoders: Sequence["BlockDecoder"]) -> list[Tokens]:
        """``finalize`` for several streams at once (their streams end together); equals calling each
        decoder's ``finalize`` in turn. Batched decoders override it."""
        return [decoder.finalize() for decoder in decoders]

    @staticmethod
    def accept_blocks(decoders: Sequence["BlockDecoder"], encs: Sequence[torch.Tensor],
                      ctc_logps: Sequence[torch.Tensor], ctc_labels: Sequence[list[int]] | None = None) -> None:
        """``accept_block`` for several streams at once (the next block of each); equals calling
        each decoder's ``accept_block`` in turn. Batched decoders override it. ``ctc_labels``: the
        per-frame argmax of each ``ctc_logps`` on the host, where the caller has them already
        (:func:`streaming.decode_round` takes a round's labels in one copy)."""
        for decoder, enc, logp in zip(decoders, encs, ctc_logps):
            decoder.accept_block(enc, logp)


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
            words.append(Word(text, round(offset_seconds + frames[0] * FRAME_MS / 1000, 3),
                              round(offset_seconds + (frames[-1] + 1) * FRAME_MS / 1000, 3)))
    return words
