"""deploy/nginx: real nginx on loopback in front of two real `asr serve` replicas (the tiny model).

Sessions stream through nginx over WebSocket and get their finals; the page, /healthz and each
replica's /metrics are reachable through it; a replica sent SIGTERM drains (its open session gets its
final) and the next session goes to the other replica. Needs the nginx binary (install.sh --test).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from asr.audio import load_audio
from asr.data import read_manifest
from asr.inference import InferenceConfig
from asr.models.io import load_model_dir
from server.client import astream_file
from streaming import Recognizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "nginx"))
from render import parse_ports, render, render_standalone  # noqa: E402

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)),
                                      None)
START = json.dumps({"type": "start", "sample_rate": 16000, "format": "s16le"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _until(check, what: str, timeout: float = 120.0):
    """Poll ``check()`` until it returns something truthy (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_render_writes_every_replica() -> None:
    assert parse_ports("8765-8767,9000") == [8765, 8766, 8767, 9000]
    conf = render(["127.0.0.1:8765", "10.0.0.2:8765"], listen="8080")
    assert conf.count("max_fails=1 fail_timeout=10s;") == 2 and "least_conn;" in conf
    assert "location = /replica/1/metrics { proxy_pass http://10.0.0.2:8765/metrics; }" in conf
    example = (ROOT / "deploy" / "nginx" / "asr.conf").read_text()
    assert example == render(["127.0.0.1:8765", "127.0.0.1:8766"], listen="8080")  # the shipped example is current
    with pytest.raises(ValueError, match="at least one replica"):
        render([])


@pytest.fixture
def utterances(tts_corpus, tiny_model_dir, tmp_path):
    """Two TTS utterances as 16 kHz 16-bit wav files and samples (what the server takes), with the
    text a Recognizer with the replicas' settings gives on them (what the replicas must send, not
    what the tiny model should hear)."""
    rows = read_manifest(tts_corpus / "all.jsonl")
    loaded = load_model_dir(tiny_model_dir)
    out = []
    for row in (rows[2], rows[4]):
        path = tmp_path / f"{row['id']}.wav"
        sf.write(path, load_audio(row["audio"]).numpy(), 16000, subtype="PCM_16")
        pcm, _ = sf.read(path, dtype="int16")
        rec = Recognizer(loaded, InferenceConfig(decoder="sar", block_ms=320))
        results = rec.accept_waveform(pcm.astype(np.float32) / 32768.0) + rec.finalize()
        text = " ".join(r.text for r in results if r.is_final and r.text)
        assert text
        out.append((path, pcm, text))
    return out


@pytest.mark.skipif(NGINX is None, reason="the nginx binary is missing: run ./install.sh --test (Debian package nginx)")
def test_two_replicas_behind_nginx_and_a_draining_one(tiny_model_dir, utterances, tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs: list[subprocess.Popen] = []
    try:
        ports = []
        for i in range(2):
            log = tmp_path / f"replica{i}.log"
            with open(log, "w") as f:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "blockasr", "serve", "--model", str(tiny_model_dir), "--port", "0",
                     "--decoder", "sar", "--block-ms", "320", "--drain-timeout", "60"],
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f))
            ports.append(int(_until(lambda: re.search(r"on ws://127\.0\.0\.1:(\d+)/asr", log.read_text()),
                                    f"replica {i} to listen").group(1)))
        prefix = tmp_path / "nginx"
        (prefix / "tmp").mkdir(parents=True)
        front = _free_port()
        snippet = render([f"127.0.0.1:{p}" for p in ports], listen=f"127.0.0.1:{front}")
        (prefix / "nginx.conf").write_text(render_standalone(str(prefix), snippet))
        nginx = subprocess.Popen([NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"),
                                  "-c", str(prefix / "nginx.conf")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(nginx)
        http = f"http://127.0.0.1:{front}"
        _until(lambda: nginx.poll() is not None or _get(f"{http}/healthz")[0] == 200, "nginx to answer")
        assert nginx.poll() is None, nginx.stderr.read()

        # the page, the service's health, each replica's health and metrics
        status, page = _get(f"{http}/")
        assert status == 200 and "new WebSocket(wsUrl)" in page
        assert _get(f"{http}/worklet.js")[0] == 200
        status, body = _get(f"{http}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        for i in range(2):
            status, body = _get(f"{http}/replica/{i}/metrics")
            assert status == 200 and _metric(body, "asr_sessions") == 0
            assert json.loads(_get(f"{http}/replica/{i}/healthz")[1])["status"] == "ok"
        status, body = _get(f"{http}/metrics")
        assert status == 404 and "/replica/N/metrics" in body

        (path_a, pcm_a, text_a), (path_b, _, text_b) = utterances

        async def main():
            # session A through nginx: all its audio sent, no "end"; find its replica
            ws = await connect(f"ws://127.0.0.1:{front}/asr")
            await ws.send(START)
            assert json.loads(await ws.recv())["type"] == "ready"
            for s in range(0, pcm_a.size, 1600):
                await ws.send(pcm_a[s:s + 1600].astype("<i2").tobytes())

            def replica_of_a():
                for i in range(2):
                    body = _get(f"{http}/replica/{i}/metrics")[1]
                    received = _metric(body, "asr_audio_seconds_total") * 16000  # rounded to 1 ms
                    if _metric(body, "asr_sessions") == 1 and received >= pcm_a.size - 8:
                        return str(i)

            r = int(await asyncio.to_thread(_until, replica_of_a, "session A's audio to reach a replica"))
            procs[r].send_signal(signal.SIGTERM)  # drain: A still gets the final of all its audio
            replies = [json.loads(m) async for m in ws]
            finals = [m["text"] for m in replies if m["type"] == "final" and m["text"]]
            assert " ".join(finals) == text_a
            assert replies[-1]["type"] == "done" and replies[-1]["reason"] == "shutting_down"
            assert ws.close_code == 1001
            assert await asyncio.to_thread(procs[r].wait, 60) == 0  # the replica exits cleanly

            # the next session goes to the other replica, through nginx
            other = 1 - r
            before = _metric(_get(f"{http}/replica/{other}/metrics")[1], "asr_sessions_total")
            transcript = await astream_file(f"ws://127.0.0.1:{front}/asr", path_b)
            assert transcript.text == text_b and transcript.cut is None
            assert _metric(_get(f"{http}/replica/{other}/metrics")[1], "asr_sessions_total") == before + 1
            return r

        r = asyncio.run(asyncio.wait_for(main(), timeout=300))
        assert _get(f"{http}/replica/{r}/healthz")[0] == 502  # the stopped replica, seen through nginx
        assert _get(f"{http}/healthz")[0] == 200  # the service: the other replica answers
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
