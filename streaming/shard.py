"""`asr decode` over several processes: torchrun starts N ranks, each decodes its shard of the data
set, and rank 0 merges the hypotheses in data-set order and scores them as one process would.

    torchrun --nproc-per-node 2 -m blockasr decode --data test.jsonl --out exp/dec           # 2 CPU processes
    torchrun --nproc-per-node 8 -m blockasr decode --data test.jsonl --out exp/dec --device cuda
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m blockasr decode ...                                                                # nodes

The shards balance by duration: utterances longest first, each onto the shard with the least audio
so far (ties: the lowest shard), so the plan depends only on the data set and the number of ranks;
rank k decodes shard k. The ranks check once, through a gloo process group, that they read the same
data set and settings and that they see the same out folder; the group is then closed (a shard may
take hours, longer than any collective should wait). Results travel through files, so ``--out`` must
be one folder that every rank sees (a shared file system across nodes):

    OUT/shards/<plan>-<k>-of-<N>.json     shard k's per-utterance results (written to .tmp, renamed)
    OUT/shards/<plan>-<k>-of-<N>.done     written after the results: shard k is complete
    OUT/shards/<plan>-<k>-of-<N>.alive    touched every HEARTBEAT_S seconds while rank k works
    OUT/shards/<plan>-<k>-of-<N>.failed   rank k's error, when it had one

``<plan>`` is a digest of the utterances, the number of shards and the inference settings. A rerun
with the same ones keeps the shards that have their ``.done`` (resume); other settings use other files.

A rank whose decoding fails writes ``.failed`` and exits non-zero (torchrun then stops the others and
names the rank). Rank 0 fails with a message naming the rank when it finds ``.failed``, or when a
rank's ``.alive`` has not changed for ``--rank-timeout`` seconds (a rank killed outside torchrun's
watch), so it never waits forever.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

# hashlib, socket, threading and torch are imported where used: `asr --help` builds this parser

__all__ = ["Decoded", "ShardError", "add_arguments", "plan_shards", "merge_decoded", "run_sharded"]

HEARTBEAT_S = 2.0  # how often a working rank touches its .alive file
_POLL_S = 0.5  # how often rank 0 looks at the other shards' files


class ShardError(RuntimeError):
    """A sharded decode cannot finish; the message names the rank and what to do."""


@dataclass
class Decoded:
    """What decoding some rows gave, per utterance in row order (unreadable rows left out).

    ``latencies_ms``: final-result latency; ``compute_s``: decoding time; ``audio_s``: audio length.
    """

    ids: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    hyps: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    audio_s: list[float] = field(default_factory=list)
    unreadable: int = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rank-timeout", type=float, default=120.0, metavar="S",
                   help="under torchrun: rank 0 fails when another rank shows no sign of life for S seconds")


def plan_shards(durations: Sequence[float], n: int) -> list[list[int]]:
    """Split items into ``n`` shards of about equal total duration (greedy, longest first).

    Returns ``n`` lists of item indices, each ascending. Deterministic: ties in duration go in index
    order, ties in load to the lowest shard. E.g. ``plan_shards([1, 5, 2, 2], 2) == [[1], [0, 2, 3]]``.
    """
    if n < 1:
        raise ValueError(f"need at least one shard, got {n}")
    loads = [0.0] * n
    shards: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        k = min(range(n), key=lambda k: (loads[k], k))
        shards[k].append(i)
        loads[k] += durations[i]
    return [sorted(s) for s in shards]


def merge_decoded(parts: Sequence[Decoded], order: Sequence[str]) -> Decoded:
    """One :class:`Decoded` from the shards', utterances in the order of the ids in ``order``."""
    position = {utt: i for i, utt in enumerate(order)}
    rows = sorted((position[utt], part, j) for part in parts for j, utt in enumerate(part.ids))
    out = Decoded(unreadable=sum(p.unreadable for p in parts))
    for _, part, j in rows:
        for name in ("ids", "refs", "hyps", "latencies_ms", "compute_s", "audio_s"):
            getattr(out, name).append(getattr(part, name)[j])
    return out


# ---------------------------------------------------------------------------------------- files
class _ShardFiles:
    def __init__(self, folder: Path, plan: str, k: int, n: int) -> None:
        stem = folder / f"{plan}-{k}-of-{n}"
        self.result, self.done = stem.with_suffix(".json"), stem.with_suffix(".done")
        self.alive, self.failed = stem.with_suffix(".alive"), stem.with_suffix(".failed")

    def write(self, decoded: Decoded) -> None:
        """Results to .tmp, renamed (atomic), then the .done marker."""
        tmp = self.result.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(decoded)) + "\n")
        os.replace(tmp, self.result)
        self.done.write_text(f"{len(decoded.ids)} utterances\n")

    def read(self) -> Decoded:
        return Decoded(**json.loads(self.result.read_text()))

    def complete(self) -> bool:
        return self.done.is_file() and self.result.is_file()


class _Heartbeat:
    """Touches a file every HEARTBEAT_S seconds from a daemon thread while the rank works."""

    def __init__(self, path: Path) -> None:
        import threading

        self.path = path
        self._stop = threading.Event()
        path.touch()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.path.touch()
            except OSError:
                pass  # a full or vanished file system shows up in the results write

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _plan_digest(rows: list[dict], n: int, settings: dict) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps([n, settings, [(r["id"], r["duration"]) for r in rows]], default=str).encode())
    return h.hexdigest()[:12]


# ------------------------------------------------------------------------------------ the ranks
def _handshake(folder: Path, rank: int, world: int, plan: str, timeout_s: float) -> None:
    """Every rank: the same plan, and the same out folder (rank 0's file is visible to all)."""
    import socket
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(seconds=max(timeout_s, 60.0)))
    try:
        probe = folder / "handshake"
        token = [os.urandom(8).hex() if rank == 0 else None]
        if rank == 0:
            probe.write_text(token[0])
        dist.broadcast_object_list(token, src=0)
        try:
            sees = probe.read_text() == token[0]
        except OSError:
            sees = False
        views: list = [None] * world
        dist.all_gather_object(views, (socket.gethostname(), plan, sees))
    finally:
        dist.destroy_process_group()
    for k, (host, other, seen) in enumerate(views):
        if not seen:
            raise ShardError(f"rank {k} on {host} does not see rank 0's files in {folder.parent}: "
                             "--out must be one folder shared by all ranks")
        if other != views[0][1]:
            raise ShardError(f"rank {k} on {host} read another data set or settings than rank 0 "
                             f"(plan {other} vs {views[0][1]}): give every rank the same arguments and files")


def _wait_for(files: list[_ShardFiles], timeout_s: float) -> None:
    """Rank 0: until every shard is complete; a failed or silent rank is an error naming it."""
    seen = {k: (None, time.monotonic()) for k in range(len(files))}
    pending = [k for k, f in enumerate(files) if not f.complete()]
    while pending:
        time.sleep(_POLL_S)
        for k in list(pending):
            f = files[k]
            if f.complete():
                pending.remove(k)
                continue
            done = f"a rerun resumes ({len(files) - len(pending)} of {len(files)} shards are done)"
            if f.failed.is_file():
                raise ShardError(f"rank {k} failed: {f.failed.read_text().strip()}; {done}")
            try:
                mtime = f.alive.stat().st_mtime
            except OSError:
                mtime = None
            if mtime != seen[k][0]:
                seen[k] = (mtime, time.monotonic())
            elif time.monotonic() - seen[k][1] > timeout_s:
                raise ShardError(f"rank {k} stopped: no sign of life for {timeout_s:g} s and shard {k} is not "
                                 f"written; {done}")


def run_sharded(args: argparse.Namespace, read_rows: Callable[[str], list[dict]], decode_rows: Callable[..., Decoded],
                write_results: Callable[..., dict]) -> int:
    """One rank of ``asr decode`` under torchrun (``WORLD_SIZE`` > 1); see the module docstring.

    ``read_rows(data)``, ``decode_rows(rows, loaded, lm, cfg, quiet)`` and
    ``write_results(out, decoded, cfg, loaded, data, extra)`` are the single-process decode's own.
    """
    import socket

    from asr.inference import inference_config_from_args, load_inference

    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", "0"))
    cfg = inference_config_from_args(args)
    if cfg.device in ("cuda", "auto"):  # one GPU per rank on each node
        import torch

        if torch.cuda.is_available():
            cfg = dataclasses.replace(cfg, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    rows = sorted(read_rows(args.data), key=lambda r: r["id"])[: args.max_utts]
    out = Path(args.out)
    folder = out / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("device", "threads")}
    plan = _plan_digest(rows, world, settings)
    files = [_ShardFiles(folder, plan, k, world) for k in range(world)]
    mine = files[rank]
    mine.failed.unlink(missing_ok=True)  # before the handshake: rank 0 must not see an old failure
    _handshake(folder, rank, world, plan, args.rank_timeout)
    shards = plan_shards([float(r["duration"]) for r in rows], world)
    beat = _Heartbeat(mine.alive)
    loaded = None
    try:
        if mine.complete():
            print(f"rank {rank}: shard {rank} of {world} already decoded ({mine.result.name}): kept", file=sys.stderr)
        else:
            try:
                loaded, lm = load_inference(cfg)
                decoded = decode_rows([rows[i] for i in shards[rank]], loaded, lm, cfg, args.quiet or rank != 0)
                mine.write(decoded)
            except Exception as e:
                message = f"{type(e).__name__}: {e}"
                mine.failed.write_text(f"{message} (host {socket.gethostname()})\n")
                raise ShardError(f"rank {rank} of {world} failed on its shard: {message}") from e
    finally:
        beat.stop()
    if rank != 0:
        return 0
    _wait_for(files, args.rank_timeout)
    merged = merge_decoded([f.read() for f in files], [r["id"] for r in rows])
    if loaded is None:  # shard 0 was kept; the summary names the model directory
        loaded, _ = load_inference(cfg)
    write_results(out, merged, cfg, loaded, args.data, {"processes": world})
    return 0
