"""`asr serve --workers N` (server/workers.py, server/remote.py): the same texts as one process,
and faults that stay with their own sessions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Iterator

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, os.path.dirname(__file__))
from test_server_fake import FakeFactory, make_audio, random_frames, run, running  # noqa: E402
from test_server_limits import START, _until  # noqa: E402
from test_server_protocols import _vosk_session, _wenet_session  # noqa: E402

from asr.inference import InferenceConfig  # noqa: E402
from server.client import ClientError, astream_frames  # noqa: E402
from server.config import ServerConfig  # noqa: E402
from server.workers import WorkerError, WorkerPool  # noqa: E402

_CONFIG = ServerConfig(port=0, model_name="fake", inference=InferenceConfig(decoder="sar", block_ms=640))


class _Poisoned(FakeFactory):
    """Fails to load (the model process reports it)."""

    def __init__(self) -> None:
        raise OSError("no model here")


@contextlib.contextmanager
def pool(make_factory: Any = FakeFactory, workers: int = 2, config: ServerConfig = _CONFIG) -> Iterator[WorkerPool]:
    """A running pool, supervised on a thread; `pool.status` is its exit status once stopped."""
    p = WorkerPool(config, make_factory, workers, log_level="WARNING")
    p.start()
    stop = threading.Event()
    result: list[int] = []
    watcher = threading.Thread(target=lambda: result.append(p.supervise(stop)), daemon=True)
    watcher.start()
    try:
        yield p
    finally:
        stop.set()
        watcher.join(120)
        p.status = result[0] if result else None  # type: ignore[attr-defined]


async def _sessions(url: str, seeds: list[int]) -> list[Any]:
    """Each seed: a native, a Vosk and a WeNet session at once (every protocol)."""
    jobs = []
    for seed in seeds:
        pcm = make_audio(3.0, seed)
        frames = random_frames(pcm, seed)
        jobs += [astream_frames(url + "/asr", frames),
                 _vosk_session(url + "/vosk", frames, '{"config": {"sample_rate": 16000}}'),
                 _wenet_session(url + "/wenet", frames, continuous=True)]
    out = await asyncio.gather(*jobs)
    texts = []
    for i in range(0, len(out), 3):
        native, (vosk, last), wenet = out[i], out[i + 1], out[i + 2]
        texts.append(([f["text"] for f in native.finals], vosk + last,  # Vosk: every reply, partials too
                      [m for m in wenet if m.get("type") == "final_result"]))
    return texts


def test_workers_give_the_texts_of_one_process() -> None:
    """The same sessions through --workers 2 and through the in-process server: the same finals for
    every protocol, and the same partials where the protocol fixes them (Vosk: one reply per frame)."""

    async def in_process():
        async with running() as server:
            return await _sessions(server.url, [0, 1, 2])

    expected = run(in_process())
    with pool() as p:
        got = run(_sessions(p.url, [0, 1, 2]))
    assert got == expected
    assert all(native for native, _, _ in got)


def test_settings_errors_and_healthz_through_workers() -> None:
    """A bad session setting is the client's `bad_option` (raised in the model process); /healthz
    answers from a front."""
    import urllib.request

    async def main(url):
        with pytest.raises(ClientError, match="bad_option"):
            await astream_frames(url + "/asr", [make_audio(0.5, 1)], start={"decoder": "bsbs"})
        return await astream_frames(url + "/asr", [make_audio(0.5, 1)], start={"decoder": "ctc"})

    with pool() as p:
        transcript = run(main(p.url))
        http = p.url.replace("ws", "http", 1)
        with urllib.request.urlopen(http + "/healthz", timeout=30) as r:
            health = json.loads(r.read())
        with urllib.request.urlopen(http + "/metrics", timeout=30) as r:
            metrics = dict(line.split(" ", 1) for line in r.read().decode().splitlines() if not line.startswith("#"))
    assert transcript.finals and health["status"] == "ok" and health["model"] == "fake"
    assert float(metrics["asr_model_pass_seconds_count"]) >= 1  # every front sees the model's passes


def test_model_that_fails_to_load_is_reported() -> None:
    with pytest.raises(WorkerError, match="no model here"):
        WorkerPool(_CONFIG, _Poisoned, 1, log_level="CRITICAL").start()


async def _open_streaming(url: str, pcm: np.ndarray, n: int) -> list[Any]:
    socks = []
    for _ in range(n):
        ws = await connect(url + "/asr")
        await ws.send(START)
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(pcm.tobytes())
        socks.append(ws)
    return socks


async def _until_closed(ws: Any) -> list[dict]:
    out = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            out.append(json.loads(await ws.recv()))
    return out


async def _finish(ws: Any, pcm: np.ndarray) -> list[dict] | None:
    """Send the rest and `end`; the replies, or None when the connection was cut."""
    try:
        await ws.send(pcm.tobytes())
        await ws.send(json.dumps({"type": "end"}))
        return [json.loads(m) async for m in ws]
    except ConnectionClosed:
        return None


def test_a_dead_front_or_a_vanished_client_leaves_the_others_alone() -> None:
    """SIGKILL one front and drop one client mid-stream: every session on the other front ends with
    exactly its text; the dead front's sessions are cut (never a wrong text); a new front takes over."""
    pcm = make_audio(3.0, 21)
    first, rest = pcm[:20000], pcm[20000:]
    from test_server_fake import direct_finals

    expected = direct_finals(pcm)
    with pool() as p:
        victim = p.fronts[0]

        async def main():
            socks = await _open_streaming(p.url, first, 8)
            vanished = await connect(p.url + "/asr")
            await vanished.send(START)
            await vanished.recv()
            await vanished.send(first.tobytes())
            vanished.transport.abort()  # the client vanishes without a close
            os.kill(victim.pid, signal.SIGKILL)
            outcomes = await asyncio.gather(*(_finish(ws, rest) for ws in socks))
            await _until(lambda: p.restarts == 1, blocking=True)
            after = await astream_frames(p.url + "/asr", random_frames(pcm, 5))  # the pool still serves
            return outcomes, after

        outcomes, after = run(main())
    for replies in outcomes:
        if replies is not None and replies and replies[-1].get("type") == "done":
            assert [m["text"] for m in replies if m["type"] == "final"] == expected
        else:  # cut with the dead front: no final, no wrong text
            assert replies is None or not any(m.get("type") == "final" for m in replies)
    assert any(r is not None and r[-1].get("type") == "done" for r in outcomes)
    assert [f["text"] for f in after.finals] == expected and p.status == 0


def test_model_process_death_tells_every_client_and_exits_non_zero() -> None:
    pcm = make_audio(1.0, 22)
    with pool() as p:

        async def main():
            socks = await _open_streaming(p.url, pcm, 4)
            os.kill(p.model.pid, signal.SIGKILL)
            return [await _until_closed(ws) for ws in socks]

        replies = run(main())
    for r in replies:
        errors = [m for m in r if m["type"] == "error"]
        assert errors and "model process exited" in errors[-1]["message"]
    assert p.status == 1


_SERVE_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_server_fake import FakeFactory
from server.config import ServerConfig
from server.workers import run_workers
status = run_workers(ServerConfig(port=0), FakeFactory, 2, on_ready=lambda p: print(p.port, flush=True),
                     log_level="WARNING")
print("exited", status, flush=True)
sys.exit(status)
"""


@pytest.mark.parametrize("to_group, sig", [(False, signal.SIGTERM), (True, signal.SIGINT)])
def test_sigterm_drains_every_session_through_workers(to_group: bool, sig: int) -> None:
    """SIGTERM to the parent, or Ctrl-C (SIGINT to the whole process group: every front gets it and
    then the parent's SIGTERM): each open session (on either front) gets the final of all the audio
    it sent and `done` marked as cut by the drain; exit status 0."""
    from test_server_fake import direct_finals

    pcm = make_audio(1.5, 14)[:24000]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", _SERVE_SCRIPT.format(tests=os.path.join(root, "tests"))],
                            cwd=root, stdout=subprocess.PIPE, text=True, start_new_session=to_group)
    try:
        port = int(proc.stdout.readline())

        async def main():
            socks = await _open_streaming(f"ws://127.0.0.1:{port}", pcm, 6)
            seen: list[list[dict]] = [[] for _ in socks]
            for ws, got in zip(socks, seen):  # a message at 1.5 s: the model has had all the audio
                while not got or got[-1].get("audio_s", 0) < 1.5:
                    got.append(json.loads(await ws.recv()))
            if to_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            for ws, got in zip(socks, seen):
                got += await _until_closed(ws)
            return seen

        for replies in run(main()):
            assert [m["text"] for m in replies if m["type"] == "final"] == direct_finals(pcm)
            assert replies[-1] == {"type": "done", "audio_s": 1.5, "reason": "shutting_down"}
        assert proc.wait(timeout=60) == 0 and proc.stdout.read().strip() == "exited 0"
    finally:
        proc.kill()


@pytest.mark.parametrize("decoder", ["ctc", "sar"])
def test_workers_with_the_real_model_equal_one_process(tiny_model_dir, tts_corpus, decoder) -> None:
    """The tiny model through `streaming_factory` in the model process: every session's finals
    (native) and every Vosk reply equal the in-process server's with the same model."""
    import functools

    import soundfile as sf

    from asr.data import read_manifest
    from server.app import serve
    from server.workers import streaming_factory
    from streaming import make_recognizer_factory

    settings = InferenceConfig(model=str(tiny_model_dir), decoder=decoder, block_ms=320)
    config = ServerConfig(port=0, model_name="tiny", inference=settings)
    rows = read_manifest(tts_corpus / "all.jsonl")
    clips = [sf.read(rows[i]["audio"], dtype="int16")[0] for i in (1, 3)]

    async def sessions(url):
        jobs = []
        for k, pcm in enumerate(clips):
            frames = random_frames(pcm, 30 + k)
            jobs += [astream_frames(url + "/asr", frames), _vosk_session(url + "/vosk", frames, None)]
        out = await asyncio.gather(*jobs)
        return [(out[i].text, out[i + 1]) for i in range(0, len(out), 2)]

    async def in_process():
        async with serve(config, make_recognizer_factory(settings)) as server:
            return await sessions(server.url)

    expected = run(in_process())
    with pool(functools.partial(streaming_factory, settings), config=config) as p:
        got = run(sessions(p.url))
    assert got == expected and all(text for text, _ in got)


def test_asr_serve_workers_from_the_command_line(tiny_model_dir, tts_corpus) -> None:
    """`asr serve --workers 2`: the ready line, a transcript equal to the in-process server's, and a
    clean exit on SIGTERM."""
    import re

    import soundfile as sf

    from asr.data import read_manifest
    from server.app import serve
    from streaming import make_recognizer_factory

    pcm = sf.read(read_manifest(tts_corpus / "all.jsonl")[2]["audio"], dtype="int16")[0]
    frames = random_frames(pcm, 41)
    settings = InferenceConfig(model=str(tiny_model_dir), decoder="ctc", block_ms=320)

    async def in_process():
        async with serve(ServerConfig(port=0, inference=settings), make_recognizer_factory(settings)) as server:
            return (await astream_frames(server.url + "/asr", frames)).text

    expected = run(in_process())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "blockasr", "serve", "--workers", "2", "--model", str(tiny_model_dir),
                             "--decoder", "ctc", "--block-ms", "320", "--port", "0", "--log-level", "WARNING"],
                            cwd=root, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        match = re.search(r"on (ws://\S+)/asr .*2 front processes", line)
        assert match, line
        got = run(astream_frames(match.group(1) + "/asr", frames)).text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert got == expected and expected
