"""The streaming client against a real server on loopback (fake model): flow control on long files
sent at full speed, and streams the server cuts short (drain, limits) reported, never silent."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, os.path.dirname(__file__))
from test_server_fake import FakeFactory, direct_finals, make_audio, run, running  # noqa: E402

from server.cli import stream_main  # noqa: E402
from server.client import ClientError, astream_file, astream_frames, shortfall  # noqa: E402


class _SlowFactory(FakeFactory):
    """A model slower than the client can send (1 ms a pass), so that flow control has to act."""

    def process_batch(self, items):
        time.sleep(0.001)
        return [rec.accept_waveform(x) for rec, x in items]


def _watch_pending(server) -> list[int]:
    """Record every stream's buffered samples after each feed, and whether it ever ran out of room."""
    peaks: list[int] = []
    feed = server.scheduler.feed

    def watched(stream, samples):
        feed(stream, samples)
        peaks.append(stream.pending_samples if stream.has_room.is_set() else -1)

    server.scheduler.feed = watched
    return peaks


def _wav(tmp_path, pcm: np.ndarray, name: str = "long.wav"):
    path = tmp_path / name
    sf.write(path, pcm, 16000, subtype="PCM_16")
    return path


def test_long_file_at_full_speed_is_flow_controlled(tmp_path, capsys) -> None:
    """`asr stream` of 5 minutes of audio without --realtime: the client keeps at most 5 s ahead of
    the server, so the server never runs out of room (it never stops reading: keepalive pings are
    read at once) and the text equals the recognizer's on the whole file."""
    pcm = np.concatenate([make_audio(30.0, s) for s in range(10)])
    wav = _wav(tmp_path, pcm)

    async def main():
        async with running(_SlowFactory(), max_pending_s=8.0, max_session_s=None) as server:
            peaks = _watch_pending(server)
            code = await asyncio.to_thread(stream_main, [str(wav), "--url", server.url, "--chunk-ms", "100"])
            return code, peaks

    code, peaks = run(main())
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert out.split("\n")[:-1] == [t for t in direct_finals(pcm) if t]
    assert len(peaks) == 3000 and min(peaks) >= 0  # never out of room
    assert max(peaks) <= 5 * 16000 + 1600  # the client's window (5 s) plus one frame


def test_window_must_exceed_the_ack_interval() -> None:
    with pytest.raises(ValueError, match="max_ahead_s"):
        run(astream_frames("ws://127.0.0.1:9", [make_audio(1.0)], max_ahead_s=0.5))


def test_drain_cut_is_reported_and_the_cli_fails(tmp_path, capsys) -> None:
    """SIGTERM's drain ends a stream before the client's end: `done` says so, the transcript holds
    the text of what was processed, and `asr stream` exits 1 with a warning saying how much."""
    pcm = make_audio(60.0, 41)
    wav = _wav(tmp_path, pcm)

    async def main():
        async with running(_SlowFactory()) as server:
            lib = asyncio.create_task(astream_file(server.url, wav))
            cli = asyncio.create_task(asyncio.to_thread(stream_main, [str(wav), "--url", server.url]))
            while server.metrics.audio_seconds < 2 * 8.0:  # both streams well under way (condition poll)
                await asyncio.sleep(0.01)
            await server.shutdown()
            return await lib, await cli

    transcript, code = run(main())
    err = capsys.readouterr().err
    processed = round(transcript.processed_s * 16000)
    assert transcript.cut == "shutting_down" and 0 < processed < pcm.size
    assert [f["text"] for f in transcript.finals] == direct_finals(pcm[:processed])
    assert shortfall(transcript) == (
        f"the server ended the stream early (shutting_down): {processed / 16000:.1f} s of 60.0 s transcribed, "
        f"{60 - processed / 16000:.1f} s not"
    )
    assert code == 1
    m = re.search(r"warning: the server ended the stream early \(shutting_down\): ([\d.]+) s of 60.0 s transcribed", err)
    assert m and 0 < float(m.group(1)) < 60


def test_session_limit_cut_is_reported(tmp_path, capsys) -> None:
    pcm = make_audio(6.0, 42)
    wav = _wav(tmp_path, pcm)

    async def main():
        async with running(max_session_s=2.0) as server:
            with pytest.raises(ClientError) as lib:
                await astream_file(server.url, wav, chunk_ms=500)
            code = await asyncio.to_thread(stream_main, [str(wav), "--url", server.url, "--chunk-ms", "500"])
            return lib.value, code

    error, code = run(main())
    err = capsys.readouterr().err
    assert "session_too_long" in str(error) and error.transcript.cut == "session_too_long"
    assert [f["text"] for f in error.transcript.finals] == direct_finals(pcm[:32000])
    assert error.transcript.processed_s == 2.0
    assert code == 1 and "warning: the server ended the stream early (session_too_long): 2.0 s of 6.0 s transcribed, 4.0 s not" in err


def test_complete_stream_has_no_shortfall() -> None:
    pcm = make_audio(3.0, 43)

    async def main():
        async with running() as server:
            return await astream_frames(server.url, [pcm[i:i + 1000] for i in range(0, pcm.size, 1000)])

    transcript = run(main())
    assert transcript.cut is None and transcript.processed_s == 3.0 and shortfall(transcript) is None
