"""What every protocol handler shares: receiving with start deadline, idle timeout and drain,
session slots, audio limits, streams."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from websockets.asyncio.server import ServerConnection

from asr.inference import SettingsError

from .admission import Admission
from .config import SAMPLE_RATE, ServerConfig
from .limits import ProtocolError, decode_pcm
from .metrics import Metrics
from .scheduler import Scheduler, Stream

if TYPE_CHECKING:
    from asr.audio import StreamResampler

__all__ = ["Context", "Session", "Message"]

log = logging.getLogger("server")

Message = str | bytes


@dataclass(eq=False)
class Context:
    """Server-wide state handed to every session.

    `sleep` is what the start deadline and the idle timeout wait with (`asyncio.sleep`; tests give
    a fake clock so that timeouts fire when the test says, not after real seconds).
    """

    config: ServerConfig
    scheduler: Scheduler
    metrics: Metrics
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.monotonic)
    admission: Admission | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def __post_init__(self) -> None:
        if self.admission is None:
            c = self.config
            self.admission = Admission(c.max_sessions, c.max_waiting, c.max_waiting_per_address)


class Session:
    """One WebSocket connection: its stream, its audio count, its limits.

    `receive()` returns the next message, or None once the server drains (SIGTERM): the handler
    then finalizes as if the client had ended the stream.
    """

    def __init__(self, ws: ServerConnection, ctx: Context) -> None:
        self.ws = ws
        self.ctx = ctx
        self.stream: Stream | None = None
        self.num_samples = 0  # input samples received, at the client's rate
        self.sample_rate = SAMPLE_RATE  # the client's rate (set when the stream opens)
        self.protocol = "native"  # set by the protocol handler (metrics)
        self._resampler: StreamResampler | None = None
        self.started = False  # holds a session slot (from its start until release)
        self.address = _address(ws)
        self._unread: list[Message] = []
        self._drain_task: asyncio.Task[bool] | None = None
        self._receiving: asyncio.Task[Any] | None = None  # the task inside `receive`, awaiting a message
        self._interrupt: str | None = None  # why `_interrupt_receive` cancelled it
        self._receive_round = 0  # counts the `receive` calls that wait
        self._released = False
        self._start_deadline: asyncio.Future[None] = asyncio.ensure_future(ctx.sleep(ctx.config.start_timeout_s))
        assert ctx.admission is not None
        ctx.admission.arrive(self)
        ctx.metrics.waiting = ctx.admission.waiting

    @property
    def draining(self) -> bool:
        return self.ctx.draining.is_set()

    def unread(self, message: Message) -> None:
        """Push `message` back; the next `receive()` returns it (protocol auto-detection)."""
        self._unread.append(message)

    async def receive(self) -> Message | None:
        """Next message, None when the server is draining.

        Raises:
            ProtocolError: `start_timeout` when the stream has not started `start_timeout_s` after
                connecting; `idle_timeout` after `idle_timeout_s` without a message.
            websockets.ConnectionClosed: the client went away.
        """
        if self._unread:
            return self._unread.pop()
        if self.draining:
            return None
        if not self.started and self._start_deadline.done() and not self._start_deadline.cancelled():
            raise self._timeout("start")
        if _buffered_message(self.ws):  # no timeout can fire before a message that is already here
            return await self.ws.recv()
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self.ctx.draining.wait())
            self._drain_task.add_done_callback(lambda _: self._interrupt_receive("drain"))
            self._start_deadline.add_done_callback(lambda f: f.cancelled() or self._interrupt_receive("start"))
        # Await the message in this task; the idle sleep, the start deadline and the drain cancel
        # it (`_interrupt_receive`). One future per message, not a task for recv plus asyncio.wait:
        # this runs for every audio frame of every stream.
        self._receive_round += 1
        this_round = self._receive_round
        idle = asyncio.ensure_future(self.ctx.sleep(self.ctx.config.idle_timeout_s))
        idle.add_done_callback(lambda f: f.cancelled() or self._interrupt_receive("idle", this_round))
        self._receiving = asyncio.current_task()
        try:
            return await self.ws.recv()  # cancelling it is safe in websockets: a message is never half-consumed
        except asyncio.CancelledError:
            reason, self._interrupt = self._interrupt, None
            if reason is None or _uncancel(self._receiving) > 0:
                raise  # cancelled from outside (too)
            if reason == "drain":
                return None
            raise self._timeout(reason) from None
        finally:
            self._receiving = None
            self._interrupt = None
            idle.cancel()

    def _interrupt_receive(self, reason: str, round_: int | None = None) -> None:
        """Cancel the `receive` in progress, saying why (`drain`, `start`, `idle`); an idle sleep
        of an earlier `receive` (`round_`) or a start deadline after the start does nothing."""
        if self._receiving is None or self._interrupt is not None:
            return
        if (round_ is not None and round_ != self._receive_round) or (reason == "start" and self.started):
            return
        self._interrupt = reason
        self._receiving.cancel()

    def _timeout(self, reason: str) -> ProtocolError:
        if reason == "start":
            limit = self.ctx.config.start_timeout_s
            return ProtocolError("start_timeout", f"no stream started within {limit:g} s of connecting")
        return ProtocolError("idle_timeout", f"no message for {self.ctx.config.idle_timeout_s:g} s")

    def _take_slot(self) -> None:
        """The stream starts: leave the waiting connections, take a session slot (or `server_busy`)."""
        if self.started:
            return
        assert self.ctx.admission is not None
        self.ctx.admission.start(self)
        self.started = True
        self._start_deadline.cancel()
        self.ctx.metrics.session_opened(self.protocol)
        self.ctx.metrics.waiting = self.ctx.admission.waiting

    def evict(self) -> None:
        """Close this waiting connection to make room for newer ones (called by `Admission`)."""
        self.record_error("too_many_waiting", "closed: too many connections waiting to start a stream")
        asyncio.ensure_future(self.close(1013, "too many connections waiting to start a stream; try again"))

    async def open_stream(self, overrides: Mapping[str, Any] | None = None, sample_rate: int = SAMPLE_RATE) -> Stream:
        """Open the stream with the server's inference settings, ``overrides`` (a start message's
        session fields) applied; a bad value is a `bad_option` error naming the field. Audio at
        another ``sample_rate`` is resampled to the model's as ``asr transcribe`` resamples a file."""
        self._take_slot()
        self.sample_rate = sample_rate
        self._resampler = None
        if sample_rate != SAMPLE_RATE:
            from asr.audio import StreamResampler  # torch: a front process (--workers) loads it only when needed

            self._resampler = StreamResampler(sample_rate, SAMPLE_RATE)
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
        if limit is not None and (self.num_samples + samples.size) > limit * self.sample_rate:
            raise ProtocolError("session_too_long", f"session exceeds the limit of {limit:g} s of audio")
        self.num_samples += samples.size
        self.ctx.metrics.add_audio(samples.size, self.sample_rate)
        if self._resampler is not None:
            samples = self._resampler.accept(samples)
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
            if self._resampler is not None:
                self.ctx.scheduler.feed(self.stream, self._resampler.flush())
            began = time.monotonic()
            await self.ctx.scheduler.finalize(self.stream)
            if self.stream.finalized:
                self.ctx.metrics.final_latency.observe(time.monotonic() - began)

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
        """Called when the handler exits, whatever happened (again: no effect)."""
        if self._released:
            return
        self._released = True
        self._start_deadline.cancel()
        if self._drain_task is not None:
            self._drain_task.cancel()
        if self.stream is not None:
            self.ctx.scheduler.close(self.stream)
        assert self.ctx.admission is not None
        self.ctx.admission.leave(self, self.started)
        if self.started:
            self.ctx.metrics.session_closed()
        self.ctx.metrics.waiting = self.ctx.admission.waiting


def _uncancel(task: asyncio.Task[Any]) -> int:
    """`task.uncancel()`: the cancel requests left (Python 3.10 has no count: 0)."""
    uncancel = getattr(task, "uncancel", None)
    return uncancel() if uncancel is not None else 0


def _buffered_message(ws: ServerConnection) -> bool:
    """True when a complete message is buffered, so that `ws.recv()` returns it without waiting.

    Reads websockets' incoming frame queue (`Connection.recv_messages.frames`); should that
    internal change, this says False and `receive` takes its general path."""
    frames = getattr(getattr(getattr(ws, "recv_messages", None), "frames", None), "queue", None)
    if not frames:
        return False
    try:
        return any(frame.fin for frame in frames)
    except AttributeError:
        return False


def _address(ws: ServerConnection) -> str:
    """The client's IP address (the per-address limit's key)."""
    try:
        peer = ws.remote_address
    except Exception:  # noqa: BLE001 - a transport without a peer name
        return "?"
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
