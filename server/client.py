"""Python client for the native protocol: stream a file (as fast as possible or in real time) or
the microphone, collect partials and finals, and measure latency.

    transcript = stream_file("ws://127.0.0.1:8765/asr", "a.wav", chunk_ms=100, realtime=True)
    print(transcript.text)

Latency of a result = time it arrived - time the client sent the frame holding the last sample the
server had processed when it produced the result (`audio_s` in the message): queueing, model and
network time, without the block the recognizer waits for by design.

Flow control: the client keeps at most `max_ahead_s` of audio beyond what the server reported as
processed (`audio_s` of partials, finals and acks) in flight, so a file sent at full speed never
fills the server's buffer: the server keeps reading, and keepalive pings are never queued behind
unread audio. A stream the server ended early (drain on SIGTERM, a limit) is reported: the
transcript's `cut` names the reason and `shortfall()` says how much audio was not transcribed.
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
    "shortfall",
    "read_pcm16",
    "astream_frames",
    "astream_file",
    "stream_file",
    "astream_microphone",
    "stream_microphone",
]

SAMPLE_RATE = 16000
ACK_EVERY_S = 1.0  # as server.native.ACK_EVERY_S (the client does not import the server)
OnMessage = Callable[[dict[str, Any]], None]


@dataclass
class Transcript:
    """Everything the server said about one stream.

    Args:
        audio_s: seconds of audio sent. input_s: seconds the client had to send (None: unknown,
            e.g. the microphone). processed_s: seconds the server reported as processed.
        cut: why the server ended the stream before the client's `end` (`shutting_down`, or the
            code of the error that ended it), None when the client ended it.
    """

    finals: list[dict[str, Any]] = field(default_factory=list)
    num_partials: int = 0
    latencies_s: list[float] = field(default_factory=list)
    latency_at_s: list[float] = field(default_factory=list)  # time.monotonic() when each latency was measured
    audio_s: float = 0.0
    wall_s: float = 0.0
    final_lag_s: float | None = None  # from sending "end" to receiving "done"
    input_s: float | None = None
    processed_s: float = 0.0
    cut: str | None = None

    @property
    def text(self) -> str:
        return " ".join(f["text"] for f in self.finals if f["text"])


class ClientError(Exception):
    """The server refused the stream or sent an error; the message says why. `transcript` holds
    what was received before (None when the stream never started)."""

    def __init__(self, message: str, transcript: Transcript | None = None) -> None:
        super().__init__(message)
        self.transcript = transcript


def shortfall(transcript: Transcript | None) -> str | None:
    """A warning when not all audio was transcribed, e.g. "the server ended the stream early
    (shutting_down): 25.0 s of 1200.0 s transcribed, 1175.0 s not"; None when all of it was."""
    if transcript is None:
        return None
    total = transcript.input_s if transcript.input_s is not None else transcript.audio_s
    done = min(transcript.processed_s, total)
    if transcript.cut is None and done >= total - 0.0015:  # audio_s is rounded to 1 ms
        return None
    why = f"the server ended the stream early ({transcript.cut})" if transcript.cut else "the stream ended early"
    return f"{why}: {done:.1f} s of {total:.1f} s transcribed, {total - done:.1f} s not"


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
    max_ahead_s: float | None = 5.0,
    input_s: float | None = None,
) -> Transcript:
    transcript = Transcript(input_s=input_s)
    rate = int((start or {}).get("sample_rate", SAMPLE_RATE))  # the frames' rate; audio_s is in seconds
    sent_ends: list[int] = []  # cumulative samples after each frame
    sent_times: list[float] = []
    headers = {"Authorization": f"Bearer {token}"} if token else None
    began = time.monotonic()
    progress = asyncio.Event()  # set whenever the server reports more processed audio
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
                if isinstance(msg.get("audio_s"), (int, float)) and msg["audio_s"] > transcript.processed_s:
                    transcript.processed_s = float(msg["audio_s"])
                    progress.set()
                if kind in ("partial", "final") and sent_ends:
                    i = min(bisect.bisect_left(sent_ends, round(msg.get("audio_s", 0.0) * rate)), len(sent_ends) - 1)
                    now = time.monotonic()
                    transcript.latencies_s.append(now - sent_times[i])
                    transcript.latency_at_s.append(now)
                if kind == "partial":
                    transcript.num_partials += 1
                elif kind == "final":
                    transcript.finals.append(msg)
                elif kind == "error":
                    transcript.cut = str(msg.get("code"))
                    raise ClientError(f"server error {msg.get('code')}: {msg.get('message')}", transcript)
                elif kind == "done":
                    if end_sent_at is not None:
                        transcript.final_lag_s = time.monotonic() - end_sent_at
                    if msg.get("reason"):
                        transcript.cut = str(msg["reason"])
                    return
            raise ClientError("connection closed before the final result", transcript)

        async def room(total: int) -> None:
            """Wait until at most `max_ahead_s` of the audio sent is not yet processed."""
            while (
                max_ahead_s is not None
                and not receiver.done()
                and total / rate - transcript.processed_s > max_ahead_s
            ):
                progress.clear()
                waiter = asyncio.ensure_future(progress.wait())
                await asyncio.wait({waiter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()

        end_sent_at: float | None = None
        receiver = asyncio.create_task(receive())
        total = 0
        try:
            try:
                async for frame in frames:
                    await room(total)
                    if receiver.done():
                        break
                    await ws.send(frame.astype("<i2").tobytes())
                    total += frame.size
                    sent_ends.append(total)
                    sent_times.append(time.monotonic())
                if not receiver.done():
                    end_sent_at = time.monotonic()
                    await ws.send(json.dumps({"type": "end"}))
            except (ConnectionClosed, AttributeError):
                # the receiver reports why; AttributeError: asyncio's transport.abort() on a connection
                # already lost (websockets' send after a keepalive timeout), i.e. the same thing
                pass
            transcript.audio_s = total / rate
            try:
                await receiver
            except ConnectionClosed as exc:
                raise ClientError(f"connection lost before the final result ({exc})", transcript) from None
        finally:
            receiver.cancel()
    transcript.audio_s = total / rate
    transcript.wall_s = time.monotonic() - began
    return transcript


async def _paced(frames: Iterable[np.ndarray], realtime: bool, rate: int) -> AsyncIterator[np.ndarray]:
    began, sent = time.monotonic(), 0
    for frame in frames:
        if realtime:  # send each frame when its audio would have been captured
            delay = began + sent / rate - time.monotonic()
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
    max_ahead_s: float | None = 5.0,
) -> Transcript:
    """Stream int16 frames of any sizes (each (n,) int16, 16 kHz unless `start` gives another
    `sample_rate`) over the native protocol.

    Args:
        url: `ws://host:port` (the `/asr` path is added) or a full `ws(s)://.../asr` URL.
        realtime: pace the frames at the audio's own rate; else send as fast as the server reads.
        start: extra fields of the start message (sample_rate, decoder, block_ms, nbest, timestamps).
        token: bearer token, when the server needs one.
        on_message: called with every server message (dict), e.g. to print partials.
        insecure: accept a self-signed TLS certificate.
        max_ahead_s: most seconds of audio sent but not yet processed by the server (flow control;
            keep it below the server's `max_pending_s`, 10 s by default); None: no limit.
    Raises:
        ClientError: the server refused the stream or reported an error (`.transcript`: what came
            before it).
    """
    if max_ahead_s is not None and max_ahead_s < 2 * ACK_EVERY_S:
        raise ValueError(f"max_ahead_s must be >= {2 * ACK_EVERY_S:g} s (the server acknowledges every {ACK_EVERY_S:g} s)")
    rate = int((start or {}).get("sample_rate", SAMPLE_RATE))
    input_s = sum(f.size for f in frames) / rate if isinstance(frames, (list, tuple)) else None
    return await _stream(
        url, _paced(frames, realtime, rate), start=start, token=token, on_message=on_message, insecure=insecure,
        max_ahead_s=max_ahead_s, input_s=input_s,
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
