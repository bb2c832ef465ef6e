"""Shared pieces of the long-context LM benchmarks (lm_*.py): the text stream, small LMs trained on
short windows (CPU, 1 thread, a few minutes), and cached LM directories so that the later
benchmarks reuse the LMs trained by ``lm_xpos.py``.

Text: ``../shared/text/brown.txt`` read in place (never copied), one sentence per line, in
document order. The stream is ``<s> line <s> line ...`` (``<s>`` = ``<sos/eos>``, id 2) with the
ASR model's tokenizer (``models/default/tokenizer.model``, so the LM fits shallow fusion); the
first 90 % of the lines train, the last 10 % are held out. The LMs train a fixed number of steps
(same batches for each), so they differ only in their positions.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

import torch

from asr.models import LMConfig, TransformerLM
from asr.models.lm_io import load_lm_dir, save_lm_dir
from asr.tokenizer import SOS_EOS, Tokenizer
from asr.train.lm import read_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
# ../shared next to the checkout (the main checkout's parent, or a worktree's grandparent)
SHARED = next((d / "shared" for d in ROOT.parents if (d / "shared" / "text").is_dir()), ROOT.parent / "shared")
TEXT = SHARED / "text" / "brown.txt"
TOKENIZER = ROOT / "models" / "default" / "tokenizer.model"
LM_CACHE = Path("/tmp/blockasr_lm_bench")  # trained LM directories (outside the repository)
TRAIN_LEN = 64


def streams(text: Path = TEXT, tokenizer: Path = TOKENIZER) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) token streams (N,) LongTensor."""
    lines = read_text([str(text)])
    tok = Tokenizer(tokenizer)
    cut = int(0.9 * len(lines))

    def stream(part: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for line in part:
            ids.append(SOS_EOS)
            ids.extend(tok.encode(line))
        return torch.tensor(ids, dtype=torch.long)

    return stream(lines[:cut]), stream(lines[cut:])


def lm_config(pos: str, **kw) -> LMConfig:
    """The benchmark LM: 2 layers of width 128 (0.46 M parameters)."""
    base = dict(d_model=128, n_heads=4, n_layers=2, ff_mult=4, dropout=0.0, pos=pos, xpos_scale_base=32.0)
    return LMConfig(**{**base, **kw})


def train(cfg: LMConfig, train_ids: torch.Tensor, steps: int, vocab: int, seed: int = 0,
          window: int = TRAIN_LEN, batch: int = 32) -> tuple[TransformerLM, dict]:
    """Train ``steps`` AdamW steps on batches of random windows of ``window`` tokens (same data order
    for every LM: the windows depend on ``seed`` only)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    lm = TransformerLM(vocab, cfg).train()
    opt = torch.optim.AdamW(lm.parameters(), lr=2e-3, betas=(0.9, 0.98), weight_decay=0.01)
    warm, step, t0, loss = 100, 0, time.time(), float("nan")
    while step < steps:
        starts = [rng.randrange(0, len(train_ids) - window - 1) for _ in range(batch)]
        x = torch.stack([train_ids[s : s + window + 1] for s in starts])  # (B, window + 1)
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / warm)
        out = lm.stream_loss(x)
        opt.zero_grad()
        out.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        loss, step = float(out.detach()), step + 1
        if step % 100 == 0:
            print(f"  {cfg.pos}: step {step} loss {loss:.3f} ({time.time() - t0:.0f} s)", file=sys.stderr)
    return lm.eval(), {"steps": step, "seconds": round(time.time() - t0, 1), "train_loss": round(loss, 4),
                       "tokens_seen": step * batch * window}


def cached_lm(pos: str, train_ids: torch.Tensor, steps: int, vocab: int) -> TransformerLM:
    """The LM trained for ``pos`` (from ``LM_CACHE`` when there, else trained and stored there)."""
    path = LM_CACHE / pos
    if (path / "model.pt").is_file():
        return load_lm_dir(path).lm
    lm, info = train(lm_config(pos), train_ids, steps, vocab)
    save_lm_dir(lm, TOKENIZER, path, provenance={"text": str(TEXT), "window": TRAIN_LEN, **info})
    return lm


@torch.no_grad()
def stream_ppl(lm: TransformerLM, ids: torch.Tensor, length: int, max_tokens: int,
               block_size: int | None = None, batch_tokens: int = 8192) -> float:
    """Perplexity over non-overlapping windows of ``length`` tokens (every position scored), about
    ``max_tokens`` targets in all; ``block_size``: blockwise causal attention."""
    n = max(1, min(max_tokens // length, (len(ids) - 1) // (length + 1)))
    wins = torch.stack([ids[i * (length + 1) : (i + 1) * (length + 1)] for i in range(n)])
    per = max(1, batch_tokens // length)
    total = 0.0
    for i in range(0, n, per):
        x = wins[i : i + per]
        logits = lm.out(lm.hidden(x[:, :-1], block_size=block_size))
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(),
                                                         reduction="sum"))
    return math.exp(total / (n * length))
