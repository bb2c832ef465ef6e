"""A long stream keeps bounded state: the bytes a Recognizer holds (streaming.state_size) stop growing
once the encoder's left context is full, and do grow with unlimited left context (the measure works).
An untrained tiny model: the mechanism, not the words (segments end at the endpointer's max length)."""

import pytest
import torch

from asr.encoder import EncoderConfig
from asr.features import FbankConfig
from asr.inference import InferenceConfig
from asr.models import DecoderConfig, LMConfig, ModelConfig, SARConfig, build_model
from asr.models.io import export_model_dir, load_model_dir
from asr.tokenizer import train_tokenizer
from conftest import TTS_SENTENCES, _speechlike
from streaming import Recognizer
from streaming.state_size import state_bytes


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    out = tmp_path_factory.mktemp("untrained")
    tok = train_tokenizer(TTS_SENTENCES * 5, out / "tok", vocab_size=40)
    cfg = ModelConfig(vocab_size=tok.vocab_size, kind="sar", encoder=EncoderConfig.tiny(),
                      decoder=DecoderConfig(d_model=64, n_layers=1), sar=SARConfig(lm=LMConfig(d_model=64, n_layers=1)))
    torch.manual_seed(0)
    model = build_model(cfg)
    return load_model_dir(export_model_dir(model.state_dict(), cfg, FbankConfig(), tok.path, out / "model"))


def _sizes(loaded, cfg, seconds: int, every: int = 5) -> list[int]:
    """state_bytes after every ``every`` seconds of speech-like audio."""
    rec = Recognizer(loaded, cfg)
    wave = _speechlike(seconds, 16000, seed=3)
    out = []
    for s in range(0, wave.size, 16000 * every):
        rec.accept_waveform(wave[s:s + 16000 * every])
        out.append(state_bytes(rec))
    return out


@pytest.mark.parametrize("decoder", ["ctc", "sar"])
def test_state_bounded_after_left_context(loaded, decoder):
    # 160 ms blocks, 4 left blocks: the context is full after < 1 s; segments end after <= 20 s
    sizes = _sizes(loaded, InferenceConfig(decoder=decoder, block_ms=160, left_blocks=4), 120)
    early, late = sizes[4:8], sizes[8:]  # 20-40 s (one max-length segment done) vs 40-120 s
    # the decoder's tokens of the open segment vary with its length; they are bounded by one segment
    assert max(late) <= 1.1 * max(early)


def test_state_grows_with_unlimited_left_context(loaded):
    sizes = _sizes(loaded, InferenceConfig(decoder="ctc", block_ms=160, left_blocks=None), 60)
    assert sizes[-1] > 2 * sizes[2]
