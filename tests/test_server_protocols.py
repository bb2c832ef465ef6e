"""Each protocol, fed a file in random-sized frames, gives the finals of the recognizer fed directly."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, os.path.dirname(__file__))
from test_server_fake import (  # noqa: E402
    BatchingFakeFactory,
    direct_finals,
    make_audio,
    random_frames,
    run,
    running,
)

from server.client import astream_frames, read_pcm16  # noqa: E402


def _nonempty(texts: list[str]) -> list[str]:
    return [t for t in texts if t]


@pytest.mark.parametrize("seed", [0, 1])
def test_native_equals_direct(seed: int) -> None:
    pcm = make_audio(4.0, seed)
    messages: list[dict] = []

    async def main():
        async with running() as server:
            return await astream_frames(server.url + "/asr", random_frames(pcm, seed), on_message=messages.append)

    transcript = run(main())
    assert [f["text"] for f in transcript.finals] == direct_finals(pcm)
    assert [f["segment"] for f in transcript.finals] == list(range(len(transcript.finals)))
    assert messages[-1] == {"type": "done", "audio_s": 4.0}
    first = transcript.finals[0]
    assert [w["word"] for w in first["words"]] == first["text"].split()
    assert all(w["end"] > w["start"] >= 0 for w in first["words"])
    assert transcript.num_partials > 0 and all(m["type"] in ("partial", "final", "ack", "done") for m in messages)


def test_native_file_client_and_options(tmp_path) -> None:
    import soundfile as sf

    pcm = make_audio(2.0, 5)
    path = tmp_path / "a.wav"
    sf.write(path, pcm, 16000, subtype="PCM_16")
    assert np.array_equal(read_pcm16(path), pcm)

    async def main():
        async with running() as server:
            return await astream_frames(
                server.url, [pcm[i : i + 1600] for i in range(0, pcm.size, 1600)],
                start={"decoder": "ctc", "block_ms": 320, "nbest": 1, "timestamps": False},
            )

    transcript = run(main())
    assert [f["text"] for f in transcript.finals] == direct_finals(pcm)
    assert all(f["words"] == [] for f in transcript.finals)


async def _vosk_session(url: str, frames: list[np.ndarray], config: str | None) -> tuple[list[dict], list[dict]]:
    """Like vosk-server's test.py: one recv after every send. Returns (replies to audio, eof reply)."""
    replies = []
    async with connect(url) as ws:
        if config is not None:
            await ws.send(config)
        for frame in frames:
            await ws.send(frame.tobytes())
            replies.append(json.loads(await ws.recv()))
        await ws.send('{"eof" : 1}')
        last = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()  # the server closes after the final result
        assert ws.close_code == 1000
    return replies, [last]


@pytest.mark.parametrize("path, config", [("/vosk", '{ "config" : { "sample_rate" : 16000 } }'), ("/", None)])
def test_vosk_equals_direct(path: str, config: str | None) -> None:
    pcm = make_audio(4.0, 3)
    frames = random_frames(pcm, 3)

    async def main():
        async with running() as server:
            return await _vosk_session(server.url + path, frames, config)

    replies, (last,) = run(main())
    assert len(replies) == len(frames)  # exactly one reply per audio message
    assert all(("partial" in r) != ("text" in r) for r in replies)
    texts = [r["text"] for r in replies if "text" in r] + [last["text"]]
    assert " ".join(_nonempty(texts)) == " ".join(_nonempty(direct_finals(pcm)))
    with_words = [r for r in replies if r.get("text")]
    assert with_words and all(set(w) == {"conf", "start", "end", "word"} for r in with_words for w in r["result"])
    assert " ".join(w["word"] for w in with_words[0]["result"]) == with_words[0]["text"]


def test_vosk_alternatives_and_no_words() -> None:
    pcm = make_audio(1.5, 4)

    async def main():
        async with running() as server:
            a = await _vosk_session(server.url + "/vosk", [pcm], '{"config": {"sample_rate": 16000, "max_alternatives": 2}}')
            b = await _vosk_session(server.url + "/vosk", [pcm], '{"config": {"sample_rate": 16000.0, "words": 0}}')
            return a, b

    (alt_replies, (alt_last,)), (plain_replies, (plain_last,)) = run(main())
    assert "alternatives" in alt_last and alt_last["alternatives"][0]["confidence"] == 1.0
    assert all("result" not in r for r in plain_replies + [plain_last])


async def _wenet_session(url: str, frames: list[np.ndarray], continuous: bool, **start) -> list[dict]:
    """Like WeNet's websocket client: start, audio, end; read until speech_end."""
    out = []
    async with connect(url) as ws:
        await ws.send(json.dumps({"signal": "start", "nbest": 1, "continuous_decoding": continuous, **start}))
        assert json.loads(await ws.recv()) == {"status": "ok", "type": "server_ready"}
        try:
            for frame in frames:
                await ws.send(frame.tobytes())
            await ws.send(json.dumps({"signal": "end"}))
        except ConnectionClosed:
            assert not continuous
        async for raw in ws:
            msg = json.loads(raw)
            out.append(msg)
            if msg.get("type") == "speech_end":
                break
    return out


@pytest.mark.parametrize("path", ["/wenet", "/"])
def test_wenet_equals_direct(path: str) -> None:
    pcm = make_audio(4.0, 6)

    async def main():
        async with running() as server:
            return await _wenet_session(server.url + path, random_frames(pcm, 6), continuous=True)

    messages = run(main())
    assert messages[-1] == {"status": "ok", "type": "speech_end"}
    assert {m["type"] for m in messages[:-1]} <= {"partial_result", "final_result"}
    nbests = [(m["type"], json.loads(m["nbest"])) for m in messages[:-1]]  # nbest is a JSON string
    finals = [n for t, n in nbests if t == "final_result"]
    assert [n[0]["sentence"] for n in finals] == direct_finals(pcm)
    pieces = finals[0][0]["word_pieces"]
    assert [p["word"] for p in pieces] == finals[0][0]["sentence"].split()
    assert all(isinstance(p["start"], int) and p["end"] - p["start"] == 100 for p in pieces)  # ms
    assert all(n[0]["sentence"] and "word_pieces" not in n[0] for t, n in nbests if t == "partial_result")


def test_wenet_single_utterance_ends_at_first_final() -> None:
    pcm = make_audio(4.0, 7)

    async def main():
        async with running() as server:
            return await _wenet_session(server.url + "/wenet", random_frames(pcm, 7), continuous=False)

    messages = run(main())
    finals = [m for m in messages if m["type"] == "final_result"]
    assert len(finals) == 1 and json.loads(finals[0]["nbest"])[0]["sentence"] == direct_finals(pcm)[0]
    assert messages[-1]["type"] == "speech_end"


def test_batching_hook_is_used_and_correct() -> None:
    factory = BatchingFakeFactory()
    audios = [make_audio(2.0, 20 + i) for i in range(4)]

    async def main():
        import asyncio

        async with running(factory) as server:
            return await asyncio.gather(
                *(astream_frames(server.url, random_frames(a, i)) for i, a in enumerate(audios))
            )

    transcripts = run(main())
    for audio, transcript in zip(audios, transcripts):
        assert [f["text"] for f in transcript.finals] == direct_finals(audio)
    assert factory.batch_sizes and sum(factory.batch_sizes) > 0


def test_native_autodetected_on_root() -> None:
    pcm = make_audio(1.0, 8)

    async def main():
        async with running() as server:
            async with connect(server.url + "/") as ws:
                await ws.send(json.dumps({"type": "start"}))
                replies = [json.loads(await ws.recv())]
                await ws.send(pcm.tobytes())
                await ws.send(json.dumps({"type": "end"}))
                replies += [json.loads(m) async for m in ws]
            return replies

    replies = run(main())
    assert replies[0]["type"] == "ready" and replies[-1] == {"type": "done", "audio_s": 1.0}
    assert [m["text"] for m in replies if m["type"] == "final"] == direct_finals(pcm)


def test_long_session_state_stays_bounded() -> None:
    """Ten minutes of audio, sent as fast as possible: backpressure caps the server's buffer and
    the server keeps no per-segment history, however many finals go by."""
    pcm = np.concatenate([make_audio(30.0, s) for s in range(20)])
    peak_pending = []

    async def main():
        async with running(max_pending_s=1.0, max_session_s=None) as server:
            feed = server.scheduler.feed

            def watched_feed(stream, samples):
                feed(stream, samples)
                peak_pending.append(stream.pending_samples)

            server.scheduler.feed = watched_feed
            return await astream_frames(server.url, [pcm[i : i + 32000] for i in range(0, pcm.size, 32000)])

    transcript = run(main())
    assert [f["text"] for f in transcript.finals] == direct_finals(pcm)
    assert len(transcript.finals) > 500 and max(peak_pending) <= 16000 + 32000
