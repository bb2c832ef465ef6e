"""Text-only training of a :class:`~asr.models.TransformerLM`: token-count batches, AdamW with
warmup, bf16 autocast on CUDA, atomic checkpoints with exact resume, validation perplexity on
held-out lines, CSV logs and a perplexity plot; the result is an LM directory (``<out>/lm``).

Exact resume: a checkpoint holds the model, optimizer, scheduler, the data position (epoch and
batches consumed) and the random generators. Batch order is a pure function of (seed, epoch), so a
run killed and resumed reproduces the losses of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from asr.config import ConfigError, from_dict, read_yaml, resolve_path, save_yaml
from asr.data.sampler import DurationBatchSampler
from asr.models.config import LMConfig
from asr.models.lm import TransformerLM
from asr.models.lm_io import save_lm_dir
from asr.tokenizer import Tokenizer
from asr.train.checkpoint import load_latest_good, prune, save_atomic
from asr.train.logs import CsvLog
from asr.train.optim import adamw_with_warmup
from asr.text import normalize_text  # the corpora's transcript convention

__all__ = ["LMDataConfig", "LMOptimConfig", "LMExperimentConfig", "load_lm_experiment", "read_text",
           "collate_tokens", "perplexity", "LMTrainer"]


@dataclass(frozen=True)
class LMDataConfig:
    """Paths are relative to the YAML file's folder unless absolute.

    Attributes:
        train: text files, one sentence per line (normalised to the corpora's upper-case words).
        valid: held-out text file; None = hold out ``valid_lines`` random lines of ``train``
            (at most a tenth of them).
        tokenizer: sentencepiece model (the one of the ASR model the LM is meant for).
        kaldi_ids: lines are Kaldi ``text`` lines (``<utt-id> WORDS``): drop the first field.
        valid_lines: lines held out of ``train`` when ``valid`` is None (also caps ``valid``).
        batch_tokens: padded tokens per batch (longest sequence x sequences, ``<eos>`` counted).
        max_line_tokens: drop longer lines (reported at start).
    """

    train: tuple[str, ...] = ()
    valid: str | None = None
    tokenizer: str = ""
    kaldi_ids: bool = False
    valid_lines: int = 500
    batch_tokens: int = 8000
    max_line_tokens: int = 256


@dataclass(frozen=True)
class LMOptimConfig:
    """AdamW with linear warmup then inverse-square-root decay (as the ASR trainer)."""

    lr: float = 1e-3
    warmup_steps: int = 1000
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    max_steps: int = 20000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    valid_every: int = 500
    log_every: int = 50
    seed: int = 0
    bf16: bool = True  # autocast on CUDA; float32 on CPU regardless


@dataclass(frozen=True)
class LMExperimentConfig:
    lm: LMConfig = field(default_factory=LMConfig)
    data: LMDataConfig = field(default_factory=LMDataConfig)
    optim: LMOptimConfig = field(default_factory=LMOptimConfig)


def load_lm_experiment(path: str | Path | None = None, **data_overrides) -> LMExperimentConfig:
    """Load an LM experiment YAML (sections ``lm``, ``data``, ``optim``; all optional) and apply
    ``data_overrides`` (non-None values replace ``data`` fields, e.g. from the command line).
    Relative data paths in the file resolve against the file's folder."""
    raw, base = {}, Path.cwd()
    if path is not None:
        path = Path(path)
        raw = read_yaml(path) or {}
        base = path.parent
    cfg = from_dict(LMExperimentConfig, raw, source=str(path or "<defaults>"))
    d = cfg.data
    d = dataclasses.replace(d, train=tuple(resolve_path(p, base) for p in d.train),
                            valid=resolve_path(d.valid, base) if d.valid else None,
                            tokenizer=resolve_path(d.tokenizer, base) if d.tokenizer else "")
    d = dataclasses.replace(d, **{k: v for k, v in data_overrides.items() if v is not None})
    if not d.train:
        raise ConfigError("no training text: give --text FILE... (or data.train in the config)")
    if not d.tokenizer:
        raise ConfigError("no tokenizer: give --tokenizer TOK.model (or data.tokenizer in the config)")
    return dataclasses.replace(cfg, data=d)


def read_text(paths: list[str] | tuple[str, ...], kaldi_ids: bool = False) -> list[str]:
    """Normalised, non-empty sentences of text files (one per line; Kaldi ``<id> WORDS`` lines with
    ``kaldi_ids``)."""
    lines = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"text file not found: {p}")
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                if kaldi_ids:  # "<utt-id> WORDS": drop the id (a line with an id only is empty)
                    fields = line.split(maxsplit=1)
                    line = fields[1] if len(fields) == 2 else ""
                text = normalize_text(line)
                if text:
                    lines.append(text)
    return lines


def collate_tokens(seqs: list[list[int]], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> tokens (B, U) padded with 0, token_lens (B,)."""
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    tokens = torch.zeros(len(seqs), int(lens.max()) if seqs else 0, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return tokens.to(device), lens.to(device)


@torch.no_grad()
def perplexity(lm: TransformerLM, seqs: list[list[int]], batch_tokens: int = 8000, bf16: bool = True) -> dict:
    """Per-token negative log-likelihood (nats) and perplexity of ``seqs``, ``<eos>`` included.

    Returns:
        ``{"loss": nll per token, "ppl": exp(loss), "tokens": tokens scored}``.
    """
    was_training = lm.training
    lm.eval()
    device = lm.embed.weight.device
    sampler = DurationBatchSampler([len(s) + 1 for s in seqs], batch_tokens, shuffle=False)
    total, count = 0.0, 0
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
        for idx in sampler:
            tokens, lens = collate_tokens([seqs[i] for i in idx], device)
            n = int(lens.sum()) + len(idx)  # targets: the tokens and one <eos> per line
            total += float(lm(tokens, lens).total) * n
            count += n
    lm.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(loss), "tokens": count}


class LMTrainer:
    """Trains a :class:`TransformerLM` on text into ``out_dir`` (single process).

    Args:
        cfg: the LM experiment.
        out_dir: ``checkpoint-<step>.pt``, ``config.yaml``, ``train.csv``, ``valid.csv``,
            ``curves.png`` and, at the end, the LM directory ``lm/``. A folder with checkpoints
            is resumed.
        device: default CUDA when available, else CPU.
        progress: show a progress bar.
    """

    def __init__(self, cfg: LMExperimentConfig, out_dir: str | Path, device: str | None = None,
                 progress: bool = True):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress = progress
        o, d = cfg.optim, cfg.data
        torch.manual_seed(o.seed)
        self.tokenizer = Tokenizer(d.tokenizer)
        self.train_seqs, self.valid_seqs = self._read_data()
        self.lm = TransformerLM(self.tokenizer.vocab_size, cfg.lm).to(self.device)
        self.sampler = DurationBatchSampler([len(s) + 1 for s in self.train_seqs], d.batch_tokens, shuffle=True,
                                            seed=o.seed)
        self.optimizer, self.scheduler = adamw_with_warmup(self.lm, o.lr, o.betas, o.weight_decay, o.warmup_steps)
        self.step, self.epoch, self.batches_done = 0, 0, 0
        self.out.mkdir(parents=True, exist_ok=True)
        self.train_log, self.valid_log = CsvLog(self.out / "train.csv"), CsvLog(self.out / "valid.csv")
        if not self._resume():
            save_yaml(cfg, self.out / "config.yaml")

    # ------------------------------------------------------------------ set-up
    def _encode(self, lines: list[str]) -> list[list[int]]:
        seqs = [ids for ids in (self.tokenizer.encode(t) for t in lines) if ids]
        keep = [s for s in seqs if len(s) <= self.cfg.data.max_line_tokens]
        if len(keep) < len(seqs):
            print(f"note: {len(seqs) - len(keep)} lines longer than {self.cfg.data.max_line_tokens} tokens "
                  "are not used", file=sys.stderr)
        return keep

    def _read_data(self) -> tuple[list[list[int]], list[list[int]]]:
        d = self.cfg.data
        lines = read_text(d.train, d.kaldi_ids)
        if d.valid:
            valid = read_text([d.valid], d.kaldi_ids)[: d.valid_lines]
        else:  # a fixed random sample of the training lines, held out
            n_held = min(d.valid_lines, len(lines) // 10)
            held = set(random.Random(self.cfg.optim.seed).sample(range(len(lines)), n_held))
            valid = [t for i, t in enumerate(lines) if i in held]
            lines = [t for i, t in enumerate(lines) if i not in held]
        train = self._encode(lines)
        if not train:
            raise ValueError(f"no training lines in {', '.join(d.train)}")
        return train, self._encode(valid)

    def _resume(self) -> bool:
        found = load_latest_good(self.out, map_location=self.device)
        if found is None:
            return False
        path, ck = found
        self.lm.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.step, self.epoch, self.batches_done = ck["step"], ck["epoch"], ck["batches_done"]
        torch.set_rng_state(ck["rng"]["torch"])
        if "cuda" in ck["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck["rng"]["cuda"], self.device)
        self.train_log.truncate_after(self.step)
        self.valid_log.truncate_after(self.step)
        print(f"resumed from {path} (step {self.step}, epoch {self.epoch}, batch {self.batches_done})", file=sys.stderr)
        return True

    def save_checkpoint(self) -> None:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        save_atomic({"model": self.lm.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": self.epoch,
                     "batches_done": self.batches_done, "rng": rng, "config": dataclasses.asdict(self.cfg)},
                    self.out / f"checkpoint-{self.step}.pt")
        prune(self.out, self.cfg.optim.keep_checkpoints)

    # ------------------------------------------------------------------ loop
    def _batches(self):
        """The rest of the current epoch's batches, as (tokens (B, U), token_lens (B,))."""
        self.sampler.epoch, self.sampler.batches_done = self.epoch, self.batches_done
        for idx in self.sampler:
            yield collate_tokens([self.train_seqs[i] for i in idx], self.device)

    def train(self) -> dict:
        """Run until ``max_steps``; write ``<out>/lm``; return the last validation results."""
        o = self.cfg.optim
        bar = tqdm(total=o.max_steps, initial=self.step, desc="train-lm", unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        last_valid: dict = {}
        window = {"tokens": 0, "time": time.perf_counter()}
        use_bf16 = o.bf16 and self.device.type == "cuda"
        self.lm.train()
        while self.step < o.max_steps:
            for tokens, lens in self._batches():
                self.batches_done += 1
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss = self.lm(tokens, lens).total
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.lm.parameters(), o.grad_clip)
                if torch.isfinite(grad_norm):
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                window["tokens"] += int(lens.sum()) + len(lens)
                bar.update(1)
                if self.step % o.log_every == 0 or self.step == 1:
                    self._log(float(loss.detach()), float(grad_norm), window, bar)
                if o.valid_every and self.step % o.valid_every == 0:
                    last_valid = self.validate()
                if self.step % o.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.step >= o.max_steps:
                    break
            else:  # the epoch ran out
                self.epoch += 1
                self.batches_done = 0
        bar.close()
        if not (last_valid and o.valid_every and self.step % o.valid_every == 0):
            last_valid = self.validate()  # the final model's perplexity
        if self.step % o.checkpoint_every:
            self.save_checkpoint()
        lm_dir = save_lm_dir(self.lm, self.tokenizer.path, self.out / "lm", provenance={
            "train": list(self.cfg.data.train), "valid": self.cfg.data.valid, "steps": self.step,
            "epochs": self.epoch, "valid_ppl": round(last_valid.get("ppl", float("nan")), 3)})
        print(f"done: {self.step} steps, {self.epoch} epochs; valid perplexity "
              f"{last_valid.get('ppl', float('nan')):.2f}; wrote {lm_dir}", file=sys.stderr)
        return last_valid

    def _log(self, loss: float, grad_norm: float, window: dict, bar) -> None:
        now = time.perf_counter()
        row = {"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0], "loss": loss,
               "ppl": math.exp(min(loss, 50.0)), "grad_norm": grad_norm,
               "tokens_per_s": window["tokens"] / max(now - window["time"], 1e-9)}
        window.update(tokens=0, time=now)
        self.train_log.append(row)
        bar.set_postfix(loss=f"{loss:.3g}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")

    def validate(self) -> dict:
        """Perplexity of the held-out lines (logged to ``valid.csv``, plotted to ``curves.png``)."""
        if not self.valid_seqs:
            return {}
        result = perplexity(self.lm, self.valid_seqs, self.cfg.data.batch_tokens, self.cfg.optim.bf16)
        self.valid_log.truncate_after(self.step - 1)  # a run resumed at its last step validates again
        self.valid_log.append({"step": self.step, "epoch": self.epoch, **result})
        _plot_perplexity(self.out / "train.csv", self.out / "valid.csv", self.out / "curves.png")
        if not self.progress:
            print(f"valid step {self.step}: loss={result['loss']:.4g} ppl={result['ppl']:.4g}", file=sys.stderr)
        return result


def _plot_perplexity(train_csv: Path, valid_csv: Path, out_png: Path) -> None:
    """Training and validation perplexity against steps (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, valid = CsvLog(train_csv).rows(), CsvLog(valid_csv).rows()
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot([float(r["step"]) for r in train], [float(r["ppl"]) for r in train], label="train (batch)")
    if valid:
        ax.plot([float(r["step"]) for r in valid], [float(r["ppl"]) for r in valid], "o-", label="valid")
    ax.set(xlabel="step", ylabel="perplexity per token", yscale="log", title="LM perplexity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
