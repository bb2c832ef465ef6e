"""Server configuration: one frozen dataclass with every limit the server enforces."""

from __future__ import annotations

from dataclasses import dataclass, field

from asr.inference import InferenceConfig

__all__ = ["ServerConfig", "SAMPLE_RATE"]

SAMPLE_RATE = 16000  # the only input rate the server accepts (Hz)


@dataclass(frozen=True)
class ServerConfig:
    """Everything `run_server` needs besides the recognizer factory.

    Args:
        host: interface to bind; loopback unless the operator asks for more.
        port: TCP port; 0 picks a free one (tests).
        model_name: shown by `/healthz`.
        inference: the sessions' default inference settings (decoder and block size shown by
            `/healthz`); a native session's start message may override the session fields
            (`asr.inference.SESSION_FIELDS`), Vosk and WeNet sessions get these.
        max_sessions: started streams at most (a connection takes a slot when it starts its stream,
            not when it connects); a handshake while all are taken gets HTTP 503, a start `server_busy`.
        start_timeout_s: a connection must start its stream (native `start`, WeNet start signal,
            Vosk audio or eof) this many seconds after connecting, or it is closed (`start_timeout`).
        max_waiting: connections that have not started a stream, in all; beyond it the oldest one
            is closed (`too_many_waiting`), so idle connections can never lock out a real client.
        max_waiting_per_address: the same limit per client IP address.
        max_frame_bytes: largest binary audio frame (bytes) a client may send; a larger one is
            an error. 64 KiB is 2 s of 16 kHz int16 audio.
        idle_timeout_s: a session that sends nothing for this long is finalized and closed.
        max_session_s: audio seconds one session may stream; None = unlimited.
        token: when set, WebSocket sessions and `/metrics` need `Authorization: Bearer TOKEN`
            or `?token=TOKEN`.
        certfile, keyfile: PEM files; both set -> TLS (wss:// and https://).
        allowed_origins: when non-empty, a WebSocket handshake whose `Origin` header is not in this
            list is refused with HTTP 403 (requests without `Origin`, i.e. non-browser clients, pass).
        max_batch: most sessions the scheduler runs in one model call.
        batch_window_s: model passes start at most this often, so that the streams whose audio
            arrives within one window share a pass (batched: cheaper per stream), for at most this
            much added latency; 0: a pass as soon as any stream has audio (`Scheduler.pass_interval_s`).
        hold_s: a session whose buffered audio completes no block of its model waits out of the
            passes for up to this long (its audio gives no result before; `Scheduler.hold_s`);
            0: every session with audio joins every pass.
        max_chunk_s: most audio seconds of one session processed in one scheduler pass, so a client
            uploading faster than real time cannot starve the others.
        max_pending_s: buffered, not yet processed audio per session; a client that is further ahead
            is not read from until the model catches up (TCP backpressure).
        warmup_streams: throwaway streams the model runs before the first session
            (`scheduler.warm_up`; 0: none).
        drain_timeout_s: on SIGTERM, how long to wait for open sessions to get their final result.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    model_name: str = ""
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    max_sessions: int = 64
    start_timeout_s: float = 5.0
    max_waiting: int = 1024
    max_waiting_per_address: int = 64
    max_frame_bytes: int = 65536
    idle_timeout_s: float = 30.0
    max_session_s: float | None = 6 * 3600.0
    token: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    max_batch: int = 32
    batch_window_s: float = 0.0
    hold_s: float = 1.0
    max_chunk_s: float = 2.0
    max_pending_s: float = 10.0
    warmup_streams: int = 8
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("TLS needs both certfile and keyfile (got only one)")
        for name in ("max_sessions", "max_frame_bytes", "max_batch", "max_waiting", "max_waiting_per_address"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("idle_timeout_s", "start_timeout_s", "max_chunk_s", "max_pending_s", "drain_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ServerConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.warmup_streams < 0:
            raise ValueError(f"ServerConfig.warmup_streams must be >= 0, got {self.warmup_streams}")
        for name in ("batch_window_s", "hold_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"ServerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_session_s is not None and self.max_session_s <= 0:
            raise ValueError(f"ServerConfig.max_session_s must be > 0 or None, got {self.max_session_s}")
        if self.max_frame_bytes % 2:
            raise ValueError("ServerConfig.max_frame_bytes must be even (int16 samples)")
