"""blockasr streaming server: WebSocket (native `/asr`, Vosk `/vosk`, WeNet `/wenet`), plain HTTP
(`/`, `/healthz`, `/metrics`) and a Python client. See docs/INTERFACES.md and docs/DESIGN.md."""

from .app import AsrServer, run_server, serve
from .config import ServerConfig

__all__ = ["AsrServer", "ServerConfig", "run_server", "serve"]
