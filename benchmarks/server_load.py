"""Load test of the streaming server: N concurrent real-time streams over loopback.

The server runs in this process (its event loop on a thread, the model on the scheduler's thread);
the clients run in `--client-procs` separate processes, each with its own asyncio loop driving its
share of the N streams, so that no client work shares the server's GIL.

For N = 1, 2, 4, ... it starts N native-protocol clients that send audio at real speed (100 ms
frames, starts spread over one frame period, or --stagger seconds) and measures, on the client side, the latency of
every partial/final (arrival time - send time of the last audio sample the server had processed,
see server/client.py) and how long after the client's "end" each stream's "done" arrives. A level
"keeps real time" when every stream finished, p99 latency <= --max-latency and the final lag <=
--max-latency. The ramp stops at the first level that does not, or when the time budget is spent.

    python benchmarks/server_load.py --model models/default --device cpu   # the real model
    python benchmarks/server_load.py --synthetic-rtf 0.02 --synthetic-batch  # server overhead only

Without --synthetic-batch the synthetic recognizers cost rtf each, one after another (a model
without batching: it saturates at about 1 / (10 rtf) streams whatever the server does).

Writes benchmarks/results/server_load_<device>.json (and a .md table beside it) and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing as mp
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Only light imports at module level: the client processes are spawned and import this module.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from server.client import astream_frames, read_pcm16  # noqa: E402


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
        if self.rtf:
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
    """Synthetic recognizers, one after another in each pass (a model without batching)."""

    device = "synthetic"

    def __init__(self, rtf: float) -> None:
        self.rtf = rtf

    def __call__(self, settings=None) -> SyntheticRecognizer:
        return SyntheticRecognizer(self.rtf)


class BatchedSyntheticFactory(SyntheticFactory):
    """A batched device model: one pass costs `rtf` times its longest chunk, whatever the number
    of streams (one sleep, GIL released), so what grows with N is the server's own work."""

    def process_batch(self, items: list) -> list[list[_Result]]:
        time.sleep(self.rtf * max(x.size for _, x in items) / 16000)
        rtf, out = self.rtf, []
        for rec, samples in items:
            rec.rtf = 0.0  # paid above, for the whole batch
            out.append(rec.accept_waveform(samples))
            rec.rtf = rtf
        return out


class _ServerThread:
    """The server on its own event loop thread; the main thread only waits for the clients."""

    def __init__(self, config, factory) -> None:
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.server = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main(config, factory)), daemon=True)

    async def _main(self, config, factory) -> None:
        from server.app import AsrServer

        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.server = AsrServer(config, factory)
        await self.server.start()
        self.ready.set()
        await self.stop.wait()
        await self.server.shutdown()

    def __enter__(self):
        self.thread.start()
        self.ready.wait(60)
        assert self.server is not None
        return self.server

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)


class _WorkerPool:
    """`asr serve --workers N`: the server in N front processes and a model process
    (server/workers.py); `cpu_s()` is the CPU time of all of them."""

    def __init__(self, config, make_factory, workers: int) -> None:
        from server.workers import WorkerPool

        self.pool = WorkerPool(config, make_factory, workers, log_level="WARNING")
        self.stop = threading.Event()

    def __enter__(self):
        self.pool.start()
        self.thread = threading.Thread(target=self.pool.supervise, args=(self.stop,), daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(120)

    @property
    def port(self) -> int:
        return self.pool.port

    def cpu_s(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for proc in [self.pool.model, *self.pool.fronts]:
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks


# -- client processes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    """One level's share for one client process: stream `i` starts at `t0 + offsets[i]`
    (time.monotonic is one clock for all processes of the machine)."""

    url: str
    pcm: np.ndarray  # (n,) int16
    chunk_ms: int
    t0: float
    offsets: tuple[float, ...]


async def _run_job(job: _Job) -> list[dict]:
    step = 16000 * job.chunk_ms // 1000
    frames = [job.pcm[i : i + step] for i in range(0, job.pcm.size, step)]

    async def one(offset: float) -> dict:
        delay = job.t0 + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        started = time.monotonic()  # (later than t0 + offset when the process got its job late)
        try:
            t = await astream_frames(job.url, frames, realtime=True)
        except BaseException as exc:  # noqa: BLE001 - reported, counted as a failed stream
            return {"error": repr(exc)}
        return {"latencies_s": list(t.latencies_s), "final_lag_s": t.final_lag_s,
                # when each latency was measured: since the stream's start, and since the level's
                "stream_time_s": [round(a - started, 3) for a in t.latency_at_s],
                "level_time_s": [round(a - job.t0, 3) for a in t.latency_at_s]}

    cpu, wall = time.process_time(), time.monotonic()
    outcomes = list(await asyncio.gather(*(one(o) for o in job.offsets)))
    busy = (time.process_time() - cpu) / max(time.monotonic() - wall, 1e-9)
    for o in outcomes:
        o["client_cpu_frac"] = round(busy, 3)  # of this client process (near 1: the client lags, not the server)
    return outcomes


def _client_main(jobs, results) -> None:
    """A client process: run each job it is sent, put back the per-stream outcomes; None stops it."""
    while (job := jobs.get()) is not None:
        results.put(asyncio.run(_run_job(job)) if job.offsets else [])


class _Clients:
    """`procs` spawned client processes (spawn, not fork: the server process has threads)."""

    def __init__(self, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.jobs = [ctx.Queue() for _ in range(procs)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_client_main, args=(q, self.results), daemon=True) for q in self.jobs]
        for p in self.procs:
            p.start()

    def run_level(self, url: str, pcm: np.ndarray, n: int, chunk_ms: int, stagger_s: float, timeout_s: float) -> list[dict]:
        """N streams, stream i in process i % procs, starts spread evenly over `stagger_s`."""
        t0 = time.monotonic() + 1.0  # time for every process to receive its job
        offsets = [i * stagger_s / max(n, 1) for i in range(n)]
        for k, q in enumerate(self.jobs):
            q.put(_Job(url, pcm, chunk_ms, t0, tuple(offsets[k :: len(self.jobs)])))
        out: list[dict] = []
        for _ in self.jobs:
            out += self.results.get(timeout=timeout_s)
        return out

    def close(self) -> None:
        for q in self.jobs:
            q.put(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()


STEADY_AFTER_S = 5.0  # stream time after which a stream's caches hold their full left context


def _p99(values) -> float | None:
    return float(np.percentile(values, 99)) if len(values) else None


def _timeline(done: list[dict], lat: np.ndarray) -> dict:
    """Where the tail lies: p99 of the first STEADY_AFTER_S seconds of every stream against the
    rest, and the three seconds of the level (wall clock, 1 s bins) with the highest p99."""
    stream_t = np.array([x for o in done for x in o.get("stream_time_s", [])])
    level_t = np.array([x for o in done for x in o.get("level_time_s", [])])
    if stream_t.size != lat.size or not lat.size:
        return {}
    bins = np.floor(level_t).astype(int)
    worst = sorted(((_p99(lat[bins == b]), int(b)) for b in np.unique(bins)), reverse=True)[:3]
    cpu = [o["client_cpu_frac"] for o in done if "client_cpu_frac" in o]
    return {
        "latency_p99_first_s": _p99(lat[stream_t < STEADY_AFTER_S]),
        "latency_p99_steady_s": _p99(lat[stream_t >= STEADY_AFTER_S]),
        "worst_seconds": [{"level_time_s": b, "latency_p99_s": round(v, 3)} for v, b in worst],
        "client_cpu_frac_max": max(cpu) if cpu else None,
    }


def summarize(n: int, outcomes: list[dict], max_latency: float) -> dict:
    """One level's row from its streams' outcomes (`latencies_s`/`final_lag_s`, or `error`)."""
    done = [o for o in outcomes if "error" not in o]
    lat = np.array([x for o in done for x in o["latencies_s"]])
    lags = [o["final_lag_s"] for o in done if o["final_lag_s"] is not None]
    row = {
        "streams": n,
        "completed": len(done),
        "errors": [o["error"] for o in outcomes if "error" in o][:3],
        "latency_p50_s": float(np.percentile(lat, 50)) if lat.size else None,
        "latency_p99_s": _p99(lat),
        "latency_max_s": float(lat.max()) if lat.size else None,
        "final_lag_max_s": float(max(lags)) if lags else None,
        **_timeline(done, lat),
    }
    row["realtime"] = (
        row["completed"] == n
        and row["latency_p99_s"] is not None
        and row["latency_p99_s"] <= max_latency
        and row["final_lag_max_s"] is not None
        and row["final_lag_max_s"] <= max_latency
    )
    return row


def _pass_metrics(port: int) -> dict[str, float]:
    """The model-pass series of the server's /metrics (any front shows every pass): the cumulative
    buckets of asr_model_pass_seconds, its sum and count, and the streams summed over passes."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for name, value in re.findall(r'^(asr_model_pass_(?:seconds_\S+|streams_total))\s+(\S+)$', text, re.M):
        out[name] = float(value)
    return out


def pass_summary(before: dict[str, float], after: dict[str, float]) -> dict:
    """The passes of one level (the difference of two :func:`_pass_metrics` readings)."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    count = d.get("asr_model_pass_seconds_count", 0.0)
    if not count:
        return {}
    over = {b: count - d.get(f'asr_model_pass_seconds_bucket{{le="{b}"}}', count) for b in ("0.25", "0.5", "1")}
    return {"passes": int(count), "pass_mean_s": round(d["asr_model_pass_seconds_sum"] / count, 4),
            "pass_mean_streams": round(d.get("asr_model_pass_streams_total", 0.0) / count, 1),
            "passes_over_s": {b: int(v) for b, v in over.items()}}


def markdown(report: dict) -> str:
    r = report
    lines = [
        f"# Server load: {r['device']}, {r['decoder']}, {r['block_ms']} ms blocks",
        "",
        f"model {r['model'] or 'synthetic'}; {r['seconds_per_stream']:g} s per stream in {r['chunk_ms']} ms frames; "
        f"starts spread over {r['stagger_s']:g} s; "
        f"clients in {r['client_procs']} separate process(es); server batch window {r['batch_window_s']:g} s; "
        f"server --workers {r.get('workers', 0)}, hold {r.get('hold_s', 0):g} s; "
        f"{r['note'] or ''}".rstrip("; "),
        "",
        "| streams | p50 latency (s) | p99 latency (s) | max final lag (s) | server CPU (ms per stream-s) | real time |",
        "|---:|---:|---:|---:|---:|:---:|",
    ]
    for x in r["levels"]:
        lines.append(f"| {x['streams']} | {x['latency_p50_s'] or 0:.3f} | {x['latency_p99_s'] or 0:.3f} | "
                     f"{x['final_lag_max_s'] or 0:.3f} | {x.get('server_cpu_ms_per_stream_s', 0):.2f} | "
                     f"{'yes' if x['realtime'] else 'no'} |")
    lines += ["", f"Where the tail lies: p99 latency over each stream's first {STEADY_AFTER_S:g} s and after them; "
              "the level's three 1-s wall-clock bins with the highest p99 (s from the first start); the model's "
              "passes (/metrics): count, mean wall time and batch, how many took longer than 0.25 / 0.5 / 1 s; "
              "the busiest client process's CPU share (near 1: the clients lag).", "",
              "| streams | p99 first (s) | p99 after (s) | worst seconds: t (p99) | passes | mean pass (s) | mean batch | "
              "passes > 0.25 / 0.5 / 1 s | client CPU |", "|---:|---:|---:|---|---:|---:|---:|---|---:|"]
    for x in r["levels"]:
        worst = ", ".join(f"{w['level_time_s']} ({w['latency_p99_s']:.2f})" for w in x.get("worst_seconds", []))
        over = x.get("passes_over_s", {})
        first, steady = (x.get(k) for k in ("latency_p99_first_s", "latency_p99_steady_s"))
        lines.append(f"| {x['streams']} | {'-' if first is None else f'{first:.3f}'} | "
                     f"{'-' if steady is None else f'{steady:.3f}'} | "
                     f"{worst} | {x.get('passes', 0)} | {x.get('pass_mean_s', 0):.3f} | {x.get('pass_mean_streams', 0):.0f} | "
                     f"{' / '.join(str(over.get(b, 0)) for b in ('0.25', '0.5', '1'))} | {x.get('client_cpu_frac_max') or 0:.2f} |")
    lines += ["", f"largest N that keeps real time (p99 and final lag <= {r['max_latency_s']:g} s): "
              f"**{r['max_realtime_streams']}**", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model directory (uses streaming.make_recognizer_factory)")
    src.add_argument("--synthetic-rtf", type=float, default=0.02, help="synthetic recognizer cost (s per audio s)")
    p.add_argument("--synthetic-batch", action="store_true",
                   help="synthetic: one cost per pass for all streams (a batched GPU call), not one per stream")
    p.add_argument("--decoder", default="sar")
    p.add_argument("--block-ms", type=int, default=640)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (--model only)")
    p.add_argument("--threads", type=int, help="torch threads of the server's model (default: torch's)")
    p.add_argument("--audio", help="16 kHz audio file to stream, looped (default: 10 s of noise)")
    p.add_argument("--seconds", type=float, default=10.0, help="audio seconds per stream")
    p.add_argument("--streams", default="1,2,4,8,16,32,64,128", help="levels of concurrency to try")
    p.add_argument("--chunk-ms", type=int, default=100)
    p.add_argument("--batch-window", type=float, default=0.0,
                   help="the server's batch_window_s: seconds between model passes at least (0: none)")
    p.add_argument("--hold", type=float, default=1.0,
                   help="the server's hold_s: sessions whose audio completes no block wait out of the passes "
                        "up to this long (0: every session joins every pass)")
    p.add_argument("--stagger", type=float, default=None,
                   help="seconds over which the N stream starts (and so their ends) are spread (default: one frame)")
    p.add_argument("--client-procs", type=int, default=min(4, os.cpu_count() or 1),
                   help="client processes (the streams are spread over them)")
    p.add_argument("--max-latency", type=float, default=1.0, help="p99 latency and final lag that still count as real time")
    p.add_argument("--time-budget", type=float, default=300.0, help="stop starting new levels after this many seconds")
    p.add_argument("--workers", type=int, default=0,
                   help="serve as `asr serve --workers N`: N front processes and a model process (0: in this process)")
    p.add_argument("--warmup-streams", type=int, default=8,
                   help="asr serve --warmup-streams: throwaway streams through the model before the first level")
    p.add_argument("--note", default="", help="free text stored with the results (run conditions)")
    p.add_argument("--out", help="JSON path (default: benchmarks/results/server_load_<device>.json; .md beside it)")
    args = p.parse_args(argv)
    if args.client_procs < 1:
        p.error("--client-procs must be >= 1")
    if args.workers < 0:
        p.error("--workers must be >= 0")

    from asr.inference import InferenceConfig
    from server.config import ServerConfig

    if args.model:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        import streaming

        factory = streaming.make_recognizer_factory(args.model, decoder=args.decoder, block_ms=args.block_ms,
                                                    device=args.device)
        from server.scheduler import freeze_loaded_objects
        from server.workers import streaming_factory

        from server.scheduler import warm_up

        if args.workers == 0:
            warm_up(factory, args.warmup_streams)
        freeze_loaded_objects()  # as asr serve does (the --workers model process does it itself)

        make_factory = functools.partial(streaming_factory, factory.settings)
        device = str(next(factory.loaded.model.parameters()).device)
        if device.startswith("cuda") and torch.cuda.is_available():
            device = torch.cuda.get_device_name()
    else:
        kind = BatchedSyntheticFactory if args.synthetic_batch else SyntheticFactory
        factory = kind(args.synthetic_rtf)
        make_factory = functools.partial(kind, args.synthetic_rtf)
        device = f"synthetic{'-batch' if args.synthetic_batch else ''}-rtf{args.synthetic_rtf:g}"
    n_samples = int(args.seconds * 16000)
    if args.audio:
        pcm = np.resize(read_pcm16(args.audio), n_samples)
    else:
        pcm = (np.random.default_rng(0).standard_normal(n_samples) * 3000).astype(np.int16)

    levels = [int(x) for x in args.streams.split(",")]
    settings = factory.settings if args.model else InferenceConfig(decoder=args.decoder, block_ms=args.block_ms)
    config = ServerConfig(port=0, model_name=args.model or "synthetic", inference=settings,
                          max_sessions=max(levels) + 1, max_batch=max(levels), batch_window_s=args.batch_window,
                          hold_s=args.hold, warmup_streams=args.warmup_streams,
                          # every client connects from 127.0.0.1 at about the same time
                          max_waiting=max(levels) + 1, max_waiting_per_address=max(levels) + 1)
    rows, began = [], time.monotonic()
    clients = _Clients(args.client_procs)
    try:
        serving = _ServerThread(config, factory) if args.workers == 0 else _WorkerPool(config, make_factory, args.workers)
        with serving as server:
            url = f"ws://127.0.0.1:{server.port}/asr"
            for n in levels:
                if time.monotonic() - began + args.seconds * 1.5 > args.time_budget:
                    print(f"time budget spent; stopping before {n} streams", file=sys.stderr)
                    break
                stagger = args.chunk_ms / 1000 if args.stagger is None else args.stagger
                # the server: this process (its threads and a waiting main thread), or the worker processes
                cpu_s = time.process_time if args.workers == 0 else server.cpu_s
                cpu, passes = cpu_s(), _pass_metrics(server.port)
                outcomes = clients.run_level(url, pcm, n, args.chunk_ms, stagger, timeout_s=args.seconds * 10 + 120)
                cpu = cpu_s() - cpu
                row = summarize(n, outcomes, args.max_latency)
                row.update(pass_summary(passes, _pass_metrics(server.port)))
                row["server_cpu_s"] = round(cpu, 3)
                row["server_cpu_ms_per_stream_s"] = round(1000 * cpu / (n * args.seconds), 3)
                rows.append(row)
                print(f"{n:>5} streams: p50 {row['latency_p50_s'] or 0:.3f}s  p99 {row['latency_p99_s'] or 0:.3f}s  "
                      f"final lag {row['final_lag_max_s'] or 0:.3f}s  server CPU {row['server_cpu_ms_per_stream_s']:.2f} "
                      f"ms/stream-s  {'ok' if row['realtime'] else 'NOT real time'}"
                      + (f"  errors: {row['errors']}" if row["errors"] else ""), file=sys.stderr, flush=True)
                if not row["realtime"]:
                    break
            scheduler = ({"passes": server.scheduler.passes, "max_batch_seen": server.scheduler.max_batch_seen}
                         if args.workers == 0 else None)  # counted in the model process
    finally:
        clients.close()

    best = max([r["streams"] for r in rows if r["realtime"]], default=0)
    report = {
        "device": device, "model": args.model, "decoder": args.decoder, "block_ms": args.block_ms,
        "seconds_per_stream": args.seconds, "chunk_ms": args.chunk_ms, "max_latency_s": args.max_latency,
        "stagger_s": args.chunk_ms / 1000 if args.stagger is None else args.stagger,
        "client_procs": args.client_procs, "batch_window_s": args.batch_window, "hold_s": args.hold, "workers": args.workers,
        "warmup_streams": args.warmup_streams,
        "note": args.note,
        "max_realtime_streams": best, "levels": rows, "scheduler": scheduler,
    }
    print("\n" + markdown(report).split("\n", 4)[4])
    print(f"(device: {device})")
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"server_load_{re.sub(r'[^A-Za-z0-9_.-]+', '_', device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
