"""The server with the real recognizer: a file streamed in random-sized frames through each
protocol gives the same final text as ``asr transcribe`` of that file with the same decoder."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

sys.path.insert(0, os.path.dirname(__file__))
from conftest import SILENCE_LEVEL  # noqa: E402
from test_server_fake import random_frames, run  # noqa: E402
from test_server_protocols import _vosk_session, _wenet_session  # noqa: E402

from asr.audio import load_audio  # noqa: E402
from blockasr.cli import main as asr_main  # noqa: E402
from asr.data import read_manifest  # noqa: E402
from server import ServerConfig, serve  # noqa: E402
from server.client import astream_frames  # noqa: E402
from streaming import make_recognizer_factory  # noqa: E402


@pytest.fixture(scope="module")
def speech(tts_corpus, tmp_path_factory):
    rows = read_manifest(tts_corpus / "all.jsonl")
    quiet = SILENCE_LEVEL * torch.randn(20000, generator=torch.Generator().manual_seed(3))
    wave = torch.cat([load_audio(rows[2]["audio"]), quiet, load_audio(rows[4]["audio"]), quiet])
    path = tmp_path_factory.mktemp("server_audio") / "speech.wav"
    sf.write(path, wave.numpy(), 16000, subtype="PCM_16")
    pcm, _ = sf.read(path, dtype="int16")
    return path, pcm


@pytest.mark.parametrize("decoder", ["sar", "ctc"])
def test_every_protocol_equals_transcribe(tiny_model_dir, speech, capsys, decoder):
    path, pcm = speech
    assert asr_main(["transcribe", str(path), "--model", str(tiny_model_dir), "--decoder", decoder,
                     "--block-ms", "320", "--format", "json"]) == 0
    expected = json.loads(capsys.readouterr().out)["text"]
    assert expected  # the tiny model recognises this speech
    factory = make_recognizer_factory(tiny_model_dir, decoder=decoder, block_ms=320)
    config = ServerConfig(port=0, model_name="tiny", inference=factory.settings)
    frames = random_frames(pcm, seed=7)

    async def main():
        async with serve(config, factory) as server:
            native = await astream_frames(server.url + "/asr", frames)
            vosk, (last,) = await _vosk_session(server.url + "/vosk", frames, '{"config": {"sample_rate": 16000}}')
            wenet = await _wenet_session(server.url + "/wenet", frames, continuous=True)
            return native, [r["text"] for r in vosk if r.get("text")] + [last["text"]], wenet

    native, vosk, wenet = run(main())
    finals = [json.loads(m["nbest"])[0]["sentence"] for m in wenet if m.get("type") == "final_result"]
    for got in (native.text, " ".join(t for t in vosk if t), " ".join(t for t in finals if t)):
        assert got == expected


@pytest.mark.parametrize("rate", [8000, 44100])
def test_any_sample_rate_equals_transcribe(tiny_model_dir, speech, capsys, tmp_path, rate):
    """A client at another rate (8 kHz telephony, 44.1 kHz) is resampled as `asr transcribe`
    resamples the same file: every protocol gives its text."""
    path, _ = speech
    wave = torchaudio.functional.resample(load_audio(path), 16000, rate)
    other = tmp_path / f"speech_{rate}.wav"
    sf.write(other, wave.numpy(), rate, subtype="PCM_16")
    assert asr_main(["transcribe", str(other), "--model", str(tiny_model_dir), "--decoder", "ctc",
                     "--block-ms", "320", "--format", "json"]) == 0
    expected = json.loads(capsys.readouterr().out)["text"]
    assert expected
    factory = make_recognizer_factory(tiny_model_dir, decoder="ctc", block_ms=320)
    config = ServerConfig(port=0, model_name="tiny", inference=factory.settings)
    pcm, _ = sf.read(other, dtype="int16")
    frames = random_frames(pcm, seed=rate)

    async def main():
        async with serve(config, factory) as server:
            native = await astream_frames(server.url + "/asr", frames, start={"sample_rate": rate})
            config_msg = json.dumps({"config": {"sample_rate": float(rate)}})  # Vosk clients send a float
            vosk, (last,) = await _vosk_session(server.url + "/vosk", frames, config_msg)
            wenet = await _wenet_session(server.url + "/wenet", frames, continuous=True, sample_rate=rate)
            return native, [r["text"] for r in vosk if r.get("text")] + [last["text"]], wenet

    native, vosk, wenet = run(main())
    finals = [json.loads(m["nbest"])[0]["sentence"] for m in wenet if m.get("type") == "final_result"]
    assert native.audio_s == pytest.approx(pcm.size / rate, abs=0.01)
    for got in (native.text, " ".join(t for t in vosk if t), " ".join(t for t in finals if t)):
        assert got == expected


@pytest.mark.parametrize("settings", [
    {"decoder": "bsbs", "beam": 3, "block_ms": 160, "left_blocks": 2},
    {"decoder": "sar", "block_ms": "full"},
])
def test_session_settings_equal_transcribe(tiny_model_dir, speech, capsys, settings):
    """A native session that sets left_blocks, beam or block_ms gets the text `asr transcribe` gives
    with the same flags; the server's defaults are something else."""
    path, pcm = speech
    flags = [x for k, v in settings.items() for x in ("--" + k.replace("_", "-"), str(v))]
    assert asr_main(["transcribe", str(path), "--model", str(tiny_model_dir), "--format", "json", *flags]) == 0
    expected = json.loads(capsys.readouterr().out)["text"]
    assert expected
    factory = make_recognizer_factory(tiny_model_dir, decoder="ctc", block_ms=640)
    config = ServerConfig(port=0, model_name="tiny", inference=factory.settings)

    async def main():
        async with serve(config, factory) as server:
            return await astream_frames(server.url + "/asr", random_frames(pcm, seed=3), start=settings)

    assert run(main()).text == expected
