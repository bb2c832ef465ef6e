"""Who may hold what: connections that have not started a stream, and the session slots.

A WebSocket connection is *waiting* from its handshake until it starts a stream (native `start`,
WeNet start signal, Vosk's first audio or eof); only then does it take one of `max_sessions`
session slots. Waiting connections are bounded on their own: at most `max_waiting` in all and
`max_waiting_per_address` per client address, the oldest one closed when a new one comes (a real
client starts within a round trip, so it is always among the newest), and each must start within
`start_timeout_s` (enforced by `Session.receive`). So idle or slow connections, however many, never
take a session slot and never lock out a client that starts its stream.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Hashable, Protocol

from .limits import ProtocolError

__all__ = ["Admission", "Waiting"]

log = logging.getLogger("server")


class Waiting(Protocol):
    """What admission needs of a session: its client address and a way to close it."""

    address: str

    def evict(self) -> None: ...


class Admission:
    """Bookkeeping of waiting connections and session slots (event loop only).

    Args:
        max_sessions: started streams at most; a start beyond it is refused (`server_busy`).
        max_waiting: connections that have not started, in all.
        max_waiting_per_address: connections that have not started, per client address.
    """

    def __init__(self, max_sessions: int, max_waiting: int, max_waiting_per_address: int) -> None:
        self.max_sessions = max_sessions
        self.max_waiting = max_waiting
        self.max_waiting_per_address = max_waiting_per_address
        self.sessions = 0  # started streams
        self.evicted = 0  # waiting connections closed to make room (for tests/metrics)
        self._waiting: OrderedDict[Hashable, Waiting] = OrderedDict()  # oldest first
        self._by_address: dict[str, OrderedDict[Hashable, Waiting]] = {}

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def arrive(self, conn: Waiting) -> None:
        """A new connection: it waits; the oldest waiting ones are evicted beyond the limits."""
        mine = self._by_address.setdefault(conn.address, OrderedDict())
        while len(mine) >= self.max_waiting_per_address:
            self._evict(next(iter(mine.values())))
        while len(self._waiting) >= self.max_waiting:
            self._evict(next(iter(self._waiting.values())))
        self._waiting[id(conn)] = conn
        mine[id(conn)] = conn

    def start(self, conn: Waiting) -> None:
        """`conn` starts a stream: it stops waiting and takes a session slot.

        Raises:
            ProtocolError: `server_busy` when every slot is taken (the connection keeps waiting).
        """
        if self.sessions >= self.max_sessions:
            raise ProtocolError("server_busy", f"all {self.max_sessions} session slots are in use; try again later")
        self._forget(conn)
        self.sessions += 1

    def leave(self, conn: Waiting, started: bool) -> None:
        """`conn` ended (once): frees its slot, or its place among the waiting."""
        self._forget(conn)
        if started:
            self.sessions -= 1

    def _forget(self, conn: Waiting) -> None:
        self._waiting.pop(id(conn), None)
        mine = self._by_address.get(conn.address)
        if mine is not None:
            mine.pop(id(conn), None)
            if not mine:
                del self._by_address[conn.address]

    def _evict(self, conn: Waiting) -> None:
        self._forget(conn)
        self.evicted += 1
        conn.evict()
