"""AdamW with linear warm-up then inverse-square-root decay: the ASR and LM trainers' optimiser."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["adamw_with_warmup", "warmup_inverse_sqrt"]


def warmup_inverse_sqrt(warmup: int):
    """LR factor for a step: ``step / warmup`` up to ``warmup``, then ``sqrt(warmup / step)``.

    Example (warmup 4): steps 1, 2, 4, 16 -> 0.25, 0.5, 1.0, 0.5.
    """
    def f(step: int) -> float:
        step = max(step, 1)
        return min(step / warmup, math.sqrt(warmup / step)) if warmup > 0 else 1.0
    return f


def adamw_with_warmup(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float,
                      warmup_steps: int) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no weight decay on biases, norms and embeddings) and its warm-up schedule."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim > 1 and "embed" not in name else no_decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_inverse_sqrt(warmup_steps))
