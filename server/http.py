"""Plain HTTP on the WebSocket port, and the checks every WebSocket handshake passes.

`GET /` the browser microphone page (and `/worklet.js`), `GET /healthz` JSON liveness and model
info, `GET /metrics` Prometheus text. A WebSocket handshake on `/`, `/asr`, `/vosk` or `/wenet`
is checked for Origin (403), token (401), shutdown and session count (503) before it is accepted.
"""

from __future__ import annotations

import http
import json
import time
from pathlib import Path
from typing import Callable

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from .limits import authorized, origin_allowed
from .session import Context

__all__ = ["WEBSOCKET_PATHS", "make_process_request", "healthz"]

WEBSOCKET_PATHS = ("/", "/asr", "/vosk", "/wenet")
_STATIC_DIR = Path(__file__).parent / "static"
_STATIC = {  # URL path -> (file name, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/worklet.js": ("worklet.js", "text/javascript; charset=utf-8"),
}


def healthz(ctx: Context) -> dict[str, object]:
    return {
        "status": "draining" if ctx.draining.is_set() else "ok",
        "model": ctx.config.model_name,
        "decoder": ctx.config.inference.decoder,
        "block_ms": ctx.config.inference.block_ms,
        "uptime_s": round(time.monotonic() - ctx.started_at, 3),
        "sessions": ctx.metrics.sessions,
        "waiting": ctx.metrics.waiting,
        "max_sessions": ctx.config.max_sessions,
    }


def _response(
    conn: ServerConnection, status: http.HTTPStatus, body: str, content_type: str, **headers: str
) -> Response:
    response = conn.respond(status, body)
    del response.headers["Content-Type"]  # websockets' Headers is multi-valued: replace, not add
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def _is_upgrade(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


def make_process_request(ctx: Context) -> Callable[[ServerConnection, Request], Response | None]:
    """The `process_request` hook for `websockets.asyncio.server.serve`.

    Returns None to let a WebSocket handshake proceed, else the HTTP response to send.
    """
    static = {path: ((_STATIC_DIR / name).read_text(encoding="utf-8"), ctype) for path, (name, ctype) in _STATIC.items()}
    text = "text/plain; charset=utf-8"

    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if _is_upgrade(request):
            if path not in WEBSOCKET_PATHS:
                return _response(conn, http.HTTPStatus.NOT_FOUND, f"no WebSocket endpoint at {path}\n", text)
            if not origin_allowed(ctx.config, request.headers):
                ctx.metrics.error("forbidden_origin")
                return _response(conn, http.HTTPStatus.FORBIDDEN, "Origin not allowed\n", text)
            if not authorized(ctx.config, request.path, request.headers):
                ctx.metrics.error("unauthorized")
                return _response(
                    conn, http.HTTPStatus.UNAUTHORIZED, "missing or wrong token\n", text, WWW_Authenticate="Bearer"
                )
            if ctx.draining.is_set():
                return _response(conn, http.HTTPStatus.SERVICE_UNAVAILABLE, "server is shutting down\n", text)
            if ctx.metrics.sessions >= ctx.config.max_sessions:
                ctx.metrics.error("server_busy")
                return _response(
                    conn, http.HTTPStatus.SERVICE_UNAVAILABLE, "too many sessions, try again later\n", text,
                    Retry_After="1",
                )
            return None
        if path in static:
            body, ctype = static[path]
            return _response(conn, http.HTTPStatus.OK, body, ctype)
        if path == "/healthz":
            return _response(conn, http.HTTPStatus.OK, json.dumps(healthz(ctx)) + "\n", "application/json")
        if path == "/metrics":
            if not authorized(ctx.config, request.path, request.headers):
                return _response(
                    conn, http.HTTPStatus.UNAUTHORIZED, "missing or wrong token\n", text, WWW_Authenticate="Bearer"
                )
            return _response(conn, http.HTTPStatus.OK, ctx.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        return _response(conn, http.HTTPStatus.NOT_FOUND, f"not found: {path}\n", text)

    return process_request
