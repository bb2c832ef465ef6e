import pytest

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
