import io
import random
from pathlib import Path

import pytest
import sentencepiece as spm

from asr.tokenizer import BLANK, SOS_EOS, UNK, Tokenizer, train_tokenizer

TEXTS = ["HELLO WORLD", "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG", "IT'S A GOOD DAY",
         "SHE SELLS SEA SHELLS BY THE SEA SHORE", "ONE TWO THREE FOUR FIVE SIX SEVEN"] * 20


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_round_trip_and_specials(tmp_path, model_type):
    tok = train_tokenizer(TEXTS, tmp_path / "tk", vocab_size=60, model_type=model_type)
    assert [tok.id_to_piece(i) for i in (BLANK, UNK, SOS_EOS)] == ["<blk>", "<unk>", "<sos/eos>"]
    for text in set(TEXTS) | {"A FOX'S DOG", "hello world"}:
        ids = tok.encode(text)
        assert all(i > SOS_EOS for i in ids)
        assert tok.decode(ids) == text.upper()
    assert Tokenizer(tok.path).encode("HELLO") == tok.encode("HELLO")


def test_decode_drops_specials(tmp_path):
    tok = train_tokenizer(TEXTS, tmp_path / "tk", vocab_size=60)
    assert tok.decode([BLANK, *tok.encode("HELLO"), SOS_EOS]) == "HELLO"


def test_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer model not found"):
        Tokenizer(tmp_path / "none.model")


def _random_ids(tok: Tokenizer, n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(tok.vocab_size) for _ in range(rng.randrange(0, 40))] for _ in range(n)]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_decode_by_joining_pieces_equals_sentencepiece(tmp_path, model_type):
    """Tokenizer.decode joins the pieces' texts (a server detokenizes every changed partial): the
    same text as sentencepiece's decoding, for every id alone and for random id sequences (the
    special ids among them), on trained tokenizers and the shipped model's."""
    default = Path(__file__).resolve().parents[1] / "models" / "default" / "tokenizer.model"
    toks = [train_tokenizer(TEXTS, tmp_path / "tk", vocab_size=60, model_type=model_type)]
    toks += [Tokenizer(default)] if default.is_file() else []
    for tok in toks:
        assert tok._surfaces is not None  # the fast path is taken
        seqs = [[i] for i in range(tok.vocab_size)] + _random_ids(tok, 500, 0) + [[-1, 5, BLANK, 6]]  # -1: dropped too
        assert [tok.decode(ids) for ids in seqs] == [tok._sp_decode(ids) for ids in seqs]


def test_decode_with_byte_pieces_asks_sentencepiece(tmp_path):
    """Byte pieces decode to UTF-8 bytes, not their piece text: such a model keeps sentencepiece's decoding."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS), model_writer=model, vocab_size=300, byte_fallback=True,
        pad_id=BLANK, pad_piece="<blk>", unk_id=UNK, unk_piece="<unk>", bos_id=SOS_EOS, bos_piece="<sos/eos>",
        eos_id=-1, minloglevel=2, num_threads=1)
    (tmp_path / "bytes.model").write_bytes(model.getvalue())
    tok = Tokenizer(tmp_path / "bytes.model")
    assert tok._surfaces is None
    ids = tok.encode("HELLO Ü")
    assert tok.decode(ids) == tok._sp_decode(ids) == "HELLO Ü"
