"""Input validation and access checks shared by the protocols and the HTTP layer.

Every client mistake becomes a `ProtocolError(code, message)`; the protocol module turns it into
its own error message and closes that one connection.
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .config import ServerConfig

__all__ = [
    "ProtocolError",
    "decode_pcm",
    "parse_json_object",
    "parse_sample_rate",
    "MIN_RATE",
    "MAX_RATE",
    "authorized",
    "origin_allowed",
    "ERROR_CLOSE_CODES",
]

MIN_RATE, MAX_RATE = 4000, 192000  # client sample rates accepted (Hz)

# WebSocket close code per error code (RFC 6455 section 7.4.1).
ERROR_CLOSE_CODES = {
    "bad_json": 1003,
    "bad_message": 1003,
    "unknown_type": 1003,
    "expected_binary": 1003,
    "not_started": 1008,
    "already_started": 1008,
    "bad_sample_rate": 1003,
    "bad_format": 1003,
    "bad_option": 1003,
    "bad_audio": 1003,
    "frame_too_large": 1009,
    "idle_timeout": 1008,
    "start_timeout": 1008,
    "too_many_waiting": 1013,
    "session_too_long": 1008,
    "server_busy": 1013,
    "shutting_down": 1001,
    "internal": 1011,
}


class ProtocolError(Exception):
    """A client error: `code` is machine-readable (a key of ERROR_CLOSE_CODES), `message` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int:
        return ERROR_CLOSE_CODES.get(self.code, 1008)


def decode_pcm(data: bytes, max_frame_bytes: int) -> np.ndarray:
    """Binary s16le mono frame -> (n,) float32 in [-1, 1).

    Raises:
        ProtocolError: `frame_too_large` above `max_frame_bytes`, `bad_audio` for an odd length.
    """
    if len(data) > max_frame_bytes:
        raise ProtocolError(
            "frame_too_large", f"audio frame of {len(data)} bytes exceeds the limit of {max_frame_bytes} bytes"
        )
    if len(data) % 2:
        raise ProtocolError("bad_audio", f"audio frame of {len(data)} bytes is not whole 16-bit samples (s16le)")
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32)
    samples *= np.float32(1 / 32768)  # in place (one array per frame, not two); a power of 2: exact
    return samples


def parse_json_object(text: str) -> dict[str, Any]:
    """A text message that must be one JSON object."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"text message is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_sample_rate(value: Any) -> int:
    """The client's sample rate in Hz: a whole number from MIN_RATE to MAX_RATE (an int, or a
    float such as Vosk's 16000.0). The session resamples to the model's rate."""
    whole = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
    if not whole or not MIN_RATE <= value <= MAX_RATE:
        raise ProtocolError(
            "bad_sample_rate", f"sample_rate must be a whole number of Hz from {MIN_RATE} to {MAX_RATE} (mono s16le), "
            f"got {value!r}"
        )
    return int(value)


def _bearer(headers: Any) -> str | None:
    value = headers.get("Authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


def authorized(config: ServerConfig, path: str, headers: Any) -> bool:
    """True when no token is configured, or the request carries it (header or `?token=`)."""
    if config.token is None:
        return True
    given = _bearer(headers)
    if given is None:
        given = (parse_qs(urlsplit(path).query).get("token") or [None])[0]
    return given is not None and hmac.compare_digest(given.encode(), config.token.encode())


def origin_allowed(config: ServerConfig, headers: Any) -> bool:
    """Browsers always send `Origin`; it must be in the allowlist when one is configured."""
    origin = headers.get("Origin")
    return not config.allowed_origins or origin is None or origin in config.allowed_origins
