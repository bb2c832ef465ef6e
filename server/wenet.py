"""The WeNet runtime protocol on `/wenet`, as wenet `runtime/core/websocket/websocket_server.cc` speaks it.

client -> {"signal":"start","nbest":1,"continuous_decoding":true}, binary s16le 16 kHz audio,
          {"signal":"end"}. Our extension: "sample_rate" in the start signal (4 to 192 kHz, resampled
          to the model's; WeNet itself takes 16 kHz only).
server -> {"status":"ok","type":"server_ready"},
          {"status":"ok","type":"partial_result","nbest":"[{\"sentence\":\"...\"}]"} (nbest is a JSON
          *string*; sent only when something was decoded),
          {"status":"ok","type":"final_result","nbest":"[{\"sentence\":...,\"word_pieces\":[{\"word\",
          \"start\",\"end\"}]}]"} (times in ms) at each endpoint and after end,
          {"status":"ok","type":"speech_end"} after the last final;
          errors: {"status":"failed","message":...} (plus our `code`), then a close.
With "continuous_decoding": false the session ends after the first final.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed

from .config import SAMPLE_RATE
from .limits import ProtocolError, parse_json_object, parse_sample_rate
from .recognizer import Result, result_words
from .scheduler import Delivery, Stream, failure_message
from .session import Session

__all__ = ["WenetOptions", "parse_start_signal", "nbest_json", "handle"]

_END_OF_OUTBOX = Delivery([], 0.0)


@dataclass(frozen=True)
class WenetOptions:
    nbest: int = 1
    continuous_decoding: bool = False  # WeNet's default
    sample_rate: int = SAMPLE_RATE  # our extension


def parse_start_signal(obj: dict[str, Any]) -> WenetOptions:
    """Validate a text message that must be the start signal (WeNet's own error texts)."""
    if "signal" not in obj:
        raise ProtocolError("bad_message", "Wrong message header")
    if obj["signal"] == "end":
        raise ProtocolError("not_started", "End signal before start signal")
    if obj["signal"] != "start":
        raise ProtocolError("unknown_type", "Unexpected signal type")
    nbest = obj.get("nbest", 1)
    if isinstance(nbest, bool) or not isinstance(nbest, int) or nbest < 1:
        raise ProtocolError("bad_option", "integer is expected for nbest option")
    continuous = obj.get("continuous_decoding", False)
    if not isinstance(continuous, bool):
        raise ProtocolError("bad_option", "boolean true or false is expected for continuous_decoding option")
    rate = parse_sample_rate(obj.get("sample_rate", SAMPLE_RATE))
    return WenetOptions(nbest=nbest, continuous_decoding=continuous, sample_rate=rate)


def nbest_json(result: Result) -> str:
    """WeNet's `nbest` field: a JSON string of hypotheses (we have one); finals carry word pieces in ms."""
    path: dict[str, Any] = {"sentence": result.text}
    if result.is_final:
        path["word_pieces"] = [
            {"word": w, "start": int(round(s * 1000)), "end": int(round(e * 1000))} for w, s, e in result_words(result)
        ]
    return json.dumps([path], ensure_ascii=False)


async def _send(session: Session, obj: dict[str, Any]) -> None:
    await session.ws.send(json.dumps(obj, ensure_ascii=False))


async def _pump(session: Session, stream: Stream, opts: WenetOptions) -> bool:
    """Send results as they come. Returns True when the session should end (first final without
    continuous decoding, or a recognizer failure)."""
    while True:
        delivery = await stream.outbox.get()
        if delivery is _END_OF_OUTBOX:
            return False
        for result in delivery.results:
            if not result.is_final and not result.text:
                continue  # WeNet sends partials only when something was decoded
            kind = "final_result" if result.is_final else "partial_result"
            await _send(session, {"status": "ok", "type": kind, "nbest": nbest_json(result)})
            if result.is_final and not opts.continuous_decoding:
                await _send(session, {"status": "ok", "type": "speech_end"})
                await session.close(1000)
                return True
        if delivery.error is not None:
            session.record_error("internal", repr(delivery.error))
            message = failure_message(delivery.error)
            await _send(session, {"status": "failed", "message": message, "code": "internal"})
            await session.close(1011, message)
            return True


async def handle(session: Session) -> None:
    """Run one WeNet-protocol session."""
    session.protocol = "wenet"
    pump: asyncio.Task[bool] | None = None

    async def finish() -> bool:  # finalize and flush; False when the pump already ended the session
        assert session.stream is not None and pump is not None
        await session.finalize()
        session.stream.outbox.put_nowait(_END_OF_OUTBOX)
        return not await pump

    try:
        message = await session.receive()
        if message is None:
            raise ProtocolError("shutting_down", "server is shutting down")
        if isinstance(message, bytes):
            raise ProtocolError("not_started", "Start signal is expected before binary data")
        obj = _parse(message)
        opts = parse_start_signal(obj)
        stream = await session.open_stream(sample_rate=opts.sample_rate)  # the server's default settings
        stream.progress_every = None  # _pump sends results only
        await _send(session, {"status": "ok", "type": "server_ready"})
        pump = asyncio.create_task(_pump(session, stream, opts))
        while True:
            message = await session.receive()
            if message is None or pump.done():
                break
            if isinstance(message, bytes):
                session.accept_audio(message)
                await session.wait_for_room()
                continue
            obj = _parse(message)
            if obj.get("signal") == "end":
                break
            if "signal" not in obj:
                raise ProtocolError("bad_message", "Wrong message header")
            if obj["signal"] == "start":
                raise ProtocolError("already_started", "start signal received twice")
            raise ProtocolError("unknown_type", "Unexpected signal type")
        if not pump.done() and await finish():
            await _send(session, {"status": "ok", "type": "speech_end"})
            await session.close(1001 if session.draining else 1000)
    except ProtocolError as error:
        session.record_error(error.code, error.message)
        try:
            if session.graceful(error) and pump is not None and not pump.done():
                if await finish():
                    await _send(session, {"status": "ok", "type": "speech_end"})
            await _send(session, {"status": "failed", "message": error.message, "code": error.code})
        except ConnectionClosed:
            return
        await session.close(error.close_code, error.message)
    except ConnectionClosed:
        pass
    finally:
        if pump is not None and not pump.done():
            pump.cancel()
        session.release()


def _parse(message: str) -> dict[str, Any]:
    try:
        return parse_json_object(message)
    except ProtocolError as error:
        raise ProtocolError(error.code, f"Wrong protocol: {error.message}") from None
