"""The model warm-up before the first session, and the slow-pass log of the model loop."""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pytest

from asr.audio import load_audio
from asr.inference import InferenceConfig
from server.config import ServerConfig
from streaming import RecognizerFactory

sys.path.insert(0, os.path.dirname(__file__))
from test_server_fake import BatchingFakeFactory, make_audio, run  # noqa: E402

import server.scheduler as scheduler  # noqa: E402


def _transcript(factory: RecognizerFactory, wave: np.ndarray) -> list[tuple[list[int], bool]]:
    rec = factory()
    results = []
    for s in range(0, len(wave), 3000):
        results += rec.accept_waveform(wave[s:s + 3000])
    results += rec.finalize()
    return [(r.tokens, r.is_final) for r in results]


@pytest.mark.parametrize("decoder", ["sar", "ctc"])
def test_warm_up_leaves_later_sessions_as_they_were(tiny_model_dir, rows, decoder):
    """Throwaway streams through the batched path (into the cache slots, and finalized), then a
    session gives the same partials and finals as on a factory that never warmed up."""
    settings = InferenceConfig(model=str(tiny_model_dir), decoder=decoder, block_ms=320, left_blocks=2)
    wave = load_audio(rows[1]["audio"]).numpy()
    cold = _transcript(RecognizerFactory(settings), wave)
    warm_factory = RecognizerFactory(settings)
    assert warm_factory.warm_up(0) == 0.0
    assert warm_factory.warm_up(3) > 0
    assert _transcript(warm_factory, wave) == cold
    assert any(final and tokens for tokens, final in cold)


def test_warm_up_streams_is_validated():
    assert ServerConfig().warmup_streams == 8
    with pytest.raises(ValueError, match="warmup_streams must be >= 0"):
        ServerConfig(warmup_streams=-1)


def test_scheduler_warm_up_skips_factories_without_one(caplog):
    caplog.set_level(logging.INFO, logger="server")
    scheduler.warm_up(BatchingFakeFactory(), 8)  # the synthetic factories have no warm-up: nothing
    assert not caplog.records


def test_a_slow_model_pass_is_logged_with_the_collector_share(monkeypatch, caplog):
    monkeypatch.setattr(scheduler, "SLOW_PASS_S", 0.0)
    caplog.set_level(logging.WARNING, logger="server")
    audio = make_audio(1.0, 5)

    async def main():
        sched = scheduler.Scheduler(BatchingFakeFactory(), max_batch=4)
        sched.start()
        stream = await sched.open()
        sched.feed(stream, audio.astype(np.float32) / 32768.0)
        await sched.finalize(stream)
        await sched.stop()

    run(main())
    slow = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slow model pass")]
    assert slow and all("garbage collector" in m and "streams" in m for m in slow)
