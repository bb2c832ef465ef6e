"""The end-of-stream flush (:meth:`Recognizer.finalize`, :func:`streaming.recognizer.flush_pad`)
ends a stream as appended silence does (issue 19): checked on the encoder frames the decoder gets,
which do not depend on what a model recognises, and on two runs of the same model."""

import dataclasses
import math

import pytest
import torch

from asr.audio import load_audio
from asr.encoder import FRAME_MS, block_size_from_ms
from asr.inference import InferenceConfig
from streaming import EndpointConfig, Recognizer, process_batch
from streaming.recognizer import FLUSH_PAD_MS, flush_pad

NO_ENDPOINT = EndpointConfig(trailing_blank_ms=None, max_segment_ms=None, max_silence_ms=None)
SILENCE_S = 1.0  # the reference: this much digital silence appended to the audio


class _Recording:
    """The model, recording the encoder frames of every block that reaches the decoders (the CTC
    head reads each block first: :func:`streaming.recognizer.decode_round`)."""

    def __init__(self, model):
        self._model, self.blocks = model, []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def ctc_logp(self, enc):
        self.blocks.append(enc.clone())
        return self._model.ctc_logp(enc)


def _stream(loaded, cfg, wave, chunk, batched=False):
    """Stream ``wave`` in chunks of ``chunk`` samples (``batched``: through :func:`process_batch`),
    then finalize; returns the results and the blocks (t, D) that reached the decoder."""
    model = _Recording(loaded.model)
    rec = Recognizer(dataclasses.replace(loaded, model=model), cfg, endpoint=NO_ENDPOINT)
    results = []
    for s in range(0, wave.numel(), chunk):
        part = wave[s:s + chunk].numpy()
        results += process_batch([(rec, part)])[0] if batched else rec.accept_waveform(part)
    return results + rec.finalize(), model.blocks


def _abrupt(wave):
    """The clip cut right after its last loud sample: no trailing silence at all."""
    loud = (wave.abs() > 0.02).nonzero()
    return wave[: int(loud[-1]) + 1]


@pytest.mark.parametrize("block_ms", [160, 320, 640, None])
def test_flush_gives_the_frames_of_appended_silence(loaded, rows, block_ms):
    """Whatever the phase at which the audio ends inside a block: the flush ends the stream on a
    block boundary at least FLUSH_PAD_MS after the last encoder frame the audio reaches, every
    block the decoder gets is whole, and those frames equal the first frames the decoder gets when
    1 s of digital silence is appended (the encoder never looks past a block's end). Full context:
    FLUSH_PAD_MS past the audio. The model's weights do not matter here, only the frames."""
    cfg = InferenceConfig(decoder="ctc", block_ms=block_ms)
    bs = block_size_from_ms(block_ms)
    speech = torch.cat([load_audio(r["audio"]) for r in rows[:2]])
    hop = 16000 * FRAME_MS // 1000  # samples per encoder frame
    for k in range(bs or 3):  # the audio's last frame at position k of its block
        n = hop * (2 * (bs or 16) + k) + 1 + 123 * (k % 5)
        wave = speech[:n]
        reached = math.ceil(n / hop)  # encoder frames that read some of the audio
        assert not bs or (reached - 1) % bs == k
        end = reached + FLUSH_PAD_MS // FRAME_MS
        want_frames = math.ceil(end / bs) * bs if bs else end
        assert flush_pad(n, bs, loaded.features).abs().sum() == 0  # digital silence
        _, ref_blocks = _stream(loaded, cfg, torch.cat([wave, torch.zeros(int(16000 * SILENCE_S))]), 1600)
        ref = torch.cat(ref_blocks)
        chunks = [(1600, False), (n, False), (5120, True)] + ([(7, False)] if k == 0 else [])
        for chunk, batched in chunks:
            results, blocks = _stream(loaded, cfg, wave, chunk, batched)
            got = torch.cat(blocks)
            assert got.shape[0] == want_frames
            if bs is None:
                continue  # full context: every frame sees the whole stream, there is no block to complete
            assert [b.shape[0] for b in blocks] == [bs] * (want_frames // bs)  # the last block is whole too
            torch.testing.assert_close(got, ref[:want_frames], rtol=1e-5, atol=1e-5)
            assert results[-1].is_final and results[-1].end <= round(n / 16000, 3)


@pytest.mark.parametrize("decoder", ["ctc", "sar", "bsbs", "offline"])
def test_flush_text_equals_appended_silence(loaded, rows, decoder):
    """A clip that stops right after the speech gets the tokens it gets with 1 s of digital silence
    appended: two runs of the same model, compared with each other (what the model hears is not
    checked). The tiny model learned blank on digital silence (conftest.tiny_model_dir)."""
    cfg = InferenceConfig(decoder=decoder, block_ms=320)
    for row in rows:
        wave = _abrupt(load_audio(row["audio"]))
        finals = []
        for clip in (wave, torch.cat([wave, torch.zeros(int(16000 * SILENCE_S))])):
            results, _ = _stream(loaded, cfg, clip, 4000)
            finals.append([(r.text, r.tokens) for r in results if r.is_final and r.text])
        assert finals[0] == finals[1] and finals[0]
