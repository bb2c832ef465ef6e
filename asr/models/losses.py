"""Loss containers and the padding helpers every model uses."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from asr.tokenizer import SOS_EOS

__all__ = ["Losses", "add_sos_eos"]


@dataclass
class Losses:
    """``total`` is what the trainer minimises; the parts are per-head values for logging."""

    total: torch.Tensor
    ctc: torch.Tensor | None = None
    att: torch.Tensor | None = None
    sar: torch.Tensor | None = None
    lm: torch.Tensor | None = None
    att_acc: torch.Tensor | None = None

    def items(self) -> dict[str, float]:
        """The defined losses as floats (for logs)."""
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self) if getattr(self, f.name) is not None}


def add_sos_eos(tokens: torch.Tensor, token_lens: torch.Tensor, pad: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder input ``[sos, y]`` (padded with eos) and target ``[y, eos]`` (padded with ``pad``).

    Args:
        tokens: (B, U) padded ids; token_lens: (B,).
    Returns:
        inputs (B, U + 1), targets (B, U + 1).
    """
    B, U = tokens.shape
    pos = torch.arange(U + 1, device=tokens.device)[None, :]
    sos = torch.full((B, 1), SOS_EOS, dtype=tokens.dtype, device=tokens.device)
    inputs = torch.cat([sos, tokens], dim=1)
    inputs = inputs.masked_fill(pos > token_lens[:, None], SOS_EOS)
    targets = torch.cat([tokens, torch.full_like(sos, pad)], dim=1)
    targets = targets.masked_fill(pos == token_lens[:, None], SOS_EOS)
    targets = targets.masked_fill(pos > token_lens[:, None], pad)
    return inputs, targets
