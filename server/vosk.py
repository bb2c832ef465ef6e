"""The Vosk server protocol on `/vosk`, as alphacep/vosk-server `websocket/asr_server.py` speaks it.

- An optional text message containing `config`: `{"config": {"sample_rate": 16000, "words": true,
  "max_alternatives": 0, "phrase_list": [...]}}`; no reply (like vosk-server). Any rate from 4 to
  192 kHz is accepted and resampled to the model's (as vosk-server does).
- Each binary s16le message gets exactly one reply: `{"result": [{"conf", "end", "start", "word"}],
  "text": "..."}` when an utterance ended in that chunk, otherwise `{"partial": "..."}`.
- `{"eof" : 1}` gets the final result of the last utterance, then the server closes.

With `max_alternatives > 0` results take Vosk's form `{"alternatives": [{"confidence", "result",
"text"}]}` (one alternative: the recognizer has no n-best). Errors (our extension; vosk-server
has none) are `{"error": message, "code": code}` followed by a close.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed

from .config import SAMPLE_RATE
from .limits import ProtocolError, parse_json_object, parse_sample_rate
from .recognizer import Result, result_words
from .scheduler import failure_message
from .session import Session

__all__ = ["VoskOptions", "is_vosk_first_message", "parse_config", "result_reply", "handle"]

_EOF = '{"eof" : 1}'


@dataclass(frozen=True)
class VoskOptions:
    words: bool = True
    max_alternatives: int = 0
    sample_rate: int = SAMPLE_RATE


def is_vosk_first_message(obj: dict[str, Any]) -> bool:
    return "config" in obj or "eof" in obj


def parse_config(obj: dict[str, Any], opts: VoskOptions) -> VoskOptions:
    config = obj.get("config")
    if not isinstance(config, dict):
        raise ProtocolError("bad_message", f"\"config\" must be an object, got {config!r}")
    rate = parse_sample_rate(config["sample_rate"]) if "sample_rate" in config else opts.sample_rate
    words = config.get("words", opts.words)
    alternatives = config.get("max_alternatives", opts.max_alternatives)
    if isinstance(alternatives, bool) or not isinstance(alternatives, int) or alternatives < 0:
        raise ProtocolError("bad_option", f"max_alternatives must be an integer >= 0, got {alternatives!r}")
    return VoskOptions(words=bool(words), max_alternatives=alternatives, sample_rate=rate)


def result_reply(finals: list[Result], opts: VoskOptions) -> dict[str, Any]:
    """One Vosk result for the finals of one chunk (normally one; several are joined)."""
    text = " ".join(r.text for r in finals if r.text)
    words = [
        {"conf": 1.0, "end": round(e, 3), "start": round(s, 3), "word": w} for r in finals for w, s, e in result_words(r)
    ]
    if opts.max_alternatives > 0:
        alt: dict[str, Any] = {"confidence": 1.0, "text": text}
        if opts.words:
            alt["result"] = [{"end": w["end"], "start": w["start"], "word": w["word"]} for w in words]
        return {"alternatives": [alt]}
    reply: dict[str, Any] = {}
    if opts.words and words:
        reply["result"] = words
    reply["text"] = text
    return reply


def _reply_for(results: list[Result], opts: VoskOptions, last_partial: str) -> tuple[dict[str, Any], str]:
    finals = [r for r in results if r.is_final]
    if finals:  # a partial of the next utterance will be reported with the next chunk
        return result_reply(finals, opts), ""
    partials = [r for r in results if not r.is_final]
    text = partials[-1].text if partials else last_partial
    return {"partial": text}, text


async def _collect(session: Session) -> list[Result]:
    assert session.stream is not None
    results: list[Result] = []
    for delivery in session.stream.take_outbox():
        results += delivery.results
        if delivery.error is not None:
            raise ProtocolError("internal", failure_message(delivery.error))
    return results


async def handle(session: Session) -> None:
    """Run one Vosk-protocol session: reply to each message in turn."""
    session.protocol = "vosk"
    opts = VoskOptions()
    last_partial = ""
    try:
        while True:
            message = await session.receive()
            if message is None:  # draining: answer as if the client had sent eof
                message = _EOF
            if isinstance(message, str):
                obj = parse_json_object(message)
                if "config" in obj:
                    if session.stream is not None:
                        raise ProtocolError("already_started", "config must come before the audio")
                    opts = parse_config(obj, opts)
                    continue
                if obj.get("eof") is None:
                    raise ProtocolError(
                        "unknown_type", "text messages must be {\"config\": {...}} or {\"eof\" : 1}; audio is binary"
                    )
            if session.stream is None:
                stream = await session.open_stream(sample_rate=opts.sample_rate)  # the server's default settings
                stream.progress_every = None  # _collect takes results only
            if isinstance(message, bytes):
                session.accept_audio(message)
                await session.drain()
                reply, last_partial = _reply_for(await _collect(session), opts, last_partial)
                await session.ws.send(json.dumps(reply, ensure_ascii=False))
                continue
            await session.finalize()  # eof
            finals = [r for r in await _collect(session) if r.is_final]
            await session.ws.send(json.dumps(result_reply(finals, opts), ensure_ascii=False))
            await session.close(1001 if session.draining else 1000)
            return
    except ProtocolError as error:
        session.record_error(error.code, error.message)
        try:
            if session.graceful(error):
                await session.finalize()
                finals = [r for r in await _collect(session) if r.is_final]
                await session.ws.send(json.dumps(result_reply(finals, opts), ensure_ascii=False))
            await session.ws.send(json.dumps({"error": error.message, "code": error.code}))
        except (ConnectionClosed, ProtocolError):
            return
        await session.close(error.close_code, error.message)
    except ConnectionClosed:
        pass
    finally:
        session.release()
