"""Session.receive on its own, with a fake connection and clock: the timeouts and the drain
interrupt a waiting receive, a message that is already buffered needs no wait, and a cancel
from outside is never mistaken for a timeout."""

from __future__ import annotations

import asyncio
import collections
import os
import sys
from dataclasses import dataclass

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_server_fake import FakeClock, FakeFactory, run  # noqa: E402

from asr.inference import InferenceConfig  # noqa: E402
from server.config import ServerConfig  # noqa: E402
from server.limits import ProtocolError  # noqa: E402
from server.metrics import Metrics  # noqa: E402
from server.scheduler import Scheduler  # noqa: E402
from server.session import Context, Session  # noqa: E402


@dataclass
class _Frame:
    data: bytes
    fin: bool = True


class _Queue:
    """What `_buffered_message` reads of websockets' frame queue."""

    def __init__(self) -> None:
        self.queue: collections.deque[_Frame] = collections.deque()


class _Assembler:
    def __init__(self) -> None:
        self.frames = _Queue()


class FakeConnection:
    """`recv()` returns what `push()` gave, waiting when there is nothing."""

    id = "fake"
    remote_address = ("127.0.0.1", 1)

    def __init__(self) -> None:
        self.recv_messages = _Assembler()
        self._arrived = asyncio.Event()
        self.waits = 0  # recv() calls that had to wait

    def push(self, data: bytes) -> None:
        self.recv_messages.frames.queue.append(_Frame(data))
        self._arrived.set()

    async def recv(self) -> bytes:
        queue = self.recv_messages.frames.queue
        if not queue:
            self.waits += 1
        while not queue:
            self._arrived.clear()
            await self._arrived.wait()
        return queue.popleft().data

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def _session(clock: FakeClock) -> tuple[Session, FakeConnection]:
    config = ServerConfig(port=0, inference=InferenceConfig(), idle_timeout_s=30.0, start_timeout_s=5.0)
    ctx = Context(config=config, scheduler=Scheduler(FakeFactory()), metrics=Metrics(), sleep=clock.sleep)
    ws = FakeConnection()
    return Session(ws, ctx), ws  # type: ignore[arg-type]


async def _until(condition) -> None:
    for _ in range(10000):  # a hang guard, not a time limit
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def _waiting_receive(session: Session, clock: FakeClock) -> asyncio.Future:
    """A started session's `receive`, once it waits (its 30 s idle sleep is pending)."""
    session._take_slot()
    task = asyncio.ensure_future(session.receive())
    await _until(lambda: clock.sleeping(30.0) == 1)
    return task


def test_buffered_messages_come_in_order_without_waiting() -> None:
    async def main():
        session, ws = _session(FakeClock())
        session._take_slot()
        for i in range(5):
            ws.push(bytes([i]))
        got = [await session.receive() for _ in range(5)]
        return got, ws.waits

    got, waits = run(main())
    assert got == [bytes([i]) for i in range(5)] and waits == 0


def test_message_after_a_wait_and_a_stale_idle_sleep() -> None:
    """A message ends the wait; the idle sleep of that receive is cancelled and never fires later."""
    clock = FakeClock()

    async def main():
        session, ws = _session(clock)
        task = await _waiting_receive(session, clock)
        ws.push(b"a")
        first = await task
        task = asyncio.ensure_future(session.receive())
        await _until(lambda: clock.sleeping(30.0) == 1)
        ws.push(b"b")
        second = await task
        return first, second

    assert run(main()) == (b"a", b"b")


def test_idle_timeout_start_deadline_and_drain_interrupt_a_wait() -> None:
    clock = FakeClock()

    async def main():
        idle, ws = _session(clock)
        task = await _waiting_receive(idle, clock)
        clock.advance(30.0)
        with pytest.raises(ProtocolError) as idle_error:
            await task

        unstarted, _ = _session(clock)
        task = asyncio.ensure_future(unstarted.receive())
        await _until(lambda: clock.sleeping(5.0) == 1 and clock.sleeping(30.0) == 1)
        clock.advance(5.0)
        with pytest.raises(ProtocolError) as start_error:
            await task

        draining, ws = _session(clock)
        task = await _waiting_receive(draining, clock)
        draining.ctx.draining.set()
        drained = await task
        ws.push(b"late")  # after the drain, receive says None at once
        return idle_error.value.code, start_error.value.code, drained, await draining.receive()

    assert run(main()) == ("idle_timeout", "start_timeout", None, None)


def test_a_cancel_from_outside_is_not_swallowed() -> None:
    clock = FakeClock()

    async def main():
        session, ws = _session(clock)
        task = await _waiting_receive(session, clock)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ws.push(b"next")  # the session still works afterwards
        return await session.receive()

    assert run(main()) == b"next"
