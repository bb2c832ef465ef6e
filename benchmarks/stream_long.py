"""`asr stream` of a long file at full speed through a real server on loopback.

Writes a WAV of `--minutes` of audio (a sample looped with short pauses, or noise bursts for the fake
recognizer), starts `asr serve`-equivalent in a child process (the fake recognizer by default, or
`--model DIR`), runs `asr stream FILE` (no --realtime) and reports its exit status, wall time, the
audio it sent and the server processed, the server's RSS before and after, and its error counters
(a keepalive timeout would show as a failed stream).

    python benchmarks/stream_long.py --minutes 60
    python benchmarks/stream_long.py --minutes 20 --model models/default

Writes benchmarks/results/stream_long.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from fuzz_server import _rss_mb, good_audio  # noqa: E402  (_rss_mb: proc_mem.vm_rss_mb, NaN once gone)

_SERVE = """
import sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from server.app import run_server
from server.config import ServerConfig
if {model!r}:
    import streaming
    factory = streaming.make_recognizer_factory({model!r}, "sar", 640)
else:
    from test_server_fake import FakeFactory
    factory = FakeFactory()  # one session: the recognizer it keeps is the one in use
run_server(ServerConfig(port=0, max_session_s=None), factory, on_ready=lambda s: print(s.port, flush=True))
"""


def _audio(minutes: float, sample: str | None) -> np.ndarray:
    if sample is None:
        return good_audio(minutes * 60, 5)
    x, sr = sf.read(sample, dtype="int16")
    assert sr == 16000, "the sample must be 16 kHz"
    unit = np.concatenate([x, np.zeros(8000, np.int16)])
    return np.tile(unit, int(np.ceil(minutes * 60 * 16000 / unit.size)))[: int(minutes * 60 * 16000)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--model", default="", help="model directory (default: the fake recognizer)")
    p.add_argument("--sample", default=None, help="16 kHz wav to loop (default with --model: samples/so3027_what_in_short.wav)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stream_long"))
    args = p.parse_args()
    sample = args.sample or (str(ROOT / "samples" / "so3027_what_in_short.wav") if args.model else None)
    pcm = _audio(args.minutes, sample)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE.format(root=str(ROOT), tests=str(ROOT / "tests"), model=args.model)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        sf.write(wav, pcm, 16000, subtype="PCM_16")
        try:
            port = int(proc.stdout.readline())
            rss_before = _rss_mb(proc.pid)
            began = time.monotonic()
            client = subprocess.run(
                [sys.executable, "-m", "blockasr", "stream", str(wav), "--url", f"ws://127.0.0.1:{port}", "--json"],
                cwd=ROOT, capture_output=True, text=True,
            )
            wall = time.monotonic() - began
            rss_after = _rss_mb(proc.pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                metrics = r.read().decode()
        finally:
            proc.terminate()  # SIGTERM: the server drains and exits
            stopping = time.monotonic()
            try:
                exit_status = proc.wait(300)
            except subprocess.TimeoutExpired:
                proc.kill()
                exit_status = "killed after 300 s"
            exit_s = time.monotonic() - stopping
    messages = [json.loads(line) for line in client.stdout.splitlines() if line.startswith("{")]
    done = [m for m in messages if m.get("type") == "done"]
    acks = sum(m.get("type") == "ack" for m in messages)
    finals = sum(m.get("type") == "final" for m in messages)
    errors = [line for line in metrics.splitlines() if line.startswith("asr_errors_total")]
    rows = [
        ("audio (min)", f"{args.minutes:g}"),
        ("model", args.model or "fake recognizer"),
        ("asr stream exit status", client.returncode),
        ("wall time (s)", f"{wall:.1f}"),
        ("speed (x real time)", f"{pcm.size / 16000 / wall:.1f}"),
        ("server processed (s, from done)", done[-1]["audio_s"] if done else "no done"),
        ("finals / acks received", f"{finals} / {acks}"),
        ("server RSS before / after (MB)", f"{rss_before:.1f} / {rss_after:.1f}"),
        ("server error counters", ", ".join(errors) or "none"),
        ("client stderr", client.stderr.strip().replace("\n", " ")[:200] or "empty"),
        ("server exit status after SIGTERM (time to exit, s)", f"{exit_status} ({exit_s:.1f})"),
    ]
    text = "\n".join(["# stream_long", "", f"`python benchmarks/stream_long.py --minutes {args.minutes:g}"
                      f"{' --model ' + args.model if args.model else ''}`", "", "| | |", "|---|---|",
                      *[f"| {k} | {v} |" for k, v in rows], ""])
    print(text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(dict(rows), indent=1, default=str))


if __name__ == "__main__":
    main()
