"""`asr serve` and `asr stream`: argument parsing and readable errors around the server and client.

`asr/cli` calls `serve_main(argv)` and `stream_main(argv)`; each returns the process exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from asr.inference import (add_inference_arguments, add_session_arguments, inference_config_from_args,
                           session_overrides_from_args)

from .config import ServerConfig

__all__ = ["build_serve_parser", "build_stream_parser", "config_from_args", "serve_main", "stream_main"]

_TOKEN_ENV = "ASR_SERVER_TOKEN"


def _seconds_or_none(value: str) -> float | None:
    return None if value == "none" else float(value)


def build_serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asr serve",
        description="Serve a model over WebSocket: native protocol on /asr, Vosk-compatible on /vosk, "
        "WeNet-compatible on /wenet (and auto-detected on /); the browser microphone page on "
        "http://HOST:PORT/, /healthz and /metrics on the same port.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_inference_arguments(p)  # the sessions' defaults; a native start message may override the session fields
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="interface to bind; use 0.0.0.0 to accept other machines")
    net.add_argument("--port", type=int, default=8765, help="TCP port")
    net.add_argument("--certfile", help="TLS certificate (PEM); with --keyfile serves wss:// and https://")
    net.add_argument("--keyfile", help="TLS private key (PEM)")
    sec = p.add_argument_group("limits and access")
    sec.add_argument("--max-sessions", type=int, default=64, help="concurrent streams; more get HTTP 503")
    sec.add_argument("--max-frame-bytes", type=int, default=65536, help="largest binary audio message")
    sec.add_argument("--idle-timeout", type=float, default=30.0, help="seconds without a message before a session is closed")
    sec.add_argument("--max-session-s", type=_seconds_or_none, default=6 * 3600.0,
                     help="audio seconds per session, or 'none'")
    sec.add_argument("--token", default=argparse.SUPPRESS,
                     help=f"require 'Authorization: Bearer TOKEN' or ?token=TOKEN; default: ${_TOKEN_ENV} if set")
    sec.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                     help="accept browser sessions only from this Origin (repeatable; none: any origin)")
    perf = p.add_argument_group("scheduling")
    perf.add_argument("--max-batch", type=int, default=32, help="streams per model call")
    perf.add_argument("--batch-window", type=float, default=0.0,
                      help="seconds between model passes at least, so that more streams share one (batched) pass; "
                           "adds up to this much latency (0: a pass as soon as audio arrives)")
    perf.add_argument("--hold", type=float, default=1.0, metavar="S",
                      help="a session whose audio does not yet complete a block waits out of the model passes for "
                           "up to S seconds (such audio gives no result; 0: every session joins every pass)")
    perf.add_argument("--workers", type=int, default=0,
                      help="front processes that speak WebSocket/HTTP on the one port, with the model in one more "
                           "process, so that socket and JSON work does not share the model loop's GIL "
                           "(0: everything in this process)")
    perf.add_argument("--warmup-streams", type=int, default=8, metavar="N",
                      help="before the first session, run N throwaway streams through the model's batched path, "
                           "so that one-time costs (CUDA kernels loaded on first use, cache pools) do not fall on "
                           "the first sessions (0: no warm-up)")
    perf.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish open sessions on SIGTERM")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _token(args: argparse.Namespace) -> str | None:
    """--token, else $ASR_SERVER_TOKEN (never shown by --help, so the secret is not printed)."""
    return getattr(args, "token", None) or os.environ.get(_TOKEN_ENV) or None


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    try:
        return ServerConfig(
            host=args.host,
            port=args.port,
            model_name=Path(args.model).name if args.model else "default",
            inference=inference_config_from_args(args, serving=True),
            max_sessions=args.max_sessions,
            max_frame_bytes=args.max_frame_bytes,
            idle_timeout_s=args.idle_timeout,
            max_session_s=args.max_session_s,
            token=_token(args),
            certfile=args.certfile,
            keyfile=args.keyfile,
            allowed_origins=tuple(args.allow_origin),
            max_batch=args.max_batch,
            batch_window_s=args.batch_window,
            hold_s=args.hold,
            warmup_streams=args.warmup_streams,
            drain_timeout_s=args.drain_timeout,
        )
    except ValueError as exc:
        build_serve_parser().error(str(exc))
        raise  # unreachable: error() exits


def serve_main(argv: Sequence[str] | None = None) -> int:
    args = build_serve_parser().parse_args(argv)
    if args.model is None:
        from asr.models.io import default_model_dir

        args.model = str(default_model_dir())
    if args.workers < 0:
        build_serve_parser().error(f"--workers must be >= 0, got {args.workers}")
    config = config_from_args(args)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for path in (config.certfile, config.keyfile):
        if path is not None and not Path(path).is_file():
            print(f"asr serve: TLS file not found: {path}", file=sys.stderr)
            return 2
    if args.workers > 0:
        return _serve_workers(config, args)
    try:
        import streaming  # the lead's package; heavy (torch), so imported only here

        factory = streaming.make_recognizer_factory(config.inference)
    except (OSError, ValueError, ImportError) as exc:
        print(f"asr serve: cannot load model {args.model}: {exc}", file=sys.stderr)
        return 2
    from .app import run_server
    from .scheduler import freeze_loaded_objects, warm_up

    warm_up(factory, config.warmup_streams)
    freeze_loaded_objects()

    def ready(server: Any) -> None:
        print(_ready_line(config, server.url), file=sys.stderr, flush=True)

    try:
        run_server(config, factory, on_ready=ready)
    except OSError as exc:  # port in use, permission denied, bad certificate
        print(f"asr serve: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 2
    return 0


def _ready_line(config: ServerConfig, url: str) -> str:
    http = url.replace("ws", "http", 1)
    return (f"serving {config.model_name} on {url}/asr (Vosk: /vosk, WeNet: /wenet); "
            f"browser page {http}/, health {http}/healthz")


def _serve_workers(config: ServerConfig, args: argparse.Namespace) -> int:
    """`--workers N`: the model loads in its own process (server/workers.py)."""
    import functools

    from .workers import WorkerError, run_workers, streaming_factory

    def ready(pool: Any) -> None:
        print(_ready_line(config, pool.url) + f"; {args.workers} front processes", file=sys.stderr, flush=True)

    try:
        return run_workers(config, functools.partial(streaming_factory, config.inference), args.workers,
                           on_ready=ready, log_level=args.log_level)
    except WorkerError as exc:
        print(f"asr serve: cannot load model {args.model}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"asr serve: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 2


def build_stream_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asr stream",
        description="Stream an audio file or the microphone to a running `asr serve` and print the text.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("audio", nargs="?", help="audio file (any format soundfile reads); omit with --mic")
    p.add_argument("--url", default="ws://127.0.0.1:8765/asr", help="server URL (ws:// or wss://)")
    p.add_argument("--mic", action="store_true", help="stream the default microphone until Ctrl-C (needs sounddevice)")
    p.add_argument("--chunk-ms", type=int, default=100, help="audio per WebSocket message")
    p.add_argument("--realtime", action="store_true", help="send the file at its real speed instead of at once")
    add_session_arguments(p)
    p.add_argument("--token", default=argparse.SUPPRESS, help=f"bearer token; default: ${_TOKEN_ENV} if set")
    p.add_argument("--insecure", action="store_true", help="accept a self-signed TLS certificate")
    p.add_argument("--json", action="store_true", help="print every server message as a JSON line")
    return p


def _printer(as_json: bool):
    tty = sys.stderr.isatty()

    def on_message(msg: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(msg, ensure_ascii=False), flush=True)
        elif msg.get("type") == "partial" and tty:
            print("\r\033[K" + msg["text"], end="", file=sys.stderr, flush=True)
        elif msg.get("type") == "final":
            if tty:
                print("\r\033[K", end="", file=sys.stderr, flush=True)
            if msg["text"]:
                print(msg["text"], flush=True)

    return on_message


def stream_main(argv: Sequence[str] | None = None) -> int:
    parser = build_stream_parser()
    args = parser.parse_args(argv)
    if args.mic == (args.audio is not None):
        parser.error("give an audio file or --mic (not both)")
    if args.chunk_ms <= 0:
        parser.error("--chunk-ms must be positive")
    from .client import ClientError, shortfall, stream_file, stream_microphone

    start = session_overrides_from_args(args)
    kwargs = dict(start=start, token=_token(args), on_message=_printer(args.json), insecure=args.insecure)
    try:
        if args.mic:
            transcript = stream_microphone(args.url, args.chunk_ms, **kwargs)
        else:
            transcript = stream_file(args.url, args.audio, args.chunk_ms, args.realtime, **kwargs)
    except ClientError as exc:
        print(f"asr stream: {exc}", file=sys.stderr)
        if (warning := shortfall(exc.transcript)) is not None:
            print(f"asr stream: warning: {warning}", file=sys.stderr)
        return 1
    except OSError as exc:  # connection refused, DNS, TLS
        print(f"asr stream: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # websockets.InvalidStatus (401/403/503), InvalidURI, ...
        print(f"asr stream: {args.url}: {exc}", file=sys.stderr)
        return 1
    if (warning := shortfall(transcript)) is not None:  # the server cut the stream short
        print(f"asr stream: warning: {warning}", file=sys.stderr)
        return 1
    return 0
