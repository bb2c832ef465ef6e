"""Soak through the server: one long `asr stream` session against `asr serve`, server RSS sampled.

    python benchmarks/soak_server.py                  # 60 min of audio, decoder sar
    python benchmarks/soak_server.py --minutes 10 --decoder ctc

`asr serve` runs in a child process (models/default, ``--decoder``); `asr stream` sends it the
looped samples/*.wav (``--minutes``, :func:`soak.looped_audio`) without ``--realtime``, so as fast
as the server's back-pressure lets it (the server processes at most ``max_chunk_s`` per pass and
buffers at most ``max_pending_s``). Every ``--every-s`` seconds of wall time the server's VmRSS is
read, with the audio seconds it has received (`GET /metrics`; at most max_pending_s ahead of the processed). At the end: the client's exit
status, the words it printed, and the RSS growth from the first sample after 1 received audio
minute to the last. Writes benchmarks/results/soak_server.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from soak import looped_audio, vm_rss_mb  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _audio_received_s(port: int) -> float | None:
    """The audio seconds the server has received (its Prometheus counter), or None if unreadable."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("asr_audio_seconds_total") or line.startswith("asr_audio_received_seconds_total"):
            return float(line.split()[-1])
    return None


def _wait_ready(port: int, server: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise SystemExit(f"asr serve exited with {server.returncode} before it was ready")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"asr serve was not ready within {timeout:g} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", default="sar")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--every-s", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak_server"))
    args = p.parse_args()
    import soundfile as sf

    port = _free_port()
    asr = [sys.executable, "-m", "blockasr"]
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        sf.write(wav, looped_audio(args.minutes), 16000)
        server = subprocess.Popen([*asr, "serve", "--port", str(port), "--decoder", args.decoder,
                                   "--threads", str(args.threads), "--log-level", "WARNING"],
                                  stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "server.log", "w"))
        try:
            _wait_ready(port, server)
            began = time.monotonic()
            text_path = Path(tmp) / "text.txt"
            client = subprocess.Popen([*asr, "stream", str(wav), "--url", f"ws://127.0.0.1:{port}/asr"],
                                      stdout=open(text_path, "w"), stderr=subprocess.PIPE, text=True)
            samples = []
            while True:
                samples.append({"wall_s": round(time.monotonic() - began, 1), "rss_mb": vm_rss_mb(server.pid),
                                "audio_s": _audio_received_s(port)})
                print(samples[-1], flush=True)
                try:
                    client.wait(timeout=args.every_s)
                    break
                except subprocess.TimeoutExpired:
                    pass
            samples.append({"wall_s": round(time.monotonic() - began, 1), "rss_mb": vm_rss_mb(server.pid),
                            "audio_s": _audio_received_s(port)})
            words = len(text_path.read_text().split())
            client_err = client.stderr.read()[-2000:]
        finally:
            server.terminate()
            server.wait(timeout=60)
    after_1min = [s for s in samples if s["audio_s"] is not None and s["audio_s"] >= 60] or samples[1:] or samples
    first, last = after_1min[0], samples[-1]
    result = {"decoder": args.decoder, "minutes": args.minutes, "client_returncode": client.returncode,
              "client_stderr_tail": client_err, "words": words, "wall_s": last["wall_s"],
              "rss_first_mb": first["rss_mb"], "rss_last_mb": last["rss_mb"],
              "rss_growth_mb": round(last["rss_mb"] - first["rss_mb"], 1), "samples": samples,
              "cpus": os.cpu_count(), "load_1min_end": round(os.getloadavg()[0], 2)}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(
        f"# Soak through the server ({args.minutes:g} min of looped samples/*.wav, decoder {args.decoder})\n\n"
        f"`python benchmarks/soak_server.py --minutes {args.minutes:g} --decoder {args.decoder}`: one `asr stream` "
        f"session (no --realtime) against `asr serve --threads {args.threads}`, server VmRSS every {args.every_s:g} s "
        f"of wall time; {os.cpu_count()} CPUs, load {result['load_1min_end']} at the end.\n\n"
        "| measure | value |\n|---|---|\n"
        f"| client exit status | {client.returncode} |\n| words printed | {words} |\n"
        f"| wall time | {last['wall_s']:.0f} s ({args.minutes * 60 / max(last['wall_s'], 1e-9):.1f}x real time) |\n"
        f"| server RSS at {first['audio_s'] or 0:.0f} audio s -> end (MiB) | {first['rss_mb']:.1f} -> "
        f"{last['rss_mb']:.1f} ({result['rss_growth_mb']:+.1f}) |\n")
    print(out.with_suffix(".md").read_text())
    return 0 if client.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
