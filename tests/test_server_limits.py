"""Hostile and malformed input, limits, auth, many connections, vanishing clients, draining."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

sys.path.insert(0, os.path.dirname(__file__))
from test_server_fake import FakeClock, FakeFactory, direct_finals, make_audio, random_frames, run, running  # noqa: E402

from server.client import ClientError, astream_frames, shortfall  # noqa: E402

START = json.dumps({"type": "start", "sample_rate": 16000, "format": "s16le"})


async def _exchange(url: str, messages: list[str | bytes], **connect_kw) -> tuple[list[dict], int | None]:
    """Send `messages`, read until the server closes; returns (replies, close code)."""
    replies = []
    async with connect(url, **connect_kw) as ws:
        try:
            for m in messages:
                await ws.send(m)
        except ConnectionClosed:
            pass
        try:
            async for raw in ws:
                replies.append(json.loads(raw))
        except ConnectionClosed:
            pass
        return replies, ws.close_code


async def _until(condition, timeout: float = 120.0, blocking: bool = False) -> None:
    """Poll `condition` (no timing assertion: the timeout only guards against a hang)."""
    for _ in range(int(timeout / 0.02)):
        if await asyncio.to_thread(condition) if blocking else condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def _metric(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise KeyError(name)


NATIVE_CASES = [
    ("bad_json", ["{not json"], 1003),
    ("bad_message", ["[1, 2]"], 1003),
    ("not_started", [b"\x00\x01" * 100], 1008),
    ("not_started", [json.dumps({"type": "end"})], 1008),
    ("bad_sample_rate", [json.dumps({"type": "start", "sample_rate": 1000})], 1003),  # below 4 kHz
    ("bad_sample_rate", [json.dumps({"type": "start", "sample_rate": 8000.5})], 1003),
    ("bad_sample_rate", [json.dumps({"type": "start", "sample_rate": "8k"})], 1003),
    ("bad_format", [json.dumps({"type": "start", "format": "f32le"})], 1003),
    ("bad_message", [json.dumps({"type": "start", "colour": "red"})], 1003),
    ("bad_option", [json.dumps({"type": "start", "decoder": "nope"})], 1003),
    ("bad_option", [json.dumps({"type": "start", "block_ms": -5})], 1003),
    ("bad_option", [json.dumps({"type": "start", "block_ms": 100})], 1003),  # not a multiple of 40
    ("bad_option", [json.dumps({"type": "start", "beam": 0})], 1003),
    ("bad_option", [json.dumps({"type": "start", "left_blocks": "many"})], 1003),
    ("bad_option", [json.dumps({"type": "start", "decoder": "bsbs"})], 1003),  # valid, but the fake refuses it
    ("bad_option", [json.dumps({"type": "start", "device": "cuda"})], 1003),  # the server's, not the session's
    ("bad_option", [json.dumps({"type": "start", "nbest": "two"})], 1003),
    ("frame_too_large", [START, b"\x00" * 4098], 1009),
    ("bad_audio", [START, b"\x00" * 3], 1003),
    ("unknown_type", [START, json.dumps({"type": "pause"})], 1003),
    ("bad_json", [START, "audio as text"], 1003),
    ("already_started", [START, START], 1008),
]


@pytest.mark.parametrize("code, messages, close_code", NATIVE_CASES)
def test_native_malformed(code: str, messages: list, close_code: int) -> None:
    async def main():
        async with running(max_frame_bytes=4096) as server:
            replies, closed = await _exchange(server.url + "/asr", messages)
            metrics = server.metrics.errors[code]
        return replies, closed, metrics

    replies, closed, errors = run(main())
    assert replies[-1]["type"] == "error" and replies[-1]["code"] == code and replies[-1]["message"]
    assert closed == close_code and errors == 1


def test_hostile_sessions_do_not_affect_a_healthy_one() -> None:
    pcm = make_audio(4.0, 11)

    async def main():
        async with running(max_frame_bytes=4096) as server:
            healthy = asyncio.create_task(astream_frames(server.url, random_frames(pcm, 1, max_samples=2000), realtime=False))
            hostile = [_exchange(server.url + "/asr", m) for _, m, _ in NATIVE_CASES]
            await asyncio.gather(*hostile)
            return await healthy

    assert [f["text"] for f in run(main()).finals] == direct_finals(pcm)


def test_vosk_and_wenet_errors() -> None:
    async def main():
        async with running() as server:
            vosk_rate = await _exchange(server.url + "/vosk", ['{"config": {"sample_rate": 400000}}'])
            vosk_text = await _exchange(server.url + "/vosk", ["hello"])
            vosk_other = await _exchange(server.url + "/vosk", ['{"pause": 1}'])
            wenet_binary = await _exchange(server.url + "/wenet", [b"\x00\x00"])
            wenet_nbest = await _exchange(server.url + "/wenet", ['{"signal": "start", "nbest": "x"}'])
            wenet_header = await _exchange(server.url + "/wenet", ['{"hello": 1}'])
            wenet_signal = await _exchange(server.url + "/wenet", ['{"signal": "start"}', '{"signal": "pause"}'])
            return vosk_rate, vosk_text, vosk_other, wenet_binary, wenet_nbest, wenet_header, wenet_signal

    vosk_rate, vosk_text, vosk_other, w_bin, w_nbest, w_header, w_signal = run(main())
    assert vosk_rate[0][-1]["code"] == "bad_sample_rate" and vosk_rate[1] == 1003
    assert vosk_text[0][-1]["code"] == "bad_json"
    assert vosk_other[0][-1]["code"] == "unknown_type"
    assert w_bin[0] == [{"status": "failed", "message": "Start signal is expected before binary data", "code": "not_started"}]
    assert w_nbest[0][-1]["message"] == "integer is expected for nbest option"
    assert w_header[0][-1]["message"] == "Wrong message header"
    assert w_signal[0][0]["type"] == "server_ready" and w_signal[0][-1]["message"] == "Unexpected signal type"


async def _started(url: str):
    ws = await connect(url + "/asr")
    await ws.send(START)
    assert json.loads(await ws.recv())["type"] == "ready"
    return ws


def test_max_sessions_counts_started_streams_only() -> None:
    async def main():
        async with running(max_sessions=2) as server:
            waiting = [await connect(server.url + "/asr") for _ in range(5)]  # no start: no slot
            a = await _started(server.url)
            b = await _started(server.url)
            with pytest.raises(InvalidStatus) as refused:  # every slot taken: refused at the handshake
                await connect(server.url + "/asr")
            await waiting[0].send(START)  # connected before the slots were taken: refused at start
            busy = json.loads(await waiting[0].recv())
            await a.close()
            await b.close()
            await _until(lambda: server.metrics.sessions == 0)  # let the handlers return
            c = await _started(server.url)  # room again
            await c.close()
            for ws in waiting:
                await ws.close()
            return refused.value.response.status_code, busy

    status, busy = run(main())
    assert status == 503 and busy["code"] == "server_busy"


def test_token_and_origin() -> None:
    pcm = make_audio(1.0, 2)

    async def main():
        async with running(token="s3cret", allowed_origins=("http://good.example",)) as server:
            statuses = []
            for kw in ({}, {"additional_headers": {"Authorization": "Bearer wrong"}}):
                with pytest.raises(InvalidStatus) as e:
                    await connect(server.url + "/asr", **kw)
                statuses.append(e.value.response.status_code)
            with pytest.raises(InvalidStatus) as e:
                await connect(server.url + "/asr?token=s3cret", origin="http://evil.example")
            statuses.append(e.value.response.status_code)
            ok = await connect(server.url + "/asr?token=s3cret", origin="http://good.example")
            await ok.close()
            transcript = await astream_frames(server.url, [pcm], token="s3cret")
            return statuses, transcript

    statuses, transcript = run(main())
    assert statuses == [401, 401, 403]
    assert [f["text"] for f in transcript.finals] == direct_finals(pcm)


def test_idle_timeout_and_session_length_keep_the_text() -> None:
    """The idle timeout fires when the (fake) clock passes it, not after real seconds: the session
    waits forever until the test advances the clock."""
    pcm = make_audio(2.0, 8)
    clock = FakeClock()

    async def main():
        async with running(clock=clock, idle_timeout_s=30.0) as server:
            idle = asyncio.create_task(_exchange(server.url + "/asr", [START, pcm[:8000].tobytes()]))
            await _until(lambda: server.metrics.audio_seconds * 16000 == 8000 and clock.sleeping(30.0) == 1)
            clock.advance(30.0)
            idle = await idle
        async with running(max_session_s=1.0) as server:
            long = await _exchange(server.url + "/asr", [START, pcm[:12000].tobytes(), pcm[12000:24000].tobytes()])
        return idle, long

    (idle, idle_code), (long, long_code) = run(main())
    assert idle[-1]["code"] == "idle_timeout" and idle_code == 1008 and idle[-1]["audio_s"] == 0.5
    assert [m["text"] for m in idle if m["type"] == "final"] == direct_finals(pcm[:8000])
    assert long[-1]["code"] == "session_too_long" and long[-1]["audio_s"] == 0.75
    assert [m["text"] for m in long if m["type"] == "final"] == direct_finals(pcm[:12000])


@pytest.mark.parametrize("path", ["/asr", "/vosk", "/wenet", "/"])
def test_start_deadline_closes_connections_that_never_start(path: str) -> None:
    clock = FakeClock()

    async def main():
        async with running(clock=clock, start_timeout_s=5.0) as server:
            async with connect(server.url + path) as ws:
                await _until(lambda: server.ctx.admission.waiting == 1 and clock.sleeping(5.0) == 1)
                clock.advance(5.0)
                replies = [json.loads(m) async for m in _messages(ws)]
            await _until(lambda: server.ctx.admission.waiting == 0)
            return replies, ws.close_code, server.metrics.errors["start_timeout"]

    replies, close_code, errors = run(main())
    assert close_code == 1008 and errors == 1
    if path != "/":  # auto-detection has no protocol to answer in yet: the close code says it
        assert replies[-1]["code"] == "start_timeout"


async def _messages(ws):
    try:
        async for raw in ws:
            yield raw
    except ConnectionClosed:
        return


def test_idle_connections_never_take_session_slots() -> None:
    """100 connections that never start hold no session slot: with one slot, a well-formed session
    still runs; then the start deadline closes them all."""
    pcm = make_audio(3.0, 21)
    clock = FakeClock()

    async def main():
        async with running(clock=clock, max_sessions=1, max_waiting_per_address=200) as server:
            idle = [await connect(server.url + p) for p in ("/asr", "/vosk", "/wenet", "/") * 25]
            await _until(lambda: server.ctx.admission.waiting == 100)
            transcript = await astream_frames(server.url, random_frames(pcm, 5))
            held = server.ctx.admission.waiting
            clock.advance(5.0)  # the start deadline
            await _until(lambda: server.ctx.admission.waiting == 0 and server.metrics.sessions == 0)
            codes = [ws.close_code for ws in idle]
            for ws in idle:
                await ws.close()
            return transcript, held, codes, server.metrics.errors["start_timeout"]

    transcript, held, codes, timeouts = run(main())
    assert [f["text"] for f in transcript.finals] == direct_finals(pcm)
    assert held == 100 and timeouts == 100 and set(codes) == {1008}


def test_waiting_connections_per_address_evict_the_oldest() -> None:
    pcm = make_audio(2.0, 22)

    async def main():
        async with running(max_sessions=1, max_waiting_per_address=8) as server:
            idle = [await connect(server.url + "/asr") for _ in range(20)]
            await _until(lambda: server.ctx.admission.waiting + server.ctx.admission.evicted == 20)
            await _until(lambda: sum(ws.close_code is not None for ws in idle) == 12)
            transcript = await astream_frames(server.url, random_frames(pcm, 6))  # evicts one more
            await _until(lambda: sum(ws.close_code is not None for ws in idle) == 13)
            codes = [ws.close_code for ws in idle]
            for ws in idle:
                await ws.close()
            return transcript, codes, server.ctx.admission.evicted

    transcript, codes, evicted = run(main())
    assert [f["text"] for f in transcript.finals] == direct_finals(pcm)
    assert evicted == 13 and codes[:13] == [1013] * 13 and codes[13:] == [None] * 7  # oldest first


def test_a_vanishing_client_frees_its_slot() -> None:
    audios = [make_audio(3.0, 30 + i) for i in range(3)]

    async def vanish(url: str) -> None:
        ws = await connect(url + "/asr")
        await ws.send(START)
        await ws.recv()
        await ws.send(audios[0][:20000].tobytes())
        ws.transport.abort()  # no close handshake: the client just disappears

    async def main():
        async with running(max_sessions=3) as server:
            await vanish(server.url)
            await _until(lambda: server.metrics.sessions == 0)
            transcripts = await asyncio.gather(*(astream_frames(server.url, random_frames(a, 9)) for a in audios))
            await _until(lambda: server.metrics.sessions == 0)
            return transcripts

    for audio, transcript in zip(audios, run(main())):
        assert [f["text"] for f in transcript.finals] == direct_finals(audio)


def test_recognizer_failure_is_isolated() -> None:
    good = make_audio(2.0, 12)
    poison = np.full(3200, 32000, dtype=np.int16)

    async def main():
        async with running(FakeFactory(fail_on_peak=0.9)) as server:
            bad = astream_frames(server.url, [good[:3200], poison, good[:16000]])
            results = await asyncio.gather(bad, astream_frames(server.url, random_frames(good, 4)), return_exceptions=True)
            return results, server.metrics.errors["internal"]

    (bad, ok), internal = run(main())
    assert isinstance(bad, ClientError) and "internal" in str(bad)
    assert [f["text"] for f in ok.finals] == direct_finals(good) and internal == 1


def test_shutdown_drains_open_sessions() -> None:
    pcm = make_audio(3.0, 13)
    sent = pcm[:30000]

    async def main():
        async with running() as server:
            ws = await connect(server.url + "/asr")
            await ws.send(START)
            await ws.recv()
            for frame in random_frames(sent, 3):
                await ws.send(frame.tobytes())
            await ws.send(b"")  # an empty frame is fine
            await _until(lambda: server.metrics.audio_seconds * 16000 >= sent.size - 0.5)  # all read
            shutdown = asyncio.create_task(server.shutdown())
            replies = [json.loads(m) async for m in ws]
            await shutdown
            return replies, ws.close_code

    replies, close_code = run(main())
    assert [m["text"] for m in replies if m["type"] == "final"] == direct_finals(sent)
    assert replies[-1] == {"type": "done", "audio_s": 1.875, "reason": "shutting_down"} and close_code == 1001


_SERVE_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_server_fake import FakeFactory
from server.app import run_server
from server.config import ServerConfig
run_server(ServerConfig(port=0), FakeFactory(), on_ready=lambda s: print(s.port, flush=True))
print("exited", flush=True)
"""


def spawn_fake_server() -> subprocess.Popen:
    """`run_server` on the fake factory in a child process (it handles SIGTERM itself); the first
    line of its stdout is the port."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.Popen(
        [sys.executable, "-c", _SERVE_SCRIPT.format(tests=os.path.join(root, "tests"))],
        cwd=root, stdout=subprocess.PIPE, text=True,
    )


def test_sigterm_gives_every_session_its_final() -> None:
    pcm = make_audio(1.5, 14)[:24000]
    proc = spawn_fake_server()
    try:
        port = int(proc.stdout.readline())

        async def main():
            socks = [await connect(f"ws://127.0.0.1:{port}/asr") for _ in range(3)]
            for ws in socks:
                await ws.send(START)
                await ws.recv()
                await ws.send(pcm.tobytes())
            await _until(lambda: _metric(port, "asr_audio_seconds_total") * 16000 >= 3 * pcm.size - 1.5, blocking=True)
            proc.terminate()  # SIGTERM
            return [[json.loads(m) async for m in ws] for ws in socks]

        for replies in run(main()):
            assert [m["text"] for m in replies if m["type"] == "final"] == direct_finals(pcm)
            assert replies[-1] == {"type": "done", "audio_s": 1.5, "reason": "shutting_down"}
        assert proc.wait(timeout=30) == 0 and proc.stdout.read().strip() == "exited"
    finally:
        proc.kill()
