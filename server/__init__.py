"""blockasr streaming server: WebSocket (native `/asr`, Vosk `/vosk`, WeNet `/wenet`), plain HTTP
(`/`, `/healthz`, `/metrics`) and a Python client. See docs/PROTOCOL.md and docs/DESIGN.md.

The names below are imported on first use (PEP 562), so that `asr serve --help` (server.cli) does not
import the app, numpy or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import AsrServer, run_server, serve
    from .config import ServerConfig

__all__ = ["AsrServer", "ServerConfig", "run_server", "serve"]


def __getattr__(name: str) -> Any:
    if name == "ServerConfig":
        from .config import ServerConfig

        return ServerConfig
    if name in ("AsrServer", "run_server", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'server' has no attribute {name!r}")
