"""The native protocol on `/asr` (docs/DESIGN.md, "Streaming protocol").

client -> {"type":"start","sample_rate":16000,"format":"s16le"}  (any rate from 4 to 192 kHz: the server
          resamples as `asr transcribe` does; optional: nbest, timestamps and
          any session field of the inference settings: decoder, block_ms (a number or "full"),
          left_blocks, beam, ctc_beam, ctc_weight, length_bonus, lm_weight, tentative_frames),
          binary s16le frames, {"type":"end"}
server -> {"type":"ready"}, {"type":"partial","segment":n,"text":...},
          {"type":"final","segment":n,"text":...,"words":[{"word","start","end"}]},
          {"type":"error","code":...,"message":...}; after "end": the last final, then {"type":"done"}.

Partials and finals also carry `audio_s`: the seconds of audio the server had processed when it
produced them (clients use it to measure latency). When no partial or final reported it, the
server sends `{"type":"ack","audio_s":...}` once per `ACK_EVERY_S` of processed audio, so that a
client can keep at most a few seconds of audio in flight (flow control: the server never has to
stop reading, so keepalive pings are answered at once). `done` carries `audio_s`, and `reason`
when the server ended the stream before the client's `end` (`shutting_down`: SIGTERM drain); an
error after which the text so far is kept (`idle_timeout`, `session_too_long`) comes after the
last final and carries `audio_s` too. An error is followed by a close.
"""

from __future__ import annotations

import asyncio
import json
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed

from asr.inference import InferenceConfig

from .config import SAMPLE_RATE
from .limits import ProtocolError, parse_json_object, parse_sample_rate
from .recognizer import Result, result_words
from .scheduler import Delivery, Stream, failure_message
from .session import Session

__all__ = ["ACK_EVERY_S", "StartOptions", "parse_start", "result_message", "handle"]

ACK_EVERY_S = 1.0  # processed audio between two progress messages when no result reported it

# every inference setting is accepted here, so that a server-only one (device, model, ...) gets the
# clear error of InferenceConfig.override
_SETTINGS = tuple(f.name for f in dataclasses.fields(InferenceConfig))
_START_KEYS = {"type", "sample_rate", "format", "nbest", "timestamps", *_SETTINGS}
_END_OF_OUTBOX = Delivery([], 0.0)  # put by the handler after the last real delivery


@dataclass(frozen=True)
class StartOptions:
    """A start message: the protocol's options and the inference settings it overrides (checked
    when the stream opens, by `InferenceConfig.override`)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    nbest: int = 1
    timestamps: bool = True
    sample_rate: int = SAMPLE_RATE


def parse_start(obj: dict[str, Any]) -> StartOptions:
    """Validate a `start` message; every problem names the field."""
    unknown = sorted(set(obj) - _START_KEYS)
    if unknown:
        raise ProtocolError("bad_message", f"unknown field(s) in start: {', '.join(unknown)}")
    sample_rate = parse_sample_rate(obj.get("sample_rate", SAMPLE_RATE))
    if obj.get("format", "s16le") != "s16le":
        raise ProtocolError("bad_format", f"format must be \"s16le\", got {obj.get('format')!r}")
    nbest = obj.get("nbest", 1)
    if isinstance(nbest, bool) or not isinstance(nbest, int) or nbest < 1:
        raise ProtocolError("bad_option", f"nbest must be an integer >= 1, got {nbest!r}")
    timestamps = obj.get("timestamps", True)
    if not isinstance(timestamps, bool):
        raise ProtocolError("bad_option", f"timestamps must be true or false, got {timestamps!r}")
    return StartOptions({k: obj[k] for k in _SETTINGS if k in obj}, nbest, timestamps, sample_rate)


def result_message(result: Result, audio_s: float, timestamps: bool) -> dict[str, Any]:
    if not result.is_final:
        return {"type": "partial", "segment": result.segment, "text": result.text, "audio_s": round(audio_s, 3)}
    words = [{"word": w, "start": round(s, 3), "end": round(e, 3)} for w, s, e in result_words(result)]
    return {
        "type": "final",
        "segment": result.segment,
        "text": result.text,
        "words": words if timestamps else [],
        "audio_s": round(audio_s, 3),
    }


async def _send(session: Session, obj: dict[str, Any]) -> None:
    await session.ws.send(json.dumps(obj, ensure_ascii=False))


async def _pump(session: Session, stream: Stream, opts: StartOptions) -> None:
    """Send the stream's results (and acks) as they come; a recognizer failure ends the session."""
    reported_s = 0.0  # audio_s of the last message sent
    while True:
        delivery = await stream.outbox.get()
        if delivery is _END_OF_OUTBOX:
            return
        for result in delivery.results:
            await _send(session, result_message(result, delivery.audio_s, opts.timestamps))
            reported_s = delivery.audio_s
        # (the tolerance: the scheduler puts a progress delivery after ACK_EVERY_S of samples,
        # which float seconds may place a hair below)
        if delivery.audio_s - reported_s >= ACK_EVERY_S - 1e-6 and delivery.error is None:
            await _send(session, {"type": "ack", "audio_s": round(delivery.audio_s, 3)})
            reported_s = delivery.audio_s
        if delivery.error is not None:
            session.record_error("internal", repr(delivery.error))
            message = failure_message(delivery.error)
            await _send(session, {"type": "error", "code": "internal", "message": message})
            await session.close(1011, message)
            return


def _audio_s(session: Session) -> float:
    """Seconds of audio the stream has processed (all of it once finalized)."""
    return round(session.stream.processed_samples / SAMPLE_RATE, 3) if session.stream is not None else 0.0


async def _send_error(session: Session, error: ProtocolError) -> None:
    session.record_error(error.code, error.message)
    message: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message}
    if session.stream is not None:
        message["audio_s"] = _audio_s(session)
    try:
        await _send(session, message)
    except ConnectionClosed:
        return
    await session.close(error.close_code, error.message)


async def handle(session: Session) -> None:
    """Run one native-protocol session to the end."""
    pump: asyncio.Task[None] | None = None

    async def finish() -> None:  # finalize, flush every result, stop the pump
        await session.finalize()
        assert session.stream is not None and pump is not None
        session.stream.outbox.put_nowait(_END_OF_OUTBOX)
        await pump

    try:
        message = await session.receive()
        if message is None:
            raise ProtocolError("shutting_down", "server is shutting down")
        if isinstance(message, bytes):
            raise ProtocolError("not_started", "audio before start: send {\"type\":\"start\",...} first")
        obj = parse_json_object(message)
        if obj.get("type") != "start":
            raise ProtocolError("not_started", f"first message must be type \"start\", got {obj.get('type')!r}")
        opts = parse_start(obj)
        stream = await session.open_stream(opts.overrides, opts.sample_rate)
        stream.progress_every = round(ACK_EVERY_S * SAMPLE_RATE)  # what _pump needs for its acks
        await _send(session, {"type": "ready", "sample_rate": opts.sample_rate})
        pump = asyncio.create_task(_pump(session, stream, opts))
        while True:
            message = await session.receive()
            if message is None or pump.done():
                break
            if isinstance(message, bytes):
                session.accept_audio(message)
                await session.wait_for_room()
                continue
            obj = parse_json_object(message)
            kind = obj.get("type")
            if kind == "end":
                break
            if kind == "start":
                raise ProtocolError("already_started", "start received twice")
            raise ProtocolError("unknown_type", f"unknown message type {kind!r} (expected binary audio or \"end\")")
        if not pump.done():
            await finish()
            done: dict[str, Any] = {"type": "done", "audio_s": _audio_s(session)}
            if message is None:  # the drain ended the stream, not the client: it was cut short
                done["reason"] = "shutting_down"
            await _send(session, done)
            if session.draining:
                await session.close(1001, "server shutting down")
    except ProtocolError as error:
        if session.graceful(error) and pump is not None and not pump.done():
            try:
                await finish()
            except ConnectionClosed:
                return
        await _send_error(session, error)
    except ConnectionClosed:
        pass
    finally:
        if pump is not None and not pump.done():
            pump.cancel()
        session.release()
