"""The server: one WebSocket port with routing, the scheduler, TLS, and a draining shutdown.

    async with serve(config, factory) as server:     # tests, embedding
        print(server.url)
    run_server(config, factory)                       # the CLI: blocks until SIGTERM/SIGINT
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import ssl
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from . import native, vosk, wenet
from .config import SAMPLE_RATE, ServerConfig
from .http import make_process_request
from .limits import ProtocolError
from .metrics import Metrics
from .recognizer import RecognizerFactory
from .scheduler import Scheduler
from .session import Context, Session

__all__ = ["AsrServer", "serve", "run_server"]

log = logging.getLogger("server")

Handler = Callable[[Session], Awaitable[None]]


async def _autodetect(session: Session) -> None:
    """`/`: pick the protocol from the first message, so Vosk and WeNet clients that connect to
    the bare host:port (their defaults) work unchanged."""
    try:
        message = await session.receive()
    except ProtocolError as error:
        session.record_error(error.code, error.message)
        await session.close(error.close_code, error.message)
        return
    if message is None:
        await session.close(1001, "server shutting down")
        return
    handler: Handler = native.handle
    if isinstance(message, bytes):
        handler = vosk.handle
    else:
        try:
            obj = json.loads(message)
        except ValueError:
            obj = None  # the native handler reports bad JSON
        if isinstance(obj, dict) and "signal" in obj:
            handler = wenet.handle
        elif isinstance(obj, dict) and vosk.is_vosk_first_message(obj):
            handler = vosk.handle
    session.unread(message)
    await handler(session)


_ROUTES: dict[str, Handler] = {"/": _autodetect, "/asr": native.handle, "/vosk": vosk.handle, "/wenet": wenet.handle}


class AsrServer:
    """A running server. Use `serve()` rather than building one by hand."""

    def __init__(
        self,
        config: ServerConfig,
        factory: RecognizerFactory | None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        scheduler: Scheduler | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """`scheduler` and `sock` are for the front processes of `--workers N` (server/workers.py):
        a `RemoteScheduler` in place of the model, and the listening socket all fronts share."""
        self.config = config
        self.metrics = Metrics()
        self._sock = sock
        self.scheduler = scheduler or Scheduler(
            factory,
            max_batch=config.max_batch,
            max_chunk_samples=int(config.max_chunk_s * SAMPLE_RATE),
            max_pending_samples=int(config.max_pending_s * SAMPLE_RATE),
            on_latency=self.metrics.partial_latency.observe,
            on_pass=self.metrics.model_pass,
            pass_interval_s=config.batch_window_s,
            hold_s=config.hold_s,
        )
        self.ctx = Context(config=config, scheduler=self.scheduler, metrics=self.metrics, sleep=sleep)
        self._ws: Server | None = None

    @property
    def port(self) -> int:
        assert self._ws is not None
        return self._ws.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.certfile else "ws"
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        self.scheduler.start()
        tls = None
        if self.config.certfile:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.config.certfile, self.config.keyfile)
        self._ws = await ws_serve(
            self._handle,
            None if self._sock else self.config.host,
            None if self._sock else self.config.port,
            sock=self._sock,
            process_request=make_process_request(self.ctx),
            compression=None,  # PCM does not compress; deflate would only cost CPU
            # Frames up to max_frame_bytes get a protocol error from us; far larger ones are cut off
            # by websockets itself (close 1009) before they are buffered.
            max_size=4 * self.config.max_frame_bytes,
            ssl=tls,
        )
        log.info("listening on %s", self.url)

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(ws, self.ctx)  # waits (no session slot) until the protocol starts a stream
        try:
            await _ROUTES[urlsplit(ws.request.path).path](session)
        except ConnectionClosed:
            pass  # the client went away before the protocol handler took over
        except Exception:  # noqa: BLE001 - a bug must not take the other sessions down
            log.exception("session %s failed", ws.id)
            self.metrics.error("internal")
            session.release()
            await session.close(1011, "internal error")
        finally:
            session.release()

    async def shutdown(self) -> None:
        """Drain: refuse new sessions, give each open one its final result, then stop."""
        if self._ws is None:
            return
        self.ctx.draining.set()
        self._ws.close(close_connections=False)
        try:
            await asyncio.wait_for(self._ws.wait_closed(), self.config.drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("drain timed out after %g s; closing the remaining sessions", self.config.drain_timeout_s)
            for conn in list(self._ws.connections):  # the client sees the cut: close 1001, this reason
                await conn.close(1001, "server shutting down: drain timed out before the final result")
            try:  # a handler stuck in the model cannot be waited for forever
                await asyncio.wait_for(self._ws.wait_closed(), 5.0)
            except asyncio.TimeoutError:
                log.error("some sessions did not end; exiting anyway")
        await self.scheduler.stop()
        self._ws = None


@contextlib.asynccontextmanager
async def serve(
    config: ServerConfig, factory: RecognizerFactory, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> AsyncIterator[AsrServer]:
    """Start a server for the duration of the `async with` block; leaving it drains.

    `sleep` times the start deadline and the idle timeout (tests pass a fake clock)."""
    server = AsrServer(config, factory, sleep)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown()


def run_server(config: ServerConfig, factory: RecognizerFactory, on_ready: Callable[[AsrServer], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain (every open session gets its final result)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with serve(config, factory) as server:
            if on_ready is not None:
                on_ready(server)
            await stop.wait()
            log.info("signal received: draining %d session(s)", server.metrics.sessions)

    asyncio.run(main())
