"""SentencePiece tokenizer with fixed special ids.

Ids: ``BLANK = 0`` (``<blk>``, the CTC blank and the padding id), ``UNK = 1`` (``<unk>``),
``SOS_EOS = 2`` (``<sos/eos>``, both start and end of sentence). Ordinary pieces start at 3.
Text is upper-case words (the corpora's normalisation); :meth:`Tokenizer.decode` returns the same.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

__all__ = ["BLANK", "UNK", "SOS_EOS", "Tokenizer", "train_tokenizer"]

BLANK = 0
UNK = 1
SOS_EOS = 2


class Tokenizer:
    """Wraps a trained sentencepiece model; see the module docstring for the fixed ids."""

    def __init__(self, model_path: str | Path):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {self.path}")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        for want, piece in ((BLANK, "<blk>"), (UNK, "<unk>"), (SOS_EOS, "<sos/eos>")):
            if self.sp.id_to_piece(want) != piece:
                raise ValueError(f"{self.path}: id {want} is {self.sp.id_to_piece(want)!r}, expected {piece!r}")
        self._surfaces = self._plain_surfaces()

    def _plain_surfaces(self) -> list[str] | None:
        """Each id's text when decoding is joining pieces: every id past the special ones is an
        ordinary piece (no byte, control, unknown or unused piece, whose decoding differs), its
        U+2581 a space; the special ids give "". None otherwise: :meth:`decode` asks sentencepiece.
        (A server detokenizes every changed partial: sentencepiece's call costs ~5 us, a join ~1 us.)"""
        sp = self.sp
        surfaces = ["", "", ""]  # BLANK, UNK, SOS_EOS (decode drops them)
        for i in range(SOS_EOS + 1, sp.get_piece_size()):
            if sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                return None
            surfaces.append(sp.id_to_piece(i).replace("\u2581", " "))
        return surfaces

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text.upper())

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (special ids dropped, whitespace normalised): sentencepiece's decoding,
        by joining the pieces where that is the same (``tests/test_tokenizer.py`` checks it)."""
        if self._surfaces is not None:
            surfaces = self._surfaces
            return " ".join("".join([surfaces[i] for i in ids if i > SOS_EOS]).split())
        return self._sp_decode(ids)

    def _sp_decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.sp.decode([i for i in ids if i > SOS_EOS]).split())

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def is_word_start(self, i: int) -> bool:
        """True when piece ``i`` begins a new word (sentencepiece's U+2581 prefix)."""
        return self.sp.id_to_piece(i).startswith("\u2581")


def train_tokenizer(texts: Iterable[str], out_prefix: str | Path, vocab_size: int = 256,
                    model_type: str = "unigram") -> Tokenizer:
    """Train a sentencepiece model on ``texts`` and write ``<out_prefix>.model``.

    Args:
        texts: transcripts, one utterance each.
        out_prefix: path without extension.
        vocab_size: total pieces including the three special ones.
        model_type: ``unigram`` or ``bpe``.
    """
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    lines = [t.strip().upper() for t in texts if t.strip()]
    if not lines:
        raise ValueError("no transcripts to train a tokenizer on")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
        pad_id=BLANK, pad_piece="<blk>", unk_id=UNK, unk_piece="<unk>",
        bos_id=SOS_EOS, bos_piece="<sos/eos>", eos_id=-1, minloglevel=2,
        split_digits=True, num_threads=1,
    )
    path = out_prefix.with_suffix(".model")
    path.write_bytes(model.getvalue())
    return Tokenizer(path)
