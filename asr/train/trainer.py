"""The training loop: bucketed batches, batched fbank on the device, dynamic blocks, AdamW with
warmup, gradient clipping and accumulation, bf16 autocast on CUDA, DDP under ``torchrun``,
atomic checkpoints with exact resume, validation loss and greedy-CTC WER, CSV logs and a plot.

Exact resume: a checkpoint holds the model, optimizer, scheduler, the data position (epoch and
batches consumed) and every random generator (torch, CUDA, the block-size and SpecAugment
generators, per rank). Data order and speed perturbation are pure functions of (seed, epoch,
index), and the data loader draws its worker seeds from its own generator, so a run killed and
resumed reproduces the losses of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.config import save_yaml
from asr.data import AsrDataset, DurationBatchSampler, collate, read_manifest, spec_augment
from asr.data.wave_augment import augment_waves
from asr.features import CmvnAccumulator, Fbank, GlobalCMVN
from asr.models import AsrModel, build_model
from asr.models.lm_io import init_sar_lm
from asr.tokenizer import Tokenizer
from asr.train.checkpoint import load_latest_good, prune, save_atomic
from asr.train.config import ExperimentConfig
from asr.train.feature_cache import FeatureBatch, FeatureCache
from asr.train.logs import CsvLog, plot_curves
from asr.train.optim import adamw_with_warmup
from asr.train.validate import validate
from asr.train.wave_cache import WaveCache

__all__ = ["Trainer"]


class Trainer:
    """Trains an :class:`AsrModel` from an :class:`ExperimentConfig` into ``out_dir``.

    Args:
        cfg: the experiment.
        out_dir: checkpoints (``checkpoint-<step>.pt``), ``config.yaml``, ``cmvn.json``,
            ``train.csv``, ``valid.csv``, ``curves.png``. A folder with checkpoints is resumed.
        device: default CUDA when available (``LOCAL_RANK`` under torchrun), else CPU.
        progress: show a progress bar (rank 0).
    """

    def __init__(self, cfg: ExperimentConfig, out_dir: str | Path, device: str | None = None,
                 progress: bool = True):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.world > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.main = self.rank == 0
        self.progress = progress and self.main
        o = cfg.optim
        torch.manual_seed(o.seed + self.rank)
        self.block_gen = torch.Generator().manual_seed(o.seed)  # same on every rank
        self.aug_gen = torch.Generator().manual_seed(o.seed + 1000 + self.rank)
        self.loader_gen = torch.Generator().manual_seed(o.seed + 2000 + self.rank)

        self.tokenizer = Tokenizer(cfg.data.tokenizer)
        if self.tokenizer.vocab_size != cfg.model.vocab_size:
            raise ValueError(f"model.vocab_size {cfg.model.vocab_size} != tokenizer size {self.tokenizer.vocab_size}")
        self.train_rows = self._read_train()
        self.valid_rows = read_manifest(cfg.data.valid)[: cfg.data.valid_max_utterances] if cfg.data.valid else []

        self.model: AsrModel = build_model(cfg.model).to(self.device)
        self.fbank = Fbank(cfg.features).to(self.device)
        self.dataset = AsrDataset(self.train_rows, self.tokenizer, cfg.data.speeds, seed=o.seed)
        self.sampler = DurationBatchSampler(self.dataset.durations, cfg.data.batch_seconds, shuffle=True,
                                            seed=o.seed, num_replicas=self.world, rank=self.rank,
                                            max_utterances=cfg.data.max_utterances)
        self.optimizer, self.scheduler = adamw_with_warmup(self.model, o.lr, o.betas, o.weight_decay, o.warmup_steps)
        self.step, self.epoch, self.batches_done = 0, 0, 0
        self.failed: list[tuple[str, str]] = []
        self.out.mkdir(parents=True, exist_ok=True)
        self.train_log, self.valid_log = CsvLog(self.out / "train.csv"), CsvLog(self.out / "valid.csv")
        if self.device.type == "cuda" and not o.cudnn_attention:
            torch.backends.cuda.enable_cudnn_sdp(False)
        if not self._resume():
            if cfg.init:
                self._init_weights(cfg.init)
            else:
                self._init_cmvn()
            if cfg.lm_init:
                init_sar_lm(self.model, cfg.lm_init, self.tokenizer)
                if self.main:
                    print(f"model.sar.lm initialised from {cfg.lm_init}", file=sys.stderr)
            if self.main:
                save_yaml(cfg, self.out / "config.yaml")
        self.cache = None
        self.rirs = None
        if cfg.data.augment is not None and cfg.data.augment.rirs:
            import numpy as np

            self.rirs = torch.from_numpy(np.load(cfg.data.augment.rirs)).float().to(self.device)
        if cfg.data.cache_waves:
            self.cache = WaveCache(self.dataset, self.device, cfg.features.sample_rate, cfg.data.num_workers,
                                   progress=self.progress)
            if self.main:
                print(f"wave cache: {self.cache.nbytes / 2**30:.2f} GiB on {self.device}", file=sys.stderr)
        elif cfg.data.cache_features:
            self.cache = FeatureCache(self.dataset, self.fbank, cfg.data.num_workers, progress=self.progress)
            if self.main:
                print(f"feature cache: {self.cache.nbytes / 2**30:.2f} GiB on {self.device}", file=sys.stderr)
                if cfg.optim.dither > 0:
                    print("note: optim.dither does not apply to cached features", file=sys.stderr)
        self.ddp = self.model
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.optim.ctc_warmup_steps > 0)  # the heads idle during the CTC warm-up

    # ------------------------------------------------------------------ set-up
    def _read_train(self) -> list[dict]:
        rows = [r for m in self.cfg.data.train for r in read_manifest(m)]
        if not rows:
            raise ValueError("no training utterances (data.train is empty)")
        keep = [r for r in rows if r["duration"] <= self.cfg.data.max_duration]
        if len(keep) < len(rows) and self.main:
            long = [r["id"] for r in rows if r["duration"] > self.cfg.data.max_duration]
            print(f"note: {len(long)} training utterances longer than {self.cfg.data.max_duration} s are not "
                  f"used: {', '.join(long[:20])}{' ...' if len(long) > 20 else ''}", file=sys.stderr)
        return keep

    def _init_cmvn(self) -> None:
        if self.cfg.data.cmvn:
            cmvn = GlobalCMVN.load(self.cfg.data.cmvn)
        else:
            from asr.audio import AudioError
            from asr.data import load_row_audio

            acc = CmvnAccumulator(self.cfg.features.num_mel_bins)
            for r in self.train_rows[:: max(1, len(self.train_rows) // 500)]:
                try:
                    wave = load_row_audio(r).to(self.device)
                except AudioError:
                    continue  # the data loader names and counts it when training reaches it
                feats, lens = self.fbank(wave[None], torch.tensor([wave.numel()], device=self.device))
                acc.add(feats[0, : int(lens[0])].cpu())
            cmvn = acc.result()
        self.model.cmvn.load_state_dict(cmvn.state_dict())
        if self.main:
            self.model.cmvn.save(self.out / "cmvn.json")

    def _init_weights(self, model_dir: str) -> None:
        """Start from the weights (and CMVN) of an exported model directory."""
        from asr.models.io import load_model_dir
        from asr.models.lm_io import check_same_tokenizer

        loaded = load_model_dir(model_dir)
        check_same_tokenizer(loaded.tokenizer, self.tokenizer, f"init {model_dir}")
        self.model.load_state_dict(loaded.model.state_dict())
        if self.main:
            self.model.cmvn.save(self.out / "cmvn.json")
            print(f"initialised from {model_dir} (step {loaded.config.provenance.get('step', '?')})", file=sys.stderr)

    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "block": self.block_gen.get_state(),
                 "aug": self.aug_gen.get_state(), "loader": self.loader_gen.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, state)
            return {"ranks": gathered}
        return {"ranks": [state]}

    def _set_rng_state(self, states: dict) -> None:
        s = {k: v.cpu() for k, v in states["ranks"][self.rank].items()}  # map_location moved them
        torch.set_rng_state(s["torch"])
        self.block_gen.set_state(s["block"])
        self.aug_gen.set_state(s["aug"])
        self.loader_gen.set_state(s["loader"])
        if "cuda" in s and self.device.type == "cuda":
            torch.cuda.set_rng_state(s["cuda"], self.device)

    def _resume(self) -> bool:
        found = load_latest_good(self.out, map_location=self.device)
        if found is None:
            return False
        path, ck = found
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.step, self.epoch, self.batches_done = ck["step"], ck["epoch"], ck["batches_done"]
        self.failed = ck.get("failed", [])
        if len(ck["rng"]["ranks"]) != self.world:
            raise ValueError(f"{path} was written by {len(ck['rng']['ranks'])} processes, now {self.world}: "
                             "resume with the same number of GPUs")
        self._set_rng_state(ck["rng"])
        if self.main:
            self.train_log.truncate_after(self.step)
            self.valid_log.truncate_after(self.step)
            print(f"resumed from {path} (step {self.step}, epoch {self.epoch}, batch {self.batches_done})",
                  file=sys.stderr)
        return True

    def save_checkpoint(self) -> None:
        rng = self._rng_state()  # collective: every rank takes part
        if not self.main:
            return
        save_atomic({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": self.epoch,
                     "batches_done": self.batches_done, "rng": rng, "failed": self.failed,
                     "config": dataclasses.asdict(self.cfg)}, self.out / f"checkpoint-{self.step}.pt")
        prune(self.out, self.cfg.optim.keep_checkpoints)

    # ------------------------------------------------------------------ loop
    def _loader(self):
        """The epoch's remaining batches: waveform batches from a DataLoader, or cached features."""
        self.sampler.epoch, self.sampler.batches_done = self.epoch, self.batches_done
        self.dataset.epoch = self.epoch
        if self.cache is not None:
            epoch = self.epoch
            return (self.cache.batch(indices, epoch) for indices in self.sampler)
        workers = self.cfg.data.num_workers
        return DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate, num_workers=workers,
                          generator=self.loader_gen, pin_memory=self.device.type == "cuda",
                          prefetch_factor=4 if workers else None)

    def _losses(self, batch, block_size, left_blocks):
        batch = batch.to(self.device)
        o = self.cfg.optim
        warmup = self.step < o.ctc_warmup_steps  # plain CTC: full context, no SpecAugment
        if warmup:
            block_size, left_blocks = None, None
        with torch.no_grad():
            if isinstance(batch, FeatureBatch):
                feats, feat_lens = batch.feats, batch.feat_lens
            else:
                waves = batch.waves
                if self.cfg.data.augment is not None:
                    waves = augment_waves(waves, batch.wave_lens, self.cfg.data.augment, self.aug_gen, self.rirs,
                                          self.cfg.features.sample_rate)
                feats, feat_lens = self.fbank(waves, batch.wave_lens, dither=o.dither)
            if o.spec_augment is not None and not warmup:
                feats = spec_augment(feats, feat_lens, o.spec_augment, self.aug_gen, fill=self.model.cmvn.mean)
        use_bf16 = o.bf16 and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return self.ddp(feats, feat_lens, batch.tokens, batch.token_lens, block_size, left_blocks,
                            ctc_only=warmup)

    def _seconds(self, batch) -> float:
        """Audio seconds in ``batch`` (for the throughput log)."""
        if isinstance(batch, FeatureBatch):
            return float(batch.feat_lens.sum()) * self.cfg.features.frame_shift_ms / 1000
        return float(batch.wave_lens.sum()) / self.cfg.features.sample_rate

    def train(self, deadline: float | None = None) -> dict:
        """Run until ``max_steps`` (or ``max_epochs``); returns the last validation results.

        Args:
            deadline: a ``time.monotonic()`` value; the run stops cleanly at the first step boundary
                after it (final checkpoint written, so running again resumes there). Under DDP the
                ranks agree on the step (rank 0's clock decides).
        """
        o = self.cfg.optim
        bar = tqdm(total=o.max_steps, initial=self.step, desc="train", unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        last_valid: dict = {}
        window = {"utts": 0, "audio": 0.0, "time": time.perf_counter()}
        accum = 0
        span = (time.monotonic(), deadline) if o.schedule == "deadline" and deadline is not None else None
        self.model.train()
        while (self.step < o.max_steps and (o.max_epochs is None or self.epoch < o.max_epochs)
               and not self._past(deadline)):
            finished_epoch = True
            for batch in self._loader():
                self.batches_done += 1
                self.failed.extend(batch.failed)
                if not batch.ids:
                    continue
                block_size, left_blocks = self.model.encoder.sample_block_config(self.block_gen)
                losses = self._losses(batch, block_size, left_blocks)
                (losses.total / o.accum_steps).backward()
                window["utts"] += len(batch.ids)
                window["audio"] += self._seconds(batch)
                accum += 1
                if accum < o.accum_steps:
                    continue
                accum = 0
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
                if torch.isfinite(grad_norm):
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                if span:
                    self._anneal(span)
                self.step += 1
                bar.update(1)
                if self.step % o.log_every == 0 or self.step == 1:
                    self._log(losses, grad_norm, window, bar)
                if o.valid_every and self.step % o.valid_every == 0:
                    last_valid = self.validate()
                if self.step % o.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.step >= o.max_steps or self._past(deadline):
                    finished_epoch = False
                    break
            if finished_epoch:
                self.epoch += 1
                self.batches_done = 0
                if not o.valid_every:
                    last_valid = self.validate()
        bar.close()
        if self.step % o.checkpoint_every:
            self.save_checkpoint()
        if self.main:
            bad = list(dict.fromkeys(u for u, _ in self.failed))  # each utterance once, not once per epoch
            print(f"done: {self.step} steps, {self.epoch} epochs; {len(bad)} utterances could not be "
                  f"read{': ' + ', '.join(bad[:10]) if bad else ''}", file=sys.stderr)
        return last_valid

    def _anneal(self, span: tuple[float, float]) -> None:
        """``schedule: deadline``: scale the warm-up schedule's LR by the share of ``span`` left.

        Past the warm-up, the factor is ``max(min_lr_ratio, time left / span)``; rank 0's clock
        decides, so every rank steps with the same LR.
        """
        o = self.cfg.optim
        start, end = span
        left = torch.tensor([(end - time.monotonic()) / max(end - start, 1e-9)], device=self.device)
        if self.world > 1:
            dist.broadcast(left, 0)
        warm = min(self.step + 1, o.warmup_steps) / o.warmup_steps if o.warmup_steps > 0 else 1.0
        factor = warm * max(o.min_lr_ratio, min(1.0, float(left)))
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor

    def _past(self, deadline: float | None) -> bool:
        """Whether ``deadline`` has passed, decided by rank 0 and shared with every rank."""
        if deadline is None:
            return False
        past = time.monotonic() >= deadline
        if self.world > 1:
            flag = torch.tensor([float(past)], device=self.device)
            dist.broadcast(flag, 0)
            past = bool(flag.item())
        return past

    def _log(self, losses, grad_norm, window, bar) -> None:
        now = time.perf_counter()
        dt = max(now - window["time"], 1e-9)
        row = {"step": self.step, "epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
               "loss": float(losses.total.detach()), **{k: v for k, v in losses.items().items() if k != "total"},
               "grad_norm": float(grad_norm), "utt_per_s": window["utts"] * self.world / dt,
               "audio_x_realtime": window["audio"] * self.world / dt}
        window.update(utts=0, audio=0.0, time=now)
        if self.main:
            self.train_log.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3g}", lr=f"{row['lr']:.2e}", xRT=f"{row['audio_x_realtime']:.0f}")

    def validate(self) -> dict:
        if not self.valid_rows or not self.main:
            if self.world > 1:
                dist.barrier()
            return {}
        result = validate(self.model, self.fbank, self.valid_rows, self.tokenizer, self.device,
                          self.cfg.data.batch_seconds, bf16=self.cfg.optim.bf16)
        self.model.train()
        self.valid_log.append({"step": self.step, "epoch": self.epoch, **result})
        plot_curves(self.out / "train.csv", self.out / "valid.csv", self.out / "curves.png")
        print(f"valid step {self.step}: " + " ".join(f"{k}={v:.4g}" for k, v in result.items()), file=sys.stderr)
        if self.world > 1:
            dist.barrier()
        return result
