"""Python client for the native protocol: stream a file (as fast as possible or in real time) or
the microphone, collect partials and finals, and measure latency.

    transcript = stream_file("ws://127.0.0.1:8765/asr", "a.wav", chunk_ms=100, realtime=True)
    print(transcript.text)

Latency of a result = time it arrived - time the client sent the frame holding the last sample the
server had processed when it produced the result (`audio_s` in the message): queueing, model and
network time, without the block the recognizer waits for by design.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

__all__ = [
    "ClientError",
    "Transcript",
    "read_pcm16",
    "astream_frames",
    "astream_file",
    "stream_file",
    "astream_microphone",
    "stream_microphone",
]

SAMPLE_RATE = 16000
OnMessage = Callable[[dict[str, Any]], None]


class ClientError(Exception):
    """The server refused the stream or sent an error; the message says why."""


@dataclass
class Transcript:
    """Everything the server said about one stream."""

    finals: list[dict[str, Any]] = field(default_factory=list)
    num_partials: int = 0
    latencies_s: list[float] = field(default_factory=list)
    audio_s: float = 0.0
    wall_s: float = 0.0
    final_lag_s: float | None = None  # from sending "end" to receiving "done"

    @property
    def text(self) -> str:
        return " ".join(f["text"] for f in self.finals if f["text"])


def _asr_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/asr")) if parts.path in ("", "/") else url


def read_pcm16(path: str | Path) -> np.ndarray:
    """Audio file -> (n,) int16 at 16 kHz mono (other rates and formats via `asr.audio.load_audio`)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError) as exc:  # soundfile raises LibsndfileError (a RuntimeError)
        raise ClientError(f"{path}: cannot read audio ({exc})") from None
    if info.samplerate == SAMPLE_RATE and info.channels == 1:
        return sf.read(str(path), dtype="int16")[0]
    from asr.audio import load_audio  # resampling and down-mixing need torch; import only then

    wave = load_audio(path).numpy()
    return np.clip(np.round(wave * 32768.0), -32768, 32767).astype(np.int16)


def _ssl_for(url: str, insecure: bool) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    ctx = ssl.create_default_context()
    if insecure:  # self-signed test certificates
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _stream(
    url: str,
    frames: AsyncIterator[np.ndarray],
    *,
    start: dict[str, Any] | None,
    token: str | None,
    on_message: OnMessage | None,
    insecure: bool,
) -> Transcript:
    transcript = Transcript()
    sent_ends: list[int] = []  # cumulative samples after each frame
    sent_times: list[float] = []
    headers = {"Authorization": f"Bearer {token}"} if token else None
    began = time.monotonic()
    async with connect(
        _asr_url(url), additional_headers=headers, ssl=_ssl_for(url, insecure), compression=None, max_size=None
    ) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": SAMPLE_RATE, "format": "s16le", **(start or {})}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise ClientError(f"server refused the stream: {ready.get('code')}: {ready.get('message')}")

        async def receive() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if on_message is not None:
                    on_message(msg)
                if kind in ("partial", "final") and sent_ends:
                    i = min(bisect.bisect_left(sent_ends, round(msg.get("audio_s", 0.0) * SAMPLE_RATE)), len(sent_ends) - 1)
                    transcript.latencies_s.append(time.monotonic() - sent_times[i])
                if kind == "partial":
                    transcript.num_partials += 1
                elif kind == "final":
                    transcript.finals.append(msg)
                elif kind == "error":
                    raise ClientError(f"server error {msg.get('code')}: {msg.get('message')}")
                elif kind == "done":
                    if end_sent_at is not None:
                        transcript.final_lag_s = time.monotonic() - end_sent_at
                    return
            raise ClientError("connection closed before the final result")

        end_sent_at: float | None = None
        receiver = asyncio.create_task(receive())
        total = 0
        try:
            try:
                async for frame in frames:
                    if receiver.done():
                        break
                    await ws.send(frame.astype("<i2").tobytes())
                    total += frame.size
                    sent_ends.append(total)
                    sent_times.append(time.monotonic())
                if not receiver.done():
                    end_sent_at = time.monotonic()
                    await ws.send(json.dumps({"type": "end"}))
            except ConnectionClosed:
                pass  # the receiver reports why
            try:
                await receiver
            except ConnectionClosed as exc:
                raise ClientError(f"connection lost before the final result ({exc})") from None
        finally:
            receiver.cancel()
    transcript.audio_s = total / SAMPLE_RATE
    transcript.wall_s = time.monotonic() - began
    return transcript


async def _paced(frames: Iterable[np.ndarray], realtime: bool) -> AsyncIterator[np.ndarray]:
    began, sent = time.monotonic(), 0
    for frame in frames:
        if realtime:  # send each frame when its audio would have been captured
            delay = began + sent / SAMPLE_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield frame
        sent += frame.size


async def astream_frames(
    url: str,
    frames: Iterable[np.ndarray],
    *,
    realtime: bool = False,
    start: dict[str, Any] | None = None,
    token: str | None = None,
    on_message: OnMessage | None = None,
    insecure: bool = False,
) -> Transcript:
    """Stream int16 frames of any sizes (each (n,) int16 16 kHz) over the native protocol.

    Args:
        url: `ws://host:port` (the `/asr` path is added) or a full `ws(s)://.../asr` URL.
        realtime: pace the frames at the audio's own rate; else send as fast as the server reads.
        start: extra fields of the start message (decoder, block_ms, nbest, timestamps).
        token: bearer token, when the server needs one.
        on_message: called with every server message (dict), e.g. to print partials.
        insecure: accept a self-signed TLS certificate.
    Raises:
        ClientError: the server refused the stream or reported an error.
    """
    return await _stream(
        url, _paced(frames, realtime), start=start, token=token, on_message=on_message, insecure=insecure
    )


def _split(pcm: np.ndarray, chunk_ms: int) -> list[np.ndarray]:
    step = max(1, SAMPLE_RATE * chunk_ms // 1000)
    return [pcm[i : i + step] for i in range(0, pcm.size, step)]


async def astream_file(url: str, path: str | Path, chunk_ms: int = 100, realtime: bool = False, **kwargs: Any) -> Transcript:
    """`stream_file`, as a coroutine."""
    return await astream_frames(url, _split(read_pcm16(path), chunk_ms), realtime=realtime, **kwargs)


def stream_file(url: str, path: str | Path, chunk_ms: int = 100, realtime: bool = False, **kwargs: Any) -> Transcript:
    """Stream an audio file in `chunk_ms` frames; keyword arguments as `astream_frames`."""
    return asyncio.run(astream_file(url, path, chunk_ms, realtime, **kwargs))


def _import_sounddevice() -> Any:
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise ClientError(
            f"--mic needs the 'sounddevice' package and PortAudio ({exc}); install them with "
            "`pip install sounddevice` (and `apt-get install libportaudio2`), or stream a file instead"
        ) from None
    return sounddevice


async def _microphone_frames(chunk_ms: int, stop: asyncio.Event) -> AsyncIterator[np.ndarray]:
    sounddevice = _import_sounddevice()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:  # audio thread
        loop.call_soon_threadsafe(queue.put_nowait, indata[:, 0].copy())

    with sounddevice.InputStream(
        samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=SAMPLE_RATE * chunk_ms // 1000, callback=callback
    ):
        while not stop.is_set():
            try:
                yield await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                continue


async def astream_microphone(url: str, chunk_ms: int = 100, stop: asyncio.Event | None = None, **kwargs: Any) -> Transcript:
    """Stream the default microphone until `stop` is set (or the task is cancelled)."""
    _import_sounddevice()  # fail before connecting when there is no audio stack
    stop = stop or asyncio.Event()
    return await _stream(
        url,
        _microphone_frames(chunk_ms, stop),
        start=kwargs.get("start"),
        token=kwargs.get("token"),
        on_message=kwargs.get("on_message"),
        insecure=kwargs.get("insecure", False),
    )


def stream_microphone(url: str, chunk_ms: int = 100, **kwargs: Any) -> Transcript:
    """Stream the microphone until Ctrl-C, then send `end` and wait for the last final."""

    async def main() -> Transcript:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        loop.add_signal_handler(signal.SIGINT, stop.set)
        return await astream_microphone(url, chunk_ms, stop, **kwargs)

    return asyncio.run(main())
