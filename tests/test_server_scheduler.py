"""The scheduler on its own: batching across streams, per-stream order, caps, closing, backpressure."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from test_server_fake import BLOCK, BatchingFakeFactory, FakeFactory, FakeRecognizer, direct_finals, make_audio, random_frames, run  # noqa: E402

from test_server_limits import _until  # noqa: E402

from server.scheduler import Scheduler  # noqa: E402


def _finals(stream) -> list[str]:
    return [r.text for d in stream.take_outbox() for r in d.results if r.is_final]


def _f32(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


def test_ready_streams_are_batched_in_one_pass() -> None:
    factory = BatchingFakeFactory()
    audios = [make_audio(1.0, i) for i in range(3)]

    async def main():
        sched = Scheduler(factory, max_batch=8)
        sched.start()
        streams = [await sched.open() for _ in audios]
        for s, a in zip(streams, audios):  # all fed before the worker runs
            sched.feed(s, _f32(a))
        for s in streams:
            await sched.finalize(s)
        await sched.stop()
        return streams

    streams = run(main())
    assert factory.batch_sizes[0] == 3
    assert [_finals(s) for s in streams] == [direct_finals(a) for a in audios]


def test_chunk_cap_keeps_order_and_max_batch_is_respected() -> None:
    factory = BatchingFakeFactory()
    audios = [make_audio(3.0, 10 + i) for i in range(5)]

    async def main():
        sched = Scheduler(factory, max_batch=2, max_chunk_samples=5000)
        sched.start()
        streams = [await sched.open() for _ in audios]
        for s, a in zip(streams, audios):
            for frame in random_frames(a, 1):
                sched.feed(s, _f32(frame))
        await asyncio.gather(*(sched.finalize(s) for s in streams))
        await sched.stop()
        return streams, sched

    streams, sched = run(main())
    assert [_finals(s) for s in streams] == [direct_finals(a) for a in audios]
    assert max(factory.batch_sizes) == 2 and sched.max_batch_seen == 2


def test_sequential_default_isolates_a_failing_stream() -> None:
    good, poison = make_audio(1.0, 3), np.full(3200, 32000, dtype=np.int16)

    async def main():
        sched = Scheduler(FakeFactory(fail_on_peak=0.9))
        sched.start()
        a, b = await sched.open(), await sched.open()
        sched.feed(a, _f32(poison))
        sched.feed(b, _f32(good))
        await sched.finalize(a)
        await sched.finalize(b)
        await sched.stop()
        return a, b

    a, b = run(main())
    assert a.failed and any(d.error is not None for d in a.take_outbox())
    assert _finals(b) == direct_finals(good)


class _GatedFactory(FakeFactory):
    """Holds the model thread inside a pass: `entered` is set when a pass has started (its audio
    taken from the stream), and the pass returns only once the test sets `gate`."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def process_batch(self, items):
        self.entered.set()
        if not self.gate.wait(30):
            raise RuntimeError("test gate never opened")
        return [rec.accept_waveform(x) for rec, x in items]


def test_close_while_busy_drops_results_and_backpressure() -> None:
    factory = _GatedFactory()
    pcm = _f32(make_audio(2.0, 5))

    async def main():
        sched = Scheduler(factory, max_chunk_samples=4000, max_pending_samples=8000)
        sched.start()
        s = await sched.open()
        sched.feed(s, pcm[:4000])
        assert await asyncio.to_thread(factory.entered.wait, 30), "the pass never started"
        assert s.busy and s.pending_samples == 0  # the pass took the 4000 samples and is held
        sched.feed(s, pcm[4000:16000])  # 12000 pending > 8000: no room
        room_while_blocked = s.has_room.is_set()
        pending_while_blocked = s.pending_samples
        sched.close(s)
        factory.gate.set()
        # the scheduler runs passes one after another: once another stream's pass has finished,
        # the held pass has been delivered (and its results dropped)
        other = await sched.open()
        sched.feed(other, pcm[:3200])
        await sched.finalize(other)
        await sched.stop()
        return s, other, room_while_blocked, pending_while_blocked

    s, other, room, pending = run(main())
    assert room is False and pending == 12000
    assert factory.made[0]._block_index == 2  # the held pass did run the recognizer on its 4000 samples
    assert s.closed and s.outbox.empty() and not s.busy  # ... and its results were dropped
    assert other.finalized and not other.outbox.empty()


class _Window:
    """The scheduler's `sleep` for `pass_interval_s`, held until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.release = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.calls.append(seconds)
        await self.release.wait()


def test_pass_interval_lets_later_audio_join_the_next_pass() -> None:
    """After a pass, the next one waits for the rest of the interval: audio fed meanwhile by two
    streams goes through the model in one pass, and each stream's text is unchanged."""
    factory, window = BatchingFakeFactory(), _Window()
    audios = [make_audio(1.0, 30 + i) for i in range(3)]

    async def main():
        sched = Scheduler(factory, pass_interval_s=60.0, sleep=window.sleep)
        sched.start()
        a, b, c = [await sched.open() for _ in audios]
        sched.feed(a, _f32(audios[0]))
        await sched.drain(a)  # pass 1: a alone
        sched.feed(b, _f32(audios[1]))
        for _ in range(1000):  # the scheduler reaches the interval's wait (a hang guard, not a timing)
            if window.calls:
                break
            await asyncio.sleep(0)
        sched.feed(c, _f32(audios[2]))
        window.release.set()
        await sched.drain(b)
        await sched.drain(c)
        for s in (a, b, c):
            await sched.finalize(s)
        await sched.stop()
        return a, b, c

    streams = run(main())
    assert factory.batch_sizes[:2] == [1, 2]
    assert len(window.calls) >= 1 and 0 < window.calls[0] <= 60.0
    assert [_finals(s) for s in streams] == [direct_finals(a) for a in audios]


class _FinalizingFactory(BatchingFakeFactory):
    """Offers `finalize_batch` too; records its batch sizes; `fail` makes it raise."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.finalize_sizes: list[int] = []
        self.fail = fail

    def finalize_batch(self, recs):
        self.finalize_sizes.append(len(recs))
        if self.fail:
            raise RuntimeError("batched finalize failed")
        return [rec.finalize() for rec in recs]


def _end_together(factory, audios):
    async def main():
        sched = Scheduler(factory, max_batch=8)
        sched.start()
        streams = [await sched.open() for _ in audios]
        for s, a in zip(streams, audios):  # all fed, then all ended, before the worker runs
            sched.feed(s, _f32(a))
        await asyncio.gather(*(sched.finalize(s) for s in streams))
        await sched.stop()
        return streams

    return run(main())


def test_streams_ending_in_one_pass_share_one_finalize_batch() -> None:
    factory = _FinalizingFactory()
    audios = [make_audio(1.5, 20 + i) for i in range(4)]
    streams = _end_together(factory, audios)
    assert factory.finalize_sizes == [4] and factory.batch_sizes == [4]
    assert all(s.finalized and not s.failed for s in streams)
    assert [_finals(s) for s in streams] == [direct_finals(a) for a in audios]


def test_a_failing_finalize_batch_fails_its_streams_only() -> None:
    factory = _FinalizingFactory(fail=True)
    streams = _end_together(factory, [make_audio(1.0, 30 + i) for i in range(3)])
    assert factory.finalize_sizes == [3]
    for s in streams:
        assert s.failed and not s.finalized
        assert any(isinstance(d.error, RuntimeError) for d in s.take_outbox())


class _BlockRecognizer(FakeRecognizer):
    """The fake with the streaming recognizer's `samples_until_block`; records each chunk it took."""

    block_samples = BLOCK

    def __init__(self) -> None:
        super().__init__()
        self.samples, self.chunks = 0, []

    def samples_until_block(self) -> int:
        return BLOCK - self.samples % BLOCK

    def accept_waveform(self, samples):
        self.chunks.append((self.samples, samples.size))
        self.samples += samples.size
        return super().accept_waveform(samples)


class _BlockFactory(BatchingFakeFactory):
    def __call__(self, settings=None):
        rec = _BlockRecognizer()
        self.made.append(rec)
        return rec


def test_streams_short_of_a_block_are_held_until_it_completes() -> None:
    """Audio fed in frames smaller than a block reaches the recognizer only once it completes the
    next block (every chunk crosses a block boundary), and every stream's text is unchanged."""
    factory = _BlockFactory()
    audios = [make_audio(2.0, 60 + i) for i in range(3)]

    async def main():
        sched = Scheduler(factory, hold_s=3600.0)
        sched.start()
        streams = [await sched.open() for _ in audios]
        frame = BLOCK // 5 + 7
        for start in range(0, max(a.size for a in audios), frame):
            for s, a in zip(streams, audios):
                sched.feed(s, _f32(a[start:start + frame]))
            await asyncio.sleep(0.002)
        for s in streams:
            await sched.finalize(s)
        await sched.stop()
        return streams

    streams = run(main())
    assert [_finals(s) for s in streams] == [direct_finals(a) for a in audios]
    for rec, audio in zip(factory.made, audios):
        assert sum(n for _, n in rec.chunks) == audio.size
        assert len(rec.chunks) > 1
        assert all(start // BLOCK < (start + n) // BLOCK for start, n in rec.chunks[:-1] if start + n < audio.size)


def test_a_hold_ends_after_hold_s_and_drain_takes_held_audio() -> None:
    """Held audio is taken when its hold ends (acks keep coming to a stalled client) or at once
    when the session drains (the Vosk protocol answers every message)."""
    factory = _BlockFactory()

    async def main():
        sched = Scheduler(factory, hold_s=0.05)
        sched.start()
        a = await sched.open()
        sched.feed(a, _f32(make_audio(0.1, 70)[: BLOCK // 2]))
        await _until(lambda: a.idle.is_set())  # no more audio came: taken after 50 ms
        held = Scheduler(factory, hold_s=3600.0)
        held.start()
        b = await held.open()
        held.feed(b, _f32(make_audio(0.1, 71)[: BLOCK // 2]))
        await asyncio.sleep(0.01)
        assert factory.made[-1].chunks == []  # held
        await asyncio.wait_for(held.drain(b), 60)
        await sched.stop()
        await held.stop()
        return a

    run(main())
    assert [n for _, n in factory.made[0].chunks] == [BLOCK // 2]
    assert [n for _, n in factory.made[1].chunks] == [BLOCK // 2]


def test_a_front_holds_audio_until_a_block_completes() -> None:
    """`--workers`: the front (RemoteScheduler) sends a stream's audio to the model process once it
    completes the stream's next block, as the reports say, in one message per block rather than one
    per frame; the texts equal the in-process scheduler's."""
    from multiprocessing import Pipe

    from server.remote import ModelService, RemoteScheduler

    audios = [make_audio(2.0, 80 + i) for i in range(2)]
    frame = BLOCK // 5 + 7

    async def main():
        front_end, model_end = Pipe()
        service = ModelService(_BlockFactory(), max_sessions=8, hold_s=3600.0)
        service.start()
        service.add(model_end)
        feeds = []
        on_message = service._on_message
        service._on_message = lambda front, m: (feeds.append(m[0]), on_message(front, m))[1]
        remote = RemoteScheduler(front_end, max_pending_samples=10**9, hold_s=3600.0)
        remote.start()
        streams = [await remote.open() for _ in audios]
        sent = 0
        for start in range(0, max(a.size for a in audios), frame):
            for s, a in zip(streams, audios):
                if start < a.size:
                    remote.feed(s, _f32(a[start:start + frame]))
                    sent += 1
            await asyncio.sleep(0.002)
        for s in streams:
            await remote.finalize(s)
        texts = [[r.text for d in s.take_outbox() for r in d.results if r.is_final] for s in streams]
        await remote.stop()
        await service.stop()
        return texts, feeds.count("feed"), sent

    texts, feed_messages, frames_sent = run(main())
    assert texts == [direct_finals(a) for a in audios]
    assert feed_messages < frames_sent / 3  # one per block (and the first frames), not one per frame


def test_a_front_hold_that_ends_sends_the_audio_for_processing_at_once() -> None:
    """A stalled client's audio short of a block: the front's hold ends after hold_s and the model
    process takes it at once (no second hold there), so the stream is acknowledged."""
    from multiprocessing import Pipe

    from server.remote import ModelService, RemoteScheduler

    factory = _BlockFactory()

    async def main():
        front_end, model_end = Pipe()
        service = ModelService(factory, max_sessions=8, hold_s=3600.0)
        service.start()
        service.add(model_end)
        remote = RemoteScheduler(front_end, max_pending_samples=10**9, hold_s=0.05)
        remote.start()
        s = await remote.open()
        audio = _f32(make_audio(2.0, 90))
        remote.feed(s, audio[:BLOCK])  # before the first report: sent at once, one block
        await _until(lambda: s.processed_samples == BLOCK)
        remote.feed(s, audio[BLOCK:BLOCK + BLOCK // 3])  # held here for 50 ms, then taken at once
        await asyncio.wait_for(s.idle.wait(), 60)
        processed = s.processed_samples
        await remote.stop()
        await service.stop()
        return processed

    assert run(main()) == BLOCK + BLOCK // 3


def test_freeze_loaded_objects_moves_what_is_alive_out_of_the_collections():
    import gc

    from server.scheduler import COLLECTOR_THRESHOLDS, freeze_loaded_objects

    before, thresholds = gc.get_freeze_count(), gc.get_threshold()
    try:
        freeze_loaded_objects()
        assert gc.get_freeze_count() > before and gc.isenabled()
        assert gc.get_threshold() == COLLECTOR_THRESHOLDS  # then it collects less often, not never
    finally:
        gc.unfreeze()  # (the rest of the test process keeps its collector as it was)
        gc.set_threshold(*thresholds)
