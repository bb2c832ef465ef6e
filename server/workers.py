"""`asr serve --workers N`: N front processes speak WebSocket, one model process runs the model.

In one process (`--workers 0`) the WebSocket/JSON work of every session and the scheduler's model
loop share one GIL. With `--workers N`:

    parent (this module: spawns, watches, forwards SIGTERM; holds no model)
      |- model process: the recognizer factory, the one `Scheduler` (batched `process_batch`),
      |                 a `remote.ModelService` serving each front's connection
      |- front 1..N:    `AsrServer` on the one listening socket the parent opened (the kernel hands
                        each new connection to one of them), every protocol and HTTP endpoint as
                        today, the model reached through a `remote.RemoteScheduler`

Faults. A front that dies loses its own connections only: the model process closes that front's
streams and the parent starts a new front on the same socket. A client that vanishes is closed by
its front as in one process. When the model process dies, every open session gets an error that
says so (`internal`, "the model process exited ..."), the fronts stop, and the parent exits with
status 1; it does not restart the model (the streams' decoder state died with it).

Limits that stay per front: `/healthz` and `/metrics` count the sessions, audio and partial latency
of the front that answers (the model process enforces `max_sessions` across all fronts, each front
also on its own); the model-pass metrics are the model's, every front sees every pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import tempfile
import threading
from multiprocessing.connection import Client, Connection, Listener, wait
from typing import Any, Callable

from .config import SAMPLE_RATE, ServerConfig

__all__ = ["WorkerError", "WorkerPool", "run_workers", "streaming_factory"]

log = logging.getLogger("server")

MakeFactory = Callable[[], Any]  # picklable (spawned into the model process)


class WorkerError(RuntimeError):
    """The model process could not start (its message says why, e.g. the model failed to load)."""


def streaming_factory(settings: Any) -> Any:
    """`streaming.make_recognizer_factory(settings)`, imported in the model process only (so the
    parent and the fronts never load torch models)."""
    import streaming

    return streaming.make_recognizer_factory(settings)


# -- the model process -----------------------------------------------------------------------------
def _model_main(make_factory: MakeFactory, config: ServerConfig, address: str, authkey: bytes, status: Connection,
                log_level: str) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):  # the parent stops it, after the fronts drained
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s model: %(message)s")
    try:
        factory = make_factory()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        status.send(("error", str(exc) or repr(exc)))
        return
    from .scheduler import freeze_loaded_objects, warm_up

    try:
        warm_up(factory, config.warmup_streams)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which prints it
        status.send(("error", f"the model's warm-up failed: {exc}"))
        return
    freeze_loaded_objects()
    listener = Listener(address, family="AF_UNIX", authkey=authkey)
    status.send(("ready", None))
    asyncio.run(_model_loop(factory, config, listener, status))


async def _model_loop(factory: Any, config: ServerConfig, listener: Listener, status: Connection) -> None:
    from .remote import ModelService

    service = ModelService(factory, max_sessions=config.max_sessions, max_batch=config.max_batch,
                           max_chunk_samples=int(config.max_chunk_s * SAMPLE_RATE),
                           pass_interval_s=config.batch_window_s, hold_s=config.hold_s)
    service.start()
    loop = asyncio.get_running_loop()

    def accept_forever() -> None:
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError):
                return  # the listener was closed
            except Exception:  # noqa: BLE001 - a wrong authkey: refuse that one
                continue
            loop.call_soon_threadsafe(service.add, conn)

    threading.Thread(target=accept_forever, daemon=True, name="asr-accept").start()
    stop = asyncio.Event()
    loop.add_reader(status.fileno(), stop.set)  # "stop" from the parent, or EOF: the parent is gone
    await stop.wait()
    await service.stop()
    listener.close()


# -- a front process -----------------------------------------------------------------------------
def _front_main(config: ServerConfig, sock: socket.socket, address: str, authkey: bytes, status: Connection,
                log_level: str) -> None:
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s front {os.getpid()}: %(message)s")
    sys.exit(asyncio.run(_front_loop(config, sock, address, authkey, status)))


async def _front_loop(config: ServerConfig, sock: socket.socket, address: str, authkey: bytes, status: Connection) -> int:
    from .app import AsrServer
    from .remote import RemoteScheduler

    stop = asyncio.Event()
    remote = RemoteScheduler(Client(address, family="AF_UNIX", authkey=authkey),
                             max_pending_samples=int(config.max_pending_s * SAMPLE_RATE), on_lost=stop.set,
                             hold_s=config.hold_s)
    server = AsrServer(config, None, scheduler=remote, sock=sock)
    remote.on_latency, remote.on_pass = server.metrics.partial_latency.observe, server.metrics.model_pass
    loop = asyncio.get_running_loop()

    def on_signal(*_: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: already stopping
            loop.call_soon_threadsafe(stop.set)

    # signal.signal, not loop.add_signal_handler (closing the loop restores the default action);
    # once stopping, ignored: the second SIGTERM (the parent's, after a Ctrl-C or a `kill` to the
    # whole process group) must not kill this front while it drains or exits.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    await server.start()
    status.send(("ready", server.port))
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    await server.shutdown()  # the drain: every open session gets its final (or the model's error)
    return 3 if remote.lost else 0


# -- the parent ----------------------------------------------------------------------------------
def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


class WorkerPool:
    """The model process and `workers` front processes on one listening socket.

        pool = WorkerPool(config, make_factory, workers=2)
        pool.start()                      # raises WorkerError when the model does not load
        status = pool.supervise(stop)     # until `stop` (a threading.Event) is set; drains; exit status
    """

    def __init__(self, config: ServerConfig, make_factory: MakeFactory, workers: int, log_level: str = "INFO") -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.config = config
        self.make_factory = make_factory
        self.workers = workers
        self.log_level = log_level
        self.fronts: list[mp.process.BaseProcess] = []
        self.model: mp.process.BaseProcess | None = None
        self.restarts = 0  # fronts started again after dying
        self._ctx = mp.get_context("spawn")  # never fork a process that may hold threads
        self._dir = tempfile.mkdtemp(prefix="asr-serve-")
        self._address = os.path.join(self._dir, "model.sock")
        self._authkey = os.urandom(16)
        self._sock: socket.socket | None = None
        self._status: Connection | None = None

    @property
    def port(self) -> int:
        assert self._sock is not None
        return self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.certfile else "ws"
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> None:
        self._sock = _listen(self.config.host, self.config.port)
        mine, theirs = self._ctx.Pipe()
        self.model = self._ctx.Process(target=_model_main, name="asr-model", args=(
            self.make_factory, self.config, self._address, self._authkey, theirs, self.log_level))
        self.model.start()
        theirs.close()
        self._status = mine
        try:
            kind, message = self._first_message(mine, self.model, "the model process")
        except WorkerError:
            self._cleanup()
            raise
        if kind == "error":
            self.model.join()
            self._cleanup()
            raise WorkerError(message)
        for _ in range(self.workers):
            self.fronts.append(self._start_front())

    def _start_front(self) -> mp.process.BaseProcess:
        mine, theirs = self._ctx.Pipe()
        proc = self._ctx.Process(target=_front_main, name="asr-front", args=(
            self.config, self._sock, self._address, self._authkey, theirs, self.log_level))
        proc.start()
        theirs.close()
        self._first_message(mine, proc, "a front process")
        mine.close()
        return proc

    @staticmethod
    def _first_message(conn: Connection, proc: mp.process.BaseProcess, what: str) -> tuple[str, Any]:
        wait([conn, proc.sentinel])
        try:
            return conn.recv()
        except EOFError:
            raise WorkerError(f"{what} exited (status {proc.exitcode}) before it was ready") from None

    def supervise(self, stop: threading.Event) -> int:
        """Watch the processes until `stop` is set or the model process dies; returns the exit
        status: 0 after a clean drain, 1 when the model process died."""
        assert self.model is not None
        while not stop.is_set():
            wait([self.model.sentinel, *(f.sentinel for f in self.fronts)], timeout=0.2)
            if not self.model.is_alive():
                log.error("the model process exited (status %s); stopping the fronts", self.model.exitcode)
                self._join_fronts(signal_them=False)
                self._cleanup()
                return 1
            for i, front in enumerate(self.fronts):
                if not front.is_alive() and not stop.is_set():
                    log.warning("front process %d exited (status %s); starting another", front.pid, front.exitcode)
                    try:
                        self.fronts[i] = self._start_front()
                        self.restarts += 1
                    except WorkerError as exc:  # the model went too: the next round sees it
                        log.error("%s", exc)
        ok = self._join_fronts(signal_them=True)
        assert self._status is not None
        try:
            self._status.send(("stop", None))
        except OSError:
            pass
        self.model.join(30)
        if self.model.is_alive():
            log.warning("the model process did not stop; killing it")
            self.model.kill()
            ok = False
        self._cleanup()
        return 0 if ok else 1

    def _join_fronts(self, signal_them: bool) -> bool:
        """SIGTERM the fronts (they drain) and wait for them; True when each exited 0."""
        if signal_them:
            for front in self.fronts:
                if front.is_alive():
                    front.terminate()
        ok = True
        for front in self.fronts:
            front.join(self.config.drain_timeout_s + 15)
            if front.is_alive():
                front.kill()
                front.join()
            if front.exitcode != 0:
                log.warning("front process %d exited with status %s", front.pid, front.exitcode)
                ok = False
        return ok

    def _cleanup(self) -> None:
        if self._sock is not None:
            self._sock.close()
        try:
            os.unlink(self._address)
        except OSError:
            pass
        try:
            os.rmdir(self._dir)
        except OSError:
            pass


def run_workers(config: ServerConfig, make_factory: MakeFactory, workers: int,
                on_ready: Callable[[WorkerPool], None] | None = None, log_level: str = "INFO") -> int:
    """Serve with `workers` front processes until SIGTERM or SIGINT, then drain; the exit status."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pool = WorkerPool(config, make_factory, workers, log_level)
    pool.start()
    if on_ready is not None:
        on_ready(pool)
    return pool.supervise(stop)
