"""Plain HTTP on the WebSocket port (/, /worklet.js, /healthz, /metrics), TLS, and the CLI parsers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_server_fake import direct_finals, make_audio, run, running  # noqa: E402

from server.client import astream_frames  # noqa: E402


def _get(url: str, headers: dict | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


async def _aget(url: str, **kw) -> tuple[int, str, str]:
    return await asyncio.to_thread(_get, url, **kw)


def test_pages_and_healthz() -> None:
    async def main():
        async with running() as server:
            base = server.url.replace("ws://", "http://")
            return [await _aget(base + p) for p in ("/", "/worklet.js", "/healthz", "/nope")]

    (index, worklet, health, missing) = run(main())
    assert index[0] == 200 and index[1].startswith("text/html") and "getUserMedia" in index[2]
    assert worklet[0] == 200 and "javascript" in worklet[1] and "registerProcessor" in worklet[2]
    assert health[0] == 200 and health[1] == "application/json"
    info = json.loads(health[2])
    assert info["status"] == "ok" and info["model"] == "fake" and info["decoder"] == "sar" and info["block_ms"] == 640
    assert info["sessions"] == 0 and info["waiting"] == 0 and info["uptime_s"] >= 0
    assert missing[0] == 404


def test_metrics_count_sessions_audio_latency_errors() -> None:
    pcm = make_audio(2.0, 1)

    async def main():
        async with running(token="tok") as server:
            base = server.url.replace("ws://", "http://")
            unauthorized = await _aget(base + "/metrics")
            await astream_frames(server.url, [pcm[i : i + 4000] for i in range(0, pcm.size, 4000)], token="tok")
            await astream_frames(server.url, [pcm], token="tok", start={"sample_rate": 8000})  # 8 kHz client
            from websockets.asyncio.client import connect

            async with connect(server.url + "/asr?token=tok") as ws:
                await ws.send("{oops")
                await ws.recv()
            return unauthorized, await _aget(base + "/metrics", headers={"Authorization": "Bearer tok"})

    unauthorized, (status, ctype, body) = run(main())
    assert unauthorized[0] == 401
    assert status == 200 and ctype.startswith("text/plain")
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values["asr_sessions"] == 0 and values["asr_connections_waiting"] == 0
    assert values["asr_sessions_total"] == 2  # the "{oops" connection never started a stream
    assert values['asr_sessions_by_protocol_total{protocol="native"}'] == 2
    assert values["asr_audio_seconds_total"] == pytest.approx(pcm.size / 16000 + pcm.size / 8000, abs=1e-3)
    assert values["asr_final_latency_seconds_count"] == 2
    passes = values["asr_model_pass_seconds_count"]
    assert passes > 0 and values["asr_model_pass_rtf_count"] > 0 and values["asr_model_pass_streams_total"] >= passes
    assert values["process_resident_memory_bytes"] > 10e6
    assert values["asr_partial_latency_seconds_count"] > 0
    assert values['asr_partial_latency_seconds_bucket{le="+Inf"}'] == values["asr_partial_latency_seconds_count"]
    assert values['asr_errors_total{code="bad_json"}'] == 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    pcm = make_audio(1.5, 2)

    async def main():
        async with running(certfile=str(cert), keyfile=str(key)) as server:
            assert server.url.startswith("wss://")
            insecure = ssl._create_unverified_context()
            health = await _aget(server.url.replace("wss://", "https://") + "/healthz", context=insecure)
            return health, await astream_frames(server.url, [pcm], insecure=True)

    (status, _, _), transcript = run(main())
    assert status == 200 and [f["text"] for f in transcript.finals] == direct_finals(pcm)


def test_cli_parsers_and_config() -> None:
    from server.cli import build_serve_parser, build_stream_parser, config_from_args

    args = build_serve_parser().parse_args(
        ["--model", "m", "--max-sessions", "3", "--token", "t", "--allow-origin", "http://a", "--block-ms", "320"]
    )
    config = config_from_args(args)
    assert (config.host, config.port, config.max_sessions, config.token) == ("127.0.0.1", 8765, 3, "t")
    assert config.allowed_origins == ("http://a",) and config.inference.block_ms == 320
    with pytest.raises(SystemExit):
        config_from_args(build_serve_parser().parse_args(["--model", "m", "--certfile", "c.pem"]))
    stream = build_stream_parser().parse_args(["a.wav", "--realtime", "--chunk-ms", "200"])
    assert stream.realtime and stream.chunk_ms == 200 and stream.url == "ws://127.0.0.1:8765/asr"


def test_stream_cli_prints_finals(tmp_path, capsys) -> None:
    import soundfile as sf

    from server.cli import stream_main

    pcm = make_audio(2.0, 3)
    wav = tmp_path / "a.wav"
    sf.write(wav, pcm, 16000, subtype="PCM_16")

    async def main():
        async with running() as server:
            ok = await asyncio.to_thread(stream_main, [str(wav), "--url", server.url + "/asr", "--chunk-ms", "250"])
            bad = await asyncio.to_thread(stream_main, [str(wav), "--url", server.url + "/asr", "--block-ms", "100"])
            return ok, bad

    ok, bad = run(main())
    out, err = capsys.readouterr()
    assert ok == 0 and out.split("\n")[:-1] == [t for t in direct_finals(pcm) if t]
    assert bad == 1 and "bad_option" in err and "multiple of 40" in err
