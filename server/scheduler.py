"""One model, many streams: a single worker thread batches the ready audio of all sessions.

Sessions `feed` audio (non-blocking); the scheduler task collects the streams that have work,
runs them in one call on the model thread (`factory.process_batch` when offered, else one after
another), and puts each stream's results into its `outbox`. A stream is in at most one pass at a
time, so its audio is processed in order; audio that arrives during a pass joins the next one.

A stream whose pending audio does not yet complete its next block (the recognizer's optional
`samples_until_block()`) is held out of the passes, for at most `hold_s`: such audio gives no
result, and taking every stream into every pass costs per-stream work for nothing (clients send
100 ms frames; a 640 ms block needs six or seven). A stream is taken as soon as its block is
complete, so no result comes later for it; `drain` and `finalize` take held audio at once.

    session --feed--> Stream.pending --scheduler pass (model thread)--> Stream.outbox --> session
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from asr.inference import InferenceConfig

from .config import SAMPLE_RATE
from .recognizer import Recognizer, RecognizerFactory, Result, process_sequential

__all__ = ["Delivery", "ModelUnavailable", "Stream", "Scheduler", "failure_message", "freeze_loaded_objects", "warm_up"]

log = logging.getLogger("server")



# The collector's thresholds in a serving process (Python's default: 700, 10, 10). A pass over a
# thousand streams allocates hundreds of thousands of objects, and each collection of the older
# generations walks every session's live state with the GIL held, the model loop stopped. One H200,
# SAR, 2048 streams (server_load, --workers 4): the collector was 10.9 % of the passes over 0.5 s
# with the default, 2.1 % with these (benchmarks/results/server_load_cuda.md, session 17).
COLLECTOR_THRESHOLDS = (50_000, 20, 20)


def freeze_loaded_objects() -> None:
    """Call once the model is loaded, before the first session: every object alive then (the
    model's modules and tensors, the imported modules: ~200k) moves to the collector's permanent
    generation, so its full collections no longer walk them. They pause the model loop with the
    GIL held, and its passes make garbage fast: at 1024 SAR streams (tiny model, 9 passes, CPU),
    full collections took 0.46 s in all, the longest 90 ms; with this, 0.05 s and 17 ms. Then the
    collector runs less often (:data:`COLLECTOR_THRESHOLDS`): cycles are still collected, later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def warm_up(factory, streams: int) -> None:
    """``factory.warm_up(streams)`` when the factory has one (`streaming.RecognizerFactory`; the
    synthetic factories of tests and benchmarks do not), logged with the time it took."""
    if streams > 0 and hasattr(factory, "warm_up"):
        log.info("model warm-up: %d streams in %.2f s", streams, factory.warm_up(streams))


SLOW_PASS_S = 0.5  # a model pass longer than this is logged (warning), with where its time went


class _CollectorClock:
    """Seconds the cyclic garbage collector has run in this process (``gc.callbacks``): every
    thread stops while it runs, the model loop included."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self._began = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.total_s += time.perf_counter() - self._began


_collector: _CollectorClock | None = None


def _collector_clock() -> _CollectorClock:
    global _collector
    if _collector is None:
        _collector = _CollectorClock()
    return _collector


BatchFn = Callable[[list[tuple[Recognizer, np.ndarray]]], list[list[Result]]]
FinalizeFn = Callable[[list[Recognizer]], list[list[Result]]]


class ModelUnavailable(RuntimeError):
    """The model process is gone (`asr serve --workers N`): every open session fails with this
    message instead of the generic "recognizer failed"."""


def failure_message(error: BaseException) -> str:
    """What a client is told when its stream failed with `error`."""
    return str(error) if isinstance(error, ModelUnavailable) else "recognizer failed"


@dataclass(frozen=True)
class Delivery:
    """What one scheduler pass produced for one stream.

    Args:
        results: partials and finals, in order.
        audio_s: seconds of audio processed for this stream so far (after this pass).
        error: the recognizer raised; the stream is dead.
    """

    results: list[Result]
    audio_s: float
    error: BaseException | None = None


@dataclass(eq=False)
class Stream:
    """Scheduler-side state of one session. Fields are touched on the event loop only."""

    recognizer: Recognizer
    outbox: asyncio.Queue[Delivery] = field(default_factory=asyncio.Queue)
    pending: deque[np.ndarray] = field(default_factory=deque)
    pending_samples: int = 0
    pending_since: float | None = None  # monotonic time the oldest pending audio arrived
    fed_at: float | None = None  # monotonic time the newest audio arrived
    processed_samples: int = 0
    # A pass that produced no results (nor an error) puts a progress-only delivery into the outbox
    # once this many samples were processed since the last delivery put (0: after every pass;
    # None: never): the native protocol's acks need one per second of audio, not one per frame.
    progress_every: int | None = 0
    delivered_samples: int = 0  # processed_samples when the last delivery was put
    busy: bool = False
    closed: bool = False
    failed: bool = False
    finalize_requested: bool = False
    drain_requested: bool = False  # take held audio now (see Scheduler.hold_s)
    finalized: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set: nothing pending, not busy
    has_room: asyncio.Event = field(default_factory=asyncio.Event)  # set: pending below the cap

    def __post_init__(self) -> None:
        self.idle.set()
        self.has_room.set()

    def take_outbox(self) -> list[Delivery]:
        """All deliveries waiting in the outbox, without blocking."""
        items = []
        while not self.outbox.empty():
            items.append(self.outbox.get_nowait())
        return items


@dataclass(frozen=True)
class _Work:
    stream: Stream
    samples: np.ndarray | None  # (n,) float32, None: no audio this pass
    finalize: bool


class Scheduler:
    """Runs every recognizer call on one worker thread, batching across sessions.

    Args:
        factory: makes recognizers; its optional `process_batch` is the batching hook, its optional
            `finalize_batch` the one for the streams that end in the same pass.
        max_batch: most streams in one pass.
        max_chunk_samples: most samples of one stream per pass.
        max_pending_samples: `wait_for_room` blocks a stream with more buffered audio than this.
        on_latency: called with the seconds from the arrival of the newest audio a pass took for a
            stream to that pass's results being delivered (feeds the partial-latency histogram; the
            client measures the same, from the last audio the server reports as processed).
        on_pass: called after each pass with (wall seconds, audio seconds processed, streams).
        pass_interval_s: passes start at most this often: after a pass, the next one waits for the
            rest of the interval, so that the audio other streams send meanwhile joins it. Fewer,
            fuller passes: the model batches streams whose blocks complete at about the same time
            (on 2 CPU cores, 8 SAR streams cost about half as much in one pass as one by one), for
            at most this much added latency. 0: a pass as soon as a stream has audio.
        hold_s: a stream whose pending audio completes no block waits out of the passes for more,
            at most this long since its oldest pending audio arrived (see the module docstring);
            0: never held. Recognizers without `samples_until_block` are never held.
        sleep: what the interval waits with (tests give a fake clock).
    """

    def __init__(
        self,
        factory: RecognizerFactory,
        *,
        max_batch: int = 32,
        max_chunk_samples: int = 32000,
        max_pending_samples: int = 160000,
        on_latency: Callable[[float], None] | None = None,
        on_pass: Callable[[float, float, int], None] | None = None,
        pass_interval_s: float = 0.0,
        hold_s: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.factory = factory
        self.max_batch = max_batch
        self.max_chunk_samples = max_chunk_samples
        self.max_pending_samples = max_pending_samples
        self.on_latency = on_latency
        self.on_pass = on_pass
        self.pass_interval_s = pass_interval_s
        self.hold_s = hold_s
        self._sleep = sleep
        self._batch_fn: BatchFn = getattr(factory, "process_batch", None) or process_sequential
        self._finalize_fn: FinalizeFn | None = getattr(factory, "finalize_batch", None)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-model")
        self._ready: dict[Stream, None] = {}  # insertion-ordered set: FIFO fairness
        self._held: dict[Stream, float] = {}  # held streams -> when the hold ends (monotonic)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # scheduler passes run (for tests/benchmarks)
        self.max_batch_seen = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="asr-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=True)

    # -- per-stream API (event loop) ---------------------------------------------------------
    async def open(self, settings: InferenceConfig | None = None) -> Stream:
        """A new stream with these settings (None: the factory's defaults); the recognizer is built
        on the model thread. Raises what the factory raises."""
        loop = asyncio.get_running_loop()
        rec = await loop.run_in_executor(self._executor, lambda: self.factory(settings))
        return Stream(recognizer=rec)

    def feed(self, stream: Stream, samples: np.ndarray) -> None:
        """Queue (n,) float32 audio for `stream`; returns at once."""
        if stream.closed or stream.failed or stream.finalize_requested or samples.size == 0:
            return
        stream.pending.append(samples)
        stream.pending_samples += samples.size
        stream.fed_at = time.monotonic()
        if stream.pending_since is None:
            stream.pending_since = stream.fed_at
        if stream.pending_samples > self.max_pending_samples:
            stream.has_room.clear()
        self._mark_ready(stream)

    async def wait_for_room(self, stream: Stream) -> None:
        """Wait while `stream` has more buffered audio than `max_pending_samples`."""
        await stream.has_room.wait()

    async def drain(self, stream: Stream) -> None:
        """Wait until all audio fed so far has been processed (results are in the outbox), held
        audio included."""
        if stream.idle.is_set():
            return
        stream.drain_requested = True
        if stream in self._held:
            self._mark_ready(stream)
        await stream.idle.wait()

    async def finalize(self, stream: Stream) -> None:
        """Process all fed audio, then `recognizer.finalize()`; results land in the outbox."""
        if stream.finalized or stream.failed or stream.closed:
            return
        stream.finalize_requested = True
        self._mark_ready(stream)
        while not (stream.finalized or stream.failed or stream.closed):
            await stream.idle.wait()
            if not (stream.finalized or stream.failed or stream.closed):
                stream.idle.clear()  # the finalize pass is queued; wait for it
                self._mark_ready(stream)

    def close(self, stream: Stream) -> None:
        """Forget `stream` (client gone); an in-flight pass finishes and its results are dropped."""
        stream.closed = True
        stream.pending.clear()
        stream.pending_samples = 0
        self._ready.pop(stream, None)
        self._held.pop(stream, None)
        stream.idle.set()
        stream.has_room.set()

    # -- internals ---------------------------------------------------------------------------
    def _mark_ready(self, stream: Stream) -> None:
        stream.idle.clear()
        self._held.pop(stream, None)  # looked at again in the next pass
        if not stream.busy:
            self._ready[stream] = None
        self._wake.set()

    def _hold_until(self, stream: Stream) -> float | None:
        """When the hold of ``stream`` ends, if its pending audio completes no block and nothing
        asks for it now; None: take it into this pass."""
        if self.hold_s <= 0 or stream.finalize_requested or stream.drain_requested or stream.pending_since is None:
            return None
        until_block = getattr(stream.recognizer, "samples_until_block", None)
        needed = until_block() if until_block is not None else None
        if needed is None or stream.pending_samples >= needed:
            return None
        end = stream.pending_since + self.hold_s
        return end if end > time.monotonic() else None

    def _release_held(self) -> None:
        """Held streams whose hold has ended join the ready ones."""
        now = time.monotonic()
        for stream in [s for s, end in self._held.items() if end <= now]:
            del self._held[stream]
            self._ready[stream] = None

    def _take_batch(self) -> list[_Work]:
        self._release_held()
        work = []
        for stream in list(self._ready):
            if len(work) == self.max_batch:
                break
            del self._ready[stream]
            end = self._hold_until(stream)
            if end is not None:
                self._held[stream] = end
                continue
            samples = self._take_chunk(stream)
            finalize = stream.finalize_requested and not stream.pending and not stream.finalized
            if samples is None and not finalize:
                self._settle(stream)
                continue
            stream.busy = True
            work.append(_Work(stream, samples, finalize))
        return work

    def _take_chunk(self, stream: Stream) -> np.ndarray | None:
        parts, n = [], 0
        while stream.pending and n < self.max_chunk_samples:
            part = stream.pending.popleft()
            room = self.max_chunk_samples - n
            if part.size > room:
                stream.pending.appendleft(part[room:])
                part = part[:room]
            parts.append(part)
            n += part.size
        if not parts:
            return None
        stream.pending_samples -= n
        if stream.pending_samples <= self.max_pending_samples:
            stream.has_room.set()
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _settle(self, stream: Stream) -> None:
        """After a pass: requeue the stream if it has more work, else mark it idle."""
        stream.busy = False
        more = stream.pending or (stream.finalize_requested and not stream.finalized)
        if stream.closed or stream.failed or not more:
            stream.drain_requested = False
            stream.idle.set()
        else:
            self._ready[stream] = None
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_start = -float("inf")
        while True:
            if self._held:  # wake up when the first hold ends, if no audio comes before
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, min(self._held.values()) - time.monotonic()))
                self._release_held()
            else:
                await self._wake.wait()
            self._wake.clear()
            while self._ready:
                rest = last_start + self.pass_interval_s - time.monotonic()
                if rest > 0:
                    await self._sleep(rest)  # let the other streams' audio join this pass
                    if not self._ready:
                        break
                last_start = time.monotonic()
                work = self._take_batch()
                if not work:
                    continue
                self.passes += 1
                self.max_batch_seen = max(self.max_batch_seen, len(work))
                started = {id(w.stream): w.stream.fed_at for w in work}
                for w in work:
                    w.stream.pending_since = time.monotonic() if w.stream.pending else None
                began = time.monotonic()
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._process, work)
                except Exception as exc:  # noqa: BLE001 - _process catches model errors; this is a bug
                    log.exception("scheduler pass failed")
                    outcomes = [([], exc)] * len(work)
                now = time.monotonic()
                if self.on_pass is not None:
                    audio = sum(w.samples.size for w in work if w.samples is not None) / SAMPLE_RATE
                    self.on_pass(now - began, audio, len(work))
                for w, (results, error) in zip(work, outcomes):
                    self._deliver(w, results, error, started[id(w.stream)], now)

    def _deliver(
        self, w: _Work, results: list[Result], error: BaseException | None, since: float | None, now: float
    ) -> None:
        stream = w.stream
        if w.samples is not None:
            stream.processed_samples += w.samples.size
        if w.finalize and error is None:
            stream.finalized = True
        if error is not None:
            stream.failed = True
        if not stream.closed:
            if results and since is not None and self.on_latency is not None:
                self.on_latency(now - since)
            if results or error is not None or self._progress_due(stream, w):
                stream.outbox.put_nowait(Delivery(results, stream.processed_samples / SAMPLE_RATE, error))
                stream.delivered_samples = stream.processed_samples
        self._settle(stream)

    @staticmethod
    def _progress_due(stream: Stream, w: _Work) -> bool:
        every = stream.progress_every
        if w.samples is None or every is None:
            return False
        return stream.processed_samples - stream.delivered_samples >= every

    def _process(self, work: list[_Work]) -> list[tuple[list[Result], BaseException | None]]:
        """Model thread: :meth:`_run_pass`; one longer than SLOW_PASS_S is logged with its
        parts (the collector's share included), so a stall in a server's tail shows where it was."""
        clock = _collector_clock()
        began, collected = time.perf_counter(), clock.total_s
        out = self._run_pass(work)
        took = time.perf_counter() - began
        if took > SLOW_PASS_S:
            log.warning("slow model pass: %.2f s for %d streams (%d ending), garbage collector %.2f s of it",
                        took, len(work), sum(w.finalize for w in work), clock.total_s - collected)
        return out

    def _run_pass(self, work: list[_Work]) -> list[tuple[list[Result], BaseException | None]]:
        """Batched `accept_waveform`, then the finalizes (batched when the factory offers
        `finalize_batch` and several streams end); errors stay per stream, or per batched call."""
        out: list[tuple[list[Result], BaseException | None]] = [([], None) for _ in work]
        audio = [i for i, w in enumerate(work) if w.samples is not None]
        if audio and self._batch_fn is process_sequential:
            for i in audio:  # one stream's failure leaves the others untouched
                try:
                    out[i] = (list(work[i].stream.recognizer.accept_waveform(work[i].samples)), None)
                except Exception as exc:  # noqa: BLE001 - reported to that client only
                    out[i] = ([], exc)
        elif audio:
            items = [(work[i].stream.recognizer, work[i].samples) for i in audio]
            try:
                for i, res in zip(audio, self._batch_fn(items), strict=True):
                    out[i] = (list(res), None)
            except Exception as exc:  # noqa: BLE001 - a batched call cannot tell whose input failed
                for i in audio:
                    out[i] = ([], exc)
        ending = [i for i, w in enumerate(work) if w.finalize and out[i][1] is None]
        if len(ending) > 1 and self._finalize_fn is not None:
            try:
                ends = [list(res) for res in self._finalize_fn([work[i].stream.recognizer for i in ending])]
                if len(ends) != len(ending):
                    raise RuntimeError(f"finalize_batch returned {len(ends)} result lists for {len(ending)} streams")
            except Exception as exc:  # noqa: BLE001 - a batched call cannot tell whose stream failed
                for i in ending:
                    out[i] = (out[i][0], exc)
                return out
            for i, res in zip(ending, ends):
                out[i] = (out[i][0] + res, None)
            return out
        for i in ending:
            try:
                out[i] = (out[i][0] + list(work[i].stream.recognizer.finalize()), None)
            except Exception as exc:  # noqa: BLE001
                out[i] = (out[i][0], exc)
        return out
