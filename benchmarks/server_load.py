"""Load test of the streaming server: N concurrent real-time streams over loopback.

For N = 1, 2, 4, ... it starts N native-protocol clients that send audio at real speed (100 ms
frames, staggered starts) and measures, on the client side, the latency of every partial/final
(arrival time - send time of the last audio sample the server had processed, see server/client.py)
and how long after the client's "end" each stream's last final (and "done") arrives. A level "keeps real time"
when every stream finished, p99 latency <= --max-latency and the final lag <= --max-latency.
The ramp stops at the first level that does not, or when the time budget is spent.

    python benchmarks/server_load.py --model exp/default              # the real model
    python benchmarks/server_load.py --synthetic-rtf 0.05             # server overhead only

Writes benchmarks/results/server_load_<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from asr.inference import InferenceConfig  # noqa: E402
from server.app import AsrServer  # noqa: E402
from server.client import astream_frames, read_pcm16  # noqa: E402
from server.config import ServerConfig  # noqa: E402


@dataclass
class _Word:
    word: str
    start: float
    end: float


@dataclass
class _Result:
    text: str
    is_final: bool
    segment: int
    words: list = field(default_factory=list)


class SyntheticRecognizer:
    """Costs `rtf` seconds per second of audio (sleeping, like a GPU/torch call that releases the
    GIL) and emits one partial per 640 ms block and a final every 8 blocks."""

    def __init__(self, rtf: float) -> None:
        self.rtf, self.buffered, self.blocks, self.segment = rtf, 0, 0, 0

    def accept_waveform(self, samples: np.ndarray) -> list[_Result]:
        time.sleep(self.rtf * samples.size / 16000)
        self.buffered += samples.size
        out = []
        while self.buffered >= 10240:
            self.buffered -= 10240
            self.blocks += 1
            final = self.blocks % 8 == 0
            out.append(_Result(f"block{self.blocks}", final, self.segment))
            self.segment += final
        return out

    def finalize(self) -> list[_Result]:
        return [_Result("end", True, self.segment)]


class SyntheticFactory:
    device = "synthetic"

    def __init__(self, rtf: float) -> None:
        self.rtf = rtf

    def __call__(self, settings=None) -> SyntheticRecognizer:
        return SyntheticRecognizer(self.rtf)


class _ServerThread:
    """The server on its own event loop thread, so the clients' work does not delay it."""

    def __init__(self, config: ServerConfig, factory) -> None:
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.server: AsrServer | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main(config, factory)), daemon=True)

    async def _main(self, config: ServerConfig, factory) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.server = AsrServer(config, factory)
        await self.server.start()
        self.ready.set()
        await self.stop.wait()
        await self.server.shutdown()

    def __enter__(self) -> AsrServer:
        self.thread.start()
        self.ready.wait(60)
        assert self.server is not None
        return self.server

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)


async def _level(url: str, pcm: np.ndarray, n: int, chunk_ms: int) -> dict:
    step = 16000 * chunk_ms // 1000
    frames = [pcm[i : i + step] for i in range(0, pcm.size, step)]

    async def one(i: int):
        await asyncio.sleep(i * chunk_ms / 1000 / max(n, 1))  # stagger within one frame period
        return await astream_frames(url, frames, realtime=True), None

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    done = [r for r in results if not isinstance(r, BaseException)]
    lat = np.array([x for t, _ in done for x in t.latencies_s]) if done else np.zeros(0)
    lags = [t.final_lag_s for t, _ in done if t.final_lag_s is not None]
    return {
        "streams": n,
        "completed": len(done),
        "errors": [repr(r) for r in results if isinstance(r, BaseException)][:3],
        "latency_p50_s": float(np.percentile(lat, 50)) if lat.size else None,
        "latency_p99_s": float(np.percentile(lat, 99)) if lat.size else None,
        "latency_max_s": float(lat.max()) if lat.size else None,
        "final_lag_max_s": float(max(lags)) if lags else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model directory (uses streaming.make_recognizer_factory)")
    src.add_argument("--synthetic-rtf", type=float, default=0.02, help="synthetic recognizer cost (s per audio s)")
    p.add_argument("--decoder", default="sar")
    p.add_argument("--block-ms", type=int, default=640)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (--model only)")
    p.add_argument("--audio", help="16 kHz audio file to stream (default: 10 s of noise)")
    p.add_argument("--seconds", type=float, default=10.0, help="audio seconds per stream")
    p.add_argument("--streams", default="1,2,4,8,16,32,64,128", help="levels of concurrency to try")
    p.add_argument("--chunk-ms", type=int, default=100)
    p.add_argument("--max-latency", type=float, default=1.0, help="p99 latency and final lag that still count as real time")
    p.add_argument("--time-budget", type=float, default=300.0, help="stop starting new levels after this many seconds")
    p.add_argument("--out", help="JSON path (default: benchmarks/results/server_load_<device>.json)")
    args = p.parse_args(argv)

    if args.model:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
        import streaming

        factory = streaming.make_recognizer_factory(args.model, decoder=args.decoder, block_ms=args.block_ms,
                                                    device=args.device)
        device = str(next(factory.loaded.model.parameters()).device)
        if device.startswith("cuda") and torch.cuda.is_available():
            device = torch.cuda.get_device_name()
    else:
        factory, device = SyntheticFactory(args.synthetic_rtf), f"synthetic-rtf{args.synthetic_rtf:g}"
    n_samples = int(args.seconds * 16000)
    if args.audio:
        pcm = np.resize(read_pcm16(args.audio), n_samples)
    else:
        pcm = (np.random.default_rng(0).standard_normal(n_samples) * 3000).astype(np.int16)

    levels = [int(x) for x in args.streams.split(",")]
    settings = factory.settings if args.model else InferenceConfig(decoder=args.decoder, block_ms=args.block_ms)
    config = ServerConfig(port=0, model_name=args.model or "synthetic", inference=settings,
                          max_sessions=max(levels) + 1, max_batch=max(levels))
    rows, began = [], time.monotonic()
    with _ServerThread(config, factory) as server:
        url = f"ws://127.0.0.1:{server.port}/asr"
        for n in levels:
            if time.monotonic() - began + args.seconds * 1.5 > args.time_budget:
                print(f"time budget spent; stopping before {n} streams", file=sys.stderr)
                break
            row = asyncio.run(_level(url, pcm, n, args.chunk_ms))
            row["realtime"] = (
                row["completed"] == n
                and row["latency_p99_s"] is not None
                and row["latency_p99_s"] <= args.max_latency
                and row["final_lag_max_s"] <= args.max_latency
            )
            rows.append(row)
            print(f"{n:>5} streams: p50 {row['latency_p50_s'] or 0:.3f}s  p99 {row['latency_p99_s'] or 0:.3f}s  "
                  f"final lag {row['final_lag_max_s'] or 0:.3f}s  {'ok' if row['realtime'] else 'NOT real time'}",
                  file=sys.stderr, flush=True)
            if not row["realtime"]:
                break
        scheduler = {"passes": server.scheduler.passes, "max_batch_seen": server.scheduler.max_batch_seen}

    best = max([r["streams"] for r in rows if r["realtime"]], default=0)
    print(f"\n| streams | p50 latency (s) | p99 latency (s) | max final lag (s) | real time |\n|---:|---:|---:|---:|:---:|")
    for r in rows:
        print(f"| {r['streams']} | {r['latency_p50_s'] or 0:.3f} | {r['latency_p99_s'] or 0:.3f} | "
              f"{r['final_lag_max_s'] or 0:.3f} | {'yes' if r['realtime'] else 'no'} |")
    print(f"\nlargest N that keeps real time: {best}  (device: {device})")
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"server_load_{re.sub(r'[^A-Za-z0-9_.-]+', '_', device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": device, "model": args.model, "decoder": args.decoder, "block_ms": args.block_ms,
        "seconds_per_stream": args.seconds, "chunk_ms": args.chunk_ms, "max_latency_s": args.max_latency,
        "max_realtime_streams": best, "levels": rows, "scheduler": scheduler,
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
