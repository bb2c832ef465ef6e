"""What every protocol handler shares: receiving with idle timeout and drain, audio limits, streams."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from websockets.asyncio.server import ServerConnection

from asr.inference import SettingsError

from .config import SAMPLE_RATE, ServerConfig
from .limits import ProtocolError, decode_pcm
from .metrics import Metrics
from .scheduler import Scheduler, Stream

__all__ = ["Context", "Session", "Message"]

log = logging.getLogger("server")

Message = str | bytes


@dataclass(eq=False)
class Context:
    """Server-wide state handed to every session."""

    config: ServerConfig
    scheduler: Scheduler
    metrics: Metrics
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.monotonic)


class Session:
    """One WebSocket connection: its stream, its audio count, its limits.

    `receive()` returns the next message, or None once the server drains (SIGTERM): the handler
    then finalizes as if the client had ended the stream.
    """

    def __init__(self, ws: ServerConnection, ctx: Context) -> None:
        self.ws = ws
        self.ctx = ctx
        self.stream: Stream | None = None
        self.num_samples = 0
        self._unread: list[Message] = []
        self._drain_task: asyncio.Task[bool] | None = None

    @property
    def draining(self) -> bool:
        return self.ctx.draining.is_set()

    def unread(self, message: Message) -> None:
        """Push `message` back; the next `receive()` returns it (protocol auto-detection)."""
        self._unread.append(message)

    async def receive(self) -> Message | None:
        """Next message, None when the server is draining.

        Raises:
            ProtocolError: `idle_timeout` after `idle_timeout_s` without a message.
            websockets.ConnectionClosed: the client went away.
        """
        if self._unread:
            return self._unread.pop()
        if self.draining:
            return None
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self.ctx.draining.wait())
        recv = asyncio.ensure_future(self.ws.recv())
        done, _ = await asyncio.wait(
            {recv, self._drain_task}, timeout=self.ctx.config.idle_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if recv in done:
            return recv.result()
        recv.cancel()  # safe in websockets: a message is never half-consumed
        try:
            await recv
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - we are leaving anyway
            pass
        if self._drain_task in done:
            return None
        raise ProtocolError("idle_timeout", f"no message for {self.ctx.config.idle_timeout_s:g} s")

    async def open_stream(self, overrides: Mapping[str, Any] | None = None) -> Stream:
        """Open the stream with the server's inference settings, ``overrides`` (a start message's
        session fields) applied; a bad value is a `bad_option` error naming the field."""
        try:
            settings = self.ctx.config.inference.override(overrides or {})
            self.stream = await self.ctx.scheduler.open(settings)
        except (SettingsError, ValueError) as exc:
            raise ProtocolError("bad_option", str(exc)) from None
        return self.stream

    def accept_audio(self, data: bytes) -> None:
        """Decode one binary frame, enforce the limits, queue it for the model."""
        assert self.stream is not None
        samples = decode_pcm(data, self.ctx.config.max_frame_bytes)
        limit = self.ctx.config.max_session_s
        if limit is not None and (self.num_samples + samples.size) > limit * SAMPLE_RATE:
            raise ProtocolError("session_too_long", f"session exceeds the limit of {limit:g} s of audio")
        self.num_samples += samples.size
        self.ctx.metrics.add_audio(samples.size, SAMPLE_RATE)
        self.ctx.scheduler.feed(self.stream, samples)

    async def wait_for_room(self) -> None:
        if self.stream is not None:
            await self.ctx.scheduler.wait_for_room(self.stream)

    async def drain(self) -> None:
        """Wait until all audio fed so far has been processed (results are in the outbox)."""
        if self.stream is not None:
            await self.ctx.scheduler.drain(self.stream)

    async def finalize(self) -> None:
        """Process everything fed, then the recognizer's finalize (results go to the outbox)."""
        if self.stream is not None:
            await self.ctx.scheduler.finalize(self.stream)

    def graceful(self, error: ProtocolError) -> bool:
        """Errors after which the text so far is still worth sending (limits, not malformed input)."""
        return self.stream is not None and error.code in ("idle_timeout", "session_too_long")

    def record_error(self, code: str, message: str) -> None:
        self.ctx.metrics.error(code)
        log.info("session %s: %s: %s", self.ws.id, code, message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await self.ws.close(code, reason[:120])
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass

    def release(self) -> None:
        """Called once when the handler exits, whatever happened."""
        if self._drain_task is not None:
            self._drain_task.cancel()
        if self.stream is not None:
            self.ctx.scheduler.close(self.stream)
