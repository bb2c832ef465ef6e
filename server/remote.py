"""The model across a process boundary (`asr serve --workers N`): both ends of one connection.

A front process runs the usual protocol handlers against a `RemoteScheduler`, which has the
`Scheduler`'s per-stream API (open, feed, wait_for_room, drain, finalize, close) and keeps the
same `Stream` fields up to date; the model process runs a `ModelService`, which feeds the real
`Scheduler` (the same batching and `process_batch` as in one process) and reports every pass of
every stream back. One `multiprocessing.connection` per front carries lists of small tuples (what
one event-loop turn produced: one pipe write for all the frames a front read at once, or for all
the reports of one model pass); audio travels as float32 bytes, results as (text, is_final,
segment, words) tuples.

    front -> model  ("open", sid, settings) ("feed", sid, float32 bytes) ("drain", sid) ("finalize", sid)
                    ("close", sid)
    model -> front  ("opened", sid, None | (kind, message))
                    ("report", sid, results, processed_samples, finalized, error text | None,
                     (next_block_at, block_samples) | None)
                    ("pass", -1, wall seconds, audio seconds, streams)   (every pass, to every front: metrics)

The front replays the scheduler's bookkeeping from the reports (pending audio, `idle`, `has_room`,
progress deliveries), so the handlers see exactly what they see in one process.

The front also holds audio back as the model's scheduler would (`Scheduler.hold_s`): a report says
at which sample count the stream's next block completes and how many samples each block after it
takes, and the front sends a stream's audio when it reaches that count (one message per block,
not one per 100 ms frame: the model process's event loop shares its GIL with the model loop), when
the hold ends, or at once on drain and finalize. A wrong count only delays audio (by hold_s at
most); the text never depends on how audio is split.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable

import numpy as np

from asr.inference import InferenceConfig

from .config import SAMPLE_RATE
from .limits import ProtocolError
from .recognizer import Result, result_words
from .scheduler import Delivery, ModelUnavailable, Scheduler, Stream, _Work

__all__ = ["RemoteResult", "RemoteScheduler", "ModelService"]

log = logging.getLogger("server")

_LOST = "the model process exited; the server is stopping"
_Packed = tuple[str, bool, int, tuple[tuple[str, float, float], ...]]


@dataclass(frozen=True)
class RemoteWord:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class RemoteResult:
    """A `Result` rebuilt on the front from its tuple."""

    text: str
    is_final: bool
    segment: int
    words: tuple[RemoteWord, ...] = field(default_factory=tuple)


def _pack(result: Result) -> _Packed:
    return (str(result.text), bool(result.is_final), int(result.segment), tuple(result_words(result)))


def _unpack(packed: _Packed) -> RemoteResult:
    text, is_final, segment, words = packed
    return RemoteResult(text, is_final, segment, tuple(RemoteWord(*w) for w in words))


@dataclass
class _Hold:
    """A front's held audio of one stream (see the module docstring)."""

    next_at: int | None = None  # samples fed at which the next block completes; None: send at once
    period: int = 0  # samples per block after it
    parts: list[bytes] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None  # sends the parts when the hold ends

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def update(self, next_block: tuple[int, int] | None) -> None:
        """A report's (next block's sample count, samples per block); the count may already have
        moved past the model's here, for audio sent after the pass it reports."""
        if next_block is None:
            self.next_at = None
        else:
            self.next_at, self.period = max(next_block[0], self.next_at or 0), next_block[1]


class RemoteScheduler:
    """The front's `Scheduler`: the same per-stream API, the model in another process.

    Args:
        conn: the connection to the model process.
        max_pending_samples: `wait_for_room` blocks a stream with more unprocessed audio than this
            (the model process buffers it; this bounds it per stream, as in one process).
        on_lost: called once when the model process is gone (the front then stops).
        on_latency: called with the seconds from the newest audio that a report covers being fed
            to the report with its results (as `Scheduler.on_latency`, measured on the front).
        on_pass: called for every model pass (all fronts' streams) with (wall s, audio s, streams).
        hold_s: hold a stream's audio here until it completes the stream's next block, at most this
            long (see the module docstring; `Scheduler.hold_s`); 0: send every frame at once.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        max_pending_samples: int,
        on_lost: Callable[[], None] | None = None,
        on_latency: Callable[[float], None] | None = None,
        on_pass: Callable[[float, float, int], None] | None = None,
        hold_s: float = 1.0,
    ) -> None:
        self.conn = conn
        self.hold_s = hold_s
        self.max_pending_samples = max_pending_samples
        self.on_lost = on_lost
        self.on_latency = on_latency
        self.on_pass = on_pass
        self.lost = False
        self.passes = 0  # model passes (of every front's streams)
        self.max_batch_seen = 0
        self._ids = itertools.count()
        self._streams: dict[int, Stream] = {}
        self._sid: dict[Stream, int] = {}
        self._fed: dict[int, int] = {}  # samples sent per stream
        self._feeds: dict[int, collections.deque[tuple[int, float]]] = {}  # (samples sent after it, time) per feed
        self._holds: dict[int, _Hold] = {}
        self._opening: dict[int, asyncio.Future[Any]] = {}
        self._out: list[tuple[Any, ...]] = []  # sent at the end of this event-loop turn
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.conn.fileno(), self._readable)

    async def stop(self) -> None:
        if self._loop is not None and not self.conn.closed:
            self._flush()
            self._loop.remove_reader(self.conn.fileno())
            self.conn.close()

    # -- the Scheduler's per-stream API --------------------------------------------------------
    async def open(self, settings: InferenceConfig | None = None) -> Stream:
        """Raises ValueError (bad settings), ProtocolError (`server_busy`; `internal` once the model process is gone)."""
        if self.lost:
            raise ProtocolError("internal", _LOST)
        sid = next(self._ids)
        assert self._loop is not None
        future = self._opening[sid] = self._loop.create_future()
        self._send(("open", sid, settings))
        try:
            refusal = await future
        finally:
            self._opening.pop(sid, None)
        if refusal is not None:
            kind, message = refusal
            if kind == "value":
                raise ValueError(message)
            if kind == "busy":
                raise ProtocolError("server_busy", message)
            raise RuntimeError(message)
        stream = Stream(recognizer=None)  # type: ignore[arg-type] - the recognizer lives in the model process
        self._streams[sid], self._sid[stream], self._fed[sid] = stream, sid, 0
        self._feeds[sid] = collections.deque()
        self._holds[sid] = _Hold()
        return stream

    def feed(self, stream: Stream, samples: np.ndarray) -> None:
        if stream.closed or stream.failed or stream.finalize_requested or samples.size == 0:
            return
        sid = self._sid[stream]
        self._fed[sid] += samples.size
        self._feeds[sid].append((self._fed[sid], time.monotonic()))
        stream.pending_samples += samples.size
        if stream.pending_samples > self.max_pending_samples:
            stream.has_room.clear()
        stream.idle.clear()
        data = np.ascontiguousarray(samples, dtype=np.float32).tobytes()
        hold = self._holds[sid]
        if self.hold_s <= 0 or hold.next_at is None:
            self._send(("feed", sid, data))
            return
        hold.parts.append(data)
        if self._fed[sid] >= hold.next_at:
            self._release(sid)
        elif hold.timer is None:
            assert self._loop is not None
            hold.timer = self._loop.call_later(self.hold_s, self._release, sid, True)

    async def wait_for_room(self, stream: Stream) -> None:
        await stream.has_room.wait()

    async def drain(self, stream: Stream) -> None:
        if not stream.idle.is_set():
            self._release(self._sid[stream])
            self._send(("drain", self._sid[stream]))  # the model process takes held audio now
        await stream.idle.wait()

    async def finalize(self, stream: Stream) -> None:
        if stream.finalized or stream.failed or stream.closed:
            return
        stream.finalize_requested = True
        stream.idle.clear()
        self._release(self._sid[stream])
        self._send(("finalize", self._sid[stream]))
        await stream.idle.wait()  # set once finalized, failed or closed

    def close(self, stream: Stream) -> None:
        sid = self._sid.pop(stream, None)
        stream.closed = True
        stream.pending_samples = 0
        stream.idle.set()
        stream.has_room.set()
        if sid is not None:
            del self._streams[sid], self._fed[sid], self._feeds[sid]
            self._holds.pop(sid).cancel()
            self._send(("close", sid))

    # -- internals ---------------------------------------------------------------------------
    def _release(self, sid: int, ended: bool = False) -> None:
        """Send the audio held for stream ``sid`` as one message; the next block's count moves on.
        ``ended``: the hold ran out, so the model process takes the audio at once (a drain), not
        after a hold of its own."""
        hold = self._holds.get(sid)
        if hold is None:
            return  # closed meanwhile
        hold.cancel()
        if hold.parts:
            self._send(("feed", sid, b"".join(hold.parts)))
            hold.parts.clear()
            if ended:
                self._send(("drain", sid))
        fed = self._fed[sid]
        while hold.next_at is not None and hold.next_at <= fed:
            hold.next_at += hold.period

    def _send(self, message: tuple[Any, ...]) -> None:
        if self.lost or self.conn.closed:
            return
        self._out.append(message)
        if len(self._out) == 1:
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        messages, self._out = self._out, []
        if not messages or self.lost or self.conn.closed:
            return
        try:
            self.conn.send(messages)
        except (OSError, ValueError):  # broken pipe
            self._lose()

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                for message in self.conn.recv():
                    self._on_message(message)
        except (EOFError, OSError):
            self._lose()

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind, sid = message[0], message[1]
        if kind == "pass":
            self.passes += 1
            self.max_batch_seen = max(self.max_batch_seen, message[4])
            if self.on_pass is not None:
                self.on_pass(*message[2:])
            return
        if kind == "opened":
            future = self._opening.get(sid)
            if future is not None and not future.done():
                future.set_result(message[2])
            elif message[2] is None:  # the session went away while its stream opened
                self._send(("close", sid))
            return
        stream = self._streams.get(sid)
        if stream is None:
            return  # closed here meanwhile
        _, _, packed, processed, finalized, error_text, next_block = message
        hold = self._holds[sid]
        hold.update(next_block)
        if hold.next_at is None or self._fed[sid] >= hold.next_at:
            self._release(sid)  # no block to wait for, or the held audio completes it
        fed_at, feeds = None, self._feeds[sid]
        while feeds and feeds[0][0] <= processed:  # the feeds this report covers; the newest one's time
            fed_at = feeds.popleft()[1]
        self._report(stream, self._fed[sid], [_unpack(p) for p in packed], processed, finalized, error_text, fed_at)

    def _report(
        self, stream: Stream, fed: int, results: list[Result], processed: int, finalized: bool, error_text: str | None,
        fed_at: float | None = None,
    ) -> None:
        """One pass of one stream in the model process: what `Scheduler._deliver` does in one."""
        advanced = processed - stream.processed_samples
        stream.processed_samples = processed
        stream.pending_samples = fed - processed
        if stream.pending_samples <= self.max_pending_samples:
            stream.has_room.set()
        if results and fed_at is not None and self.on_latency is not None:
            self.on_latency(time.monotonic() - fed_at)
        stream.finalized = stream.finalized or finalized
        error = RuntimeError(error_text) if error_text is not None else None
        if error is not None:
            stream.failed = True
        every = stream.progress_every
        progress = advanced > 0 and every is not None and processed - stream.delivered_samples >= every
        if results or error is not None or progress:
            stream.outbox.put_nowait(Delivery(results, processed / SAMPLE_RATE, error))
            stream.delivered_samples = processed
        waiting_for_final = stream.finalize_requested and not stream.finalized
        if stream.failed or (stream.pending_samples == 0 and not waiting_for_final):
            stream.idle.set()

    def _lose(self) -> None:
        """The model process is gone: every stream fails with a message that says so."""
        if self.lost:
            return
        self.lost = True
        log.error("front: %s", _LOST)
        if self._loop is not None and not self.conn.closed:
            self._loop.remove_reader(self.conn.fileno())
        for future in self._opening.values():
            if not future.done():
                future.set_exception(ProtocolError("internal", _LOST))
        for hold in self._holds.values():
            hold.cancel()
        for stream in self._streams.values():
            if not (stream.failed or stream.closed):
                stream.failed = True
                stream.outbox.put_nowait(Delivery([], stream.processed_samples / SAMPLE_RATE, ModelUnavailable(_LOST)))
            stream.idle.set()
            stream.has_room.set()
        if self.on_lost is not None:
            self.on_lost()


class _Front:
    """The model process's end of one front's connection; a thread sends, so that a front that
    reads slowly never blocks the model's event loop (and two full pipes can never deadlock).
    What one event-loop turn sends (every report of a pass) goes as one list."""

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.streams: dict[int, Stream] = {}
        self.gone = False
        self._loop = loop
        self._batch: list[tuple[Any, ...]] = []
        self._out: queue.SimpleQueue[list[tuple[Any, ...]] | None] = queue.SimpleQueue()
        threading.Thread(target=self._sender, daemon=True, name="asr-front-send").start()

    def send(self, message: tuple[Any, ...]) -> None:
        if self.gone:
            return
        self._batch.append(message)
        if len(self._batch) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch and not self.gone:
            self._out.put(batch)

    def _sender(self) -> None:
        while (message := self._out.get()) is not None:
            try:
                self.conn.send(message)
            except (OSError, ValueError):
                break
        self.conn.close()

    def stop(self) -> None:
        self._out.put(None)


def _next_block(stream: Stream) -> tuple[int, int] | None:
    """(sample count at which the stream's next block completes, samples per block after it), from
    a recognizer with `samples_until_block` and `block_samples`; None: no blocks to wait for."""
    rec = stream.recognizer
    until = getattr(rec, "samples_until_block", None)
    needed = until() if until is not None and not stream.finalized else None
    period = getattr(rec, "block_samples", None)
    if needed is None or not period:
        return None
    return stream.processed_samples + needed, int(period)


class _ReportingScheduler(Scheduler):
    """The model process's `Scheduler`: each pass of each stream is reported to its front."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owners: dict[Stream, tuple[_Front, int]] = {}

    def _deliver(
        self, w: _Work, results: list[Result], error: BaseException | None, since: float | None, now: float
    ) -> None:
        super()._deliver(w, results, error, since, now)
        w.stream.take_outbox()  # nobody reads it here: the report carries the same
        owner = self.owners.get(w.stream)
        if owner is not None and not w.stream.closed:
            front, sid = owner
            error_text = None if error is None else repr(error)
            front.send(("report", sid, [_pack(r) for r in results], w.stream.processed_samples, w.stream.finalized,
                        error_text, _next_block(w.stream)))


class ModelService:
    """The model process's event-loop side: serves every front's connection with one scheduler.

    Args:
        factory: the recognizer factory (loaded in this process).
        max_sessions: open streams across all fronts at most (each front also enforces it on its own).
        scheduler_kwargs: `Scheduler` arguments (max_batch, max_chunk_samples, pass_interval_s).
    """

    def __init__(self, factory: Any, *, max_sessions: int, **scheduler_kwargs: Any) -> None:
        # the fronts bound pending audio per stream; here nothing waits on `has_room`
        self.scheduler = _ReportingScheduler(factory, max_pending_samples=2**62, on_pass=self._on_pass,
                                             **scheduler_kwargs)
        self.max_sessions = max_sessions
        self.fronts: list[_Front] = []
        self._opening = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def sessions(self) -> int:
        """Streams open or opening, across all fronts."""
        return sum(len(f.streams) for f in self.fronts) + self._opening

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.scheduler.start()

    def _on_pass(self, wall_s: float, audio_s: float, streams: int) -> None:
        for front in self.fronts:  # each front's /metrics shows the model's passes
            front.send(("pass", -1, wall_s, audio_s, streams))

    async def stop(self) -> None:
        for front in list(self.fronts):
            self._drop(front)
        await self.scheduler.stop()

    def add(self, conn: Connection) -> None:
        """Serve a new front's connection (event loop)."""
        assert self._loop is not None
        front = _Front(conn, self._loop)
        self.fronts.append(front)
        self._loop.add_reader(conn.fileno(), self._readable, front)

    def _readable(self, front: _Front) -> None:
        try:
            while not front.gone and front.conn.poll():
                for message in front.conn.recv():
                    if not front.gone:
                        self._on_message(front, message)
        except (EOFError, OSError):
            (log.warning if front.streams else log.info)("a front process went away; closing its %d stream(s)",
                                                         len(front.streams))
            self._drop(front)

    def _drop(self, front: _Front) -> None:
        if front.gone:
            return
        front.gone = True
        assert self._loop is not None
        self._loop.remove_reader(front.conn.fileno())
        for stream in front.streams.values():
            self._close(stream)
        front.streams.clear()
        front.stop()
        self.fronts.remove(front)

    def _close(self, stream: Stream) -> None:
        self.scheduler.close(stream)
        self.scheduler.owners.pop(stream, None)

    def _on_message(self, front: _Front, message: tuple[Any, ...]) -> None:
        kind, sid = message[0], message[1]
        if kind == "open":
            asyncio.ensure_future(self._open(front, sid, message[2]))
            return
        stream = front.streams.get(sid)
        if stream is None:
            return
        if kind == "feed":
            self.scheduler.feed(stream, np.frombuffer(message[2], dtype=np.float32).copy())
        elif kind == "finalize":
            asyncio.ensure_future(self.scheduler.finalize(stream))
        elif kind == "drain":
            asyncio.ensure_future(self.scheduler.drain(stream))
        elif kind == "close":
            del front.streams[sid]
            self._close(stream)

    async def _open(self, front: _Front, sid: int, settings: InferenceConfig | None) -> None:
        if self.sessions >= self.max_sessions:
            front.send(("opened", sid, ("busy", f"all {self.max_sessions} session slots are in use; try again later")))
            return
        self._opening += 1
        try:
            stream = await self.scheduler.open(settings)
        except ValueError as exc:  # SettingsError too: the client's bad_option
            front.send(("opened", sid, ("value", str(exc))))
            return
        except Exception as exc:  # noqa: BLE001 - the front turns it into an internal error
            log.exception("model: opening a stream failed")
            front.send(("opened", sid, ("error", repr(exc))))
            return
        finally:
            self._opening -= 1
        if front.gone:
            self.scheduler.close(stream)
            return
        front.streams[sid] = stream
        self.scheduler.owners[stream] = (front, sid)
        front.send(("opened", sid, None))
