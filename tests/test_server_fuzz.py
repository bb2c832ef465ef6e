"""A bounded hostile-input run (benchmarks/fuzz_server.py) against an in-process server, and SIGTERM
with 50 streaming sessions."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from websockets.asyncio.client import connect

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from test_server_fake import direct_finals, make_audio, run, running  # noqa: E402
from test_server_limits import START, _metric, _until, spawn_fake_server  # noqa: E402

from fuzz_server import run_fuzz  # noqa: E402


@pytest.mark.slow
def test_hostile_traffic_leaves_the_good_session_alone() -> None:
    async def main():
        async with running(max_frame_bytes=4096) as server:
            report = await run_fuzz(server.url, messages=1500, idle=200, max_frame_bytes=4096, good_seconds=10.0)
            await _until(lambda: server.ctx.admission.waiting == 0, timeout=60)
            return report, dict(server.metrics.errors), server.metrics.sessions

    report, errors, sessions = asyncio.run(asyncio.wait_for(main(), timeout=600))
    assert report.messages >= 1500 and report.idle_held == 200
    assert report.good_unaffected and report.good_text_alone
    assert errors.get("internal", 0) == 0  # no handler crashed
    for code in ("bad_json", "bad_message", "bad_sample_rate", "not_started", "already_started", "frame_too_large",
                 "bad_audio", "too_many_waiting"):
        assert errors.get(code, 0) > 0, code


@pytest.mark.slow
def test_sigterm_finalises_fifty_streaming_sessions() -> None:
    """SIGTERM while 50 sessions stream: each gets the final of all the audio the server read, then
    `done` marked as cut by the drain; the server exits 0 within its drain timeout."""
    pcm = make_audio(1.5, 15)[:24000]
    proc = spawn_fake_server()
    try:
        port = int(proc.stdout.readline())

        async def main():
            socks = [await connect(f"ws://127.0.0.1:{port}/asr") for _ in range(50)]
            for ws in socks:
                await ws.send(START)
                assert json.loads(await ws.recv())["type"] == "ready"
                await ws.send(pcm.tobytes())
            await _until(lambda: _metric(port, "asr_audio_seconds_total") * 16000 >= 50 * pcm.size - 1.5, blocking=True)
            proc.terminate()  # SIGTERM while every session is still open (none sent "end")
            async def replies(ws):
                return [json.loads(m) async for m in ws]

            return await asyncio.gather(*(replies(ws) for ws in socks))

        for replies in run(main()):
            assert [m["text"] for m in replies if m["type"] == "final"] == direct_finals(pcm)
            assert replies[-1] == {"type": "done", "audio_s": 1.5, "reason": "shutting_down"}
        assert proc.wait(timeout=60) == 0 and proc.stdout.read().strip() == "exited"
    finally:
        proc.kill()
