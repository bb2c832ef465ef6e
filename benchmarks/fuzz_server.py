"""Hostile-input run against the streaming server: malformed and hostile traffic on /asr, /vosk and
/wenet while a well-formed session streams; the good session's text must equal its text alone.

Hostile traffic (every kind on every path, round robin, `--messages` messages in all):
malformed JSON, wrong types, absurd sample rates, audio before start, start twice, end twice,
frames over the limit (and far over: the WebSocket layer's own limit), invalid UTF-8 in text
frames, random bytes, disconnects in the middle of a frame; plus `--idle` connections that never
start a stream (held open the whole run) and one client that streams but never reads.

    python benchmarks/fuzz_server.py                       # fake model (deterministic), 10,000 messages
    python benchmarks/fuzz_server.py --model models/default  # the real model as the good session's

The server runs in a child process (its RSS is measured from /proc before and after; a crash is
the child dying or an `internal` error). Writes benchmarks/results/fuzz_server.{md,json}.
`run_fuzz(url, ...)` is the part the slow test runs against an in-process server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from proc_mem import vm_rss_mb  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidHandshake  # noqa: E402

from server.client import astream_frames  # noqa: E402

PATHS = ("/asr", "/vosk", "/wenet")
START = {
    "/asr": json.dumps({"type": "start", "sample_rate": 16000, "format": "s16le"}),
    "/vosk": json.dumps({"config": {"sample_rate": 16000}}),
    "/wenet": json.dumps({"signal": "start", "nbest": 1, "continuous_decoding": True}),
}
END = {"/asr": json.dumps({"type": "end"}), "/vosk": '{"eof" : 1}', "/wenet": json.dumps({"signal": "end"})}


@dataclass
class FuzzReport:
    messages: int = 0  # hostile messages sent
    connections: int = 0  # hostile connections opened
    refused: int = 0  # handshakes the server refused (503 while full, ...)
    idle_held: int = 0  # idle connections opened
    idle_closed_by_server: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)  # error codes in the replies
    good_text_alone: str = ""
    good_text_under_fuzz: str = ""
    wall_s: float = 0.0

    @property
    def good_unaffected(self) -> bool:
        return self.good_text_alone == self.good_text_under_fuzz


def good_audio(seconds: float = 20.0, seed: int = 7) -> np.ndarray:
    """(n,) int16: noise bursts and silences (several segments for the fake recognizer)."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < seconds * 16000:
        speech = int(rng.integers(2, 12)) * 1600 + int(rng.integers(0, 1600))
        parts.append((rng.standard_normal(speech) * 3000).clip(-32768, 32767).astype(np.int16))
        parts.append(np.zeros(int(rng.integers(1, 4)) * 1600 + 800, dtype=np.int16))
        total += speech + parts[-1].size
    return np.concatenate(parts)[: int(seconds * 16000)]


def _cases(path: str, rng: random.Random, max_frame_bytes: int) -> list[tuple[str, list]]:
    """(kind, messages) for one hostile connection on `path`; a message is str, bytes, or a tuple
    ("utf8", bytes) for a text frame with invalid UTF-8, or ("cut",) for a disconnect mid-frame."""
    start, end = START[path], END[path]
    audio = struct.pack("<800h", *[rng.randint(-3000, 3000) for _ in range(800)])
    noise = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 3000)))
    big = b"\x00" * (max_frame_bytes + 2)
    return [
        ("bad_json", [rng.choice(["{not json", "[1, 2]", "", "null", '{"a":', "[" * 100000, '"just a string"'])]),
        ("wrong_types", [rng.choice([
            json.dumps({"type": "start", "sample_rate": "16000"}), json.dumps({"type": 5}),
            json.dumps({"type": "start", "block_ms": "x"}), json.dumps({"type": "start", "nbest": -1}),
            json.dumps({"config": []}), json.dumps({"signal": 1}), json.dumps({"signal": "start", "nbest": True}),
            json.dumps({"type": "start", "decoder": 5}), json.dumps({"config": {"max_alternatives": "a"}}),
        ])]),
        ("absurd_rate", [rng.choice([
            json.dumps({"type": "start", "sample_rate": r}) if path == "/asr" else json.dumps({"config": {"sample_rate": r}})
            for r in (0, -1, 1e308, 8000, 2**63, 44100.5)
        ] + ['{"type": "start", "sample_rate": NaN}', '{"config": {"sample_rate": Infinity}}'])]),
        ("audio_before_start", [audio, audio]),
        ("start_twice", [start, start]),
        ("end_twice", [start, audio, end, end]),
        ("frame_over_limit", [start, big]),
        ("frame_far_over_limit", [start, b"\x00" * (4 * max_frame_bytes + 2)]),
        ("invalid_utf8", [start, ("utf8", b"\xff\xfe{\"type\": \"end\"}")]),
        ("random_bytes", [start] + [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 800))) for _ in range(6)] + [end]),
        ("random_first", [noise]),
        ("cut_mid_frame", [start, audio, ("cut",)]),
    ]


async def _hostile(url: str, path: str, messages: list, report: FuzzReport) -> None:
    try:
        ws = await connect(url + path, max_size=None, open_timeout=30)
    except (InvalidStatus, InvalidHandshake, OSError, asyncio.TimeoutError):
        report.refused += 1
        return
    report.connections += 1
    try:
        for m in messages:
            if isinstance(m, tuple) and m[0] == "cut":  # a binary frame header promising 1000 bytes, 10 sent
                ws.transport.write(b"\x82\xfe\x03\xe8" + b"\x00\x00\x00\x00" + b"\x01" * 10)
                ws.transport.abort()
                report.messages += 1
                return
            if isinstance(m, tuple):
                await ws.send(m[1], text=True)  # bytes as a text frame: the server must check UTF-8
            else:
                await ws.send(m)
            report.messages += 1
        async with asyncio.timeout(5):  # what the server answers; some protocols wait for more
            async for raw in ws:
                _count_error(raw, report)
    except (ConnectionClosed, asyncio.TimeoutError, OSError):
        pass
    finally:
        code = ws.close_code
        report.close_codes[str(code)] = report.close_codes.get(str(code), 0) + 1
        ws.transport.abort()


def _count_error(raw: str | bytes, report: FuzzReport) -> None:
    try:
        msg = json.loads(raw)
    except ValueError:
        return
    code = msg.get("code") if isinstance(msg, dict) else None
    if code:
        report.error_codes[code] = report.error_codes.get(code, 0) + 1


async def _never_reads(url: str, stop: asyncio.Event) -> None:
    """Streams audio and never reads a reply (the server must not block on it forever)."""
    try:
        async with connect(url + "/asr", max_queue=1) as ws:
            await ws.send(START["/asr"])
            audio = good_audio(2.0, 3).tobytes()
            while not stop.is_set():
                await ws.send(audio)
                await asyncio.sleep(0.05)
    except (ConnectionClosed, OSError):
        pass


async def run_fuzz(url: str, messages: int = 10000, idle: int = 1000, seed: int = 0, max_frame_bytes: int = 65536,
                   concurrency: int = 32, good_seconds: float = 20.0) -> FuzzReport:
    """The hostile run against a server at `url` (ws://host:port). Returns what happened."""
    report = FuzzReport()
    began = time.monotonic()
    pcm = good_audio(good_seconds, seed + 7)
    frames = [pcm[i : i + 1600] for i in range(0, pcm.size, 1600)]
    report.good_text_alone = (await astream_frames(url, frames)).text

    held = []
    for _ in range(idle):  # connections that never start a stream, held for the whole run
        try:
            held.append(await connect(url + PATHS[len(held) % 3], open_timeout=30))
        except (InvalidStatus, InvalidHandshake, OSError, asyncio.TimeoutError):
            report.refused += 1
    report.idle_held = len(held)

    stop = asyncio.Event()
    silent = asyncio.create_task(_never_reads(url, stop))
    good = asyncio.create_task(astream_frames(url, frames, realtime=False))
    rng = random.Random(seed)
    queue: asyncio.Queue[tuple[str, list]] = asyncio.Queue()
    planned, turn = 0, 0
    while planned < messages:
        path = PATHS[turn % 3]
        turn += 1
        for _, msgs in _cases(path, rng, max_frame_bytes):
            queue.put_nowait((path, msgs))
            planned += len(msgs)

    async def worker() -> None:
        while not queue.empty():
            path, msgs = queue.get_nowait()
            await _hostile(url, path, msgs, report)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    report.good_text_under_fuzz = (await good).text
    stop.set()
    silent.cancel()
    report.idle_closed_by_server = sum(ws.close_code is not None for ws in held)
    for ws in held:
        ws.transport.abort()
    report.wall_s = round(time.monotonic() - began, 1)
    return report


# -- the benchmark: server in a child process --------------------------------------------------

_SERVE = """
import sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from server.app import run_server
from server.config import ServerConfig
if {model!r}:
    import streaming
    factory = streaming.make_recognizer_factory({model!r}, "ctc", 640)
else:
    from test_server_fake import FakeFactory

    class Factory(FakeFactory):  # the tests' fake keeps every recognizer it made; a server must not
        def __call__(self, *args, **kwargs):
            rec = super().__call__(*args, **kwargs)
            self.made.clear()
            return rec

    factory = Factory()
run_server(ServerConfig(port=0, max_sessions=64), factory, on_ready=lambda s: print(s.port, flush=True))
"""


def _rss_mb(pid: int) -> float:
    rss = vm_rss_mb(pid)
    return float("nan") if rss is None else rss


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--model", default="", help="model directory (default: the deterministic fake recognizer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2, help="repeat the run; RSS is sampled after each round")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz_server"))
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.idle + 1024)), hard))
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE.format(root=str(ROOT), tests=str(ROOT / "tests"), model=args.model)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        port = int(proc.stdout.readline())
        url = f"ws://127.0.0.1:{port}"
        warm = good_audio(5.0, 1)
        asyncio.run(astream_frames(url, [warm[i : i + 1600] for i in range(0, warm.size, 1600)]))  # warm up
        rss = [_rss_mb(proc.pid)]
        reports = []
        for r in range(args.rounds):  # RSS after each round: a leak grows every round, a high-water mark once
            reports.append(asyncio.run(run_fuzz(url, args.messages, args.idle, args.seed + r)))
            time.sleep(1.0)  # let the server close what the run left
            if proc.poll() is not None:
                break
            rss.append(_rss_mb(proc.pid))
        report = reports[-1]
        alive = proc.poll() is None
        metrics = _metrics(port) if alive else {}
    finally:
        proc.terminate()
        proc.wait(30)
    internal = metrics.get('asr_errors_total{code="internal"}', 0.0)
    crashes = (0 if alive else 1) + int(internal)
    good_all = all(r.good_unaffected for r in reports)
    server_errors = {k.split('"')[1]: int(v) for k, v in metrics.items() if k.startswith("asr_errors_total")}
    rows = [
        ("rounds", len(reports)),
        ("hostile messages sent (per round)", " / ".join(str(r.messages) for r in reports)),
        ("hostile connections (per round)", " / ".join(str(r.connections) for r in reports)),
        ("handshakes refused", sum(r.refused for r in reports)),
        ("idle connections opened / closed by the server (per round)",
         " ; ".join(f"{r.idle_held} / {r.idle_closed_by_server}" for r in reports)),
        ("crashes (server died or internal errors)", crashes),
        ("good session text unaffected (per round)", " / ".join(str(r.good_unaffected) for r in reports)),
        ("server RSS before, after each round (MB)", " / ".join(f"{x:.1f}" for x in rss)),
        ("wall time per round (s)", " / ".join(str(r.wall_s) for r in reports)),
    ]
    lines = ["# fuzz_server", "", f"`python benchmarks/fuzz_server.py --messages {args.messages} --idle {args.idle} --rounds {args.rounds}"
             f"{' --model ' + args.model if args.model else ''}` (model: {args.model or 'fake recognizer'})", "",
             "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
             "Error codes the server counted (`/metrics`): " + ", ".join(f"{k} {v}" for k, v in sorted(server_errors.items())),
             "", "Close codes the clients saw: " + ", ".join(f"{k} {v}" for k, v in sorted(report.close_codes.items())), ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps({
        "rounds": [{**asdict(r), "good_unaffected": r.good_unaffected} for r in reports], "crashes": crashes,
        "good_unaffected": good_all,
        "rss_mb": rss, "server_errors": server_errors}, indent=1))


if __name__ == "__main__":
    main()
