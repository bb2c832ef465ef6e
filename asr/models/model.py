"""The ASR model: CMVN -> blockwise conformer encoder -> CTC head (+ attention decoder) (+ SAR decoder).

One class composes the heads that the config asks for (see :class:`ModelConfig`), so the shipped
model can run every decoder of the toolkit: streaming CTC, SAR greedy and blockwise synchronous
beam search.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asr.encoder import build_encoder
from asr.features import GlobalCMVN
from asr.models.config import ModelConfig
from asr.models.decoder import AttentionDecoder
from asr.models.losses import Losses
from asr.models.sar import SARDecoder
from asr.search.ctc import ctc_forced_align_batch

__all__ = ["AsrModel", "build_model"]


class AsrModel(nn.Module):
    """Encoder + heads. ``forward(feats, feat_lens, tokens, token_lens) -> Losses``.

    Features enter un-normalised: the model applies its stored global CMVN first.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.cmvn = GlobalCMVN.identity(cfg.encoder.input_dim)
        self.encoder = build_encoder(cfg.encoder)  # encoder.kind: plain or contextual block
        d = self.encoder.output_dim
        self.ctc = nn.Linear(d, cfg.vocab_size)
        self.decoder = AttentionDecoder(cfg.vocab_size, d, cfg.decoder) if cfg.decoder else None
        self.sar = SARDecoder(cfg.vocab_size, d, cfg.sar) if cfg.sar else None

    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor, block_size: int | None = None,
               left_blocks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, 80) raw fbank -> encoder output (B, T', D), lengths (B,)."""
        return self.encoder(self.cmvn(feats), feat_lens, block_size, left_blocks)

    def ctc_logp(self, enc: torch.Tensor) -> torch.Tensor:
        return self.ctc(enc).float().log_softmax(-1)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor, tokens: torch.Tensor,
                token_lens: torch.Tensor, block_size: int | None = None,
                left_blocks: int | None = None, ctc_only: bool = False) -> Losses:
        """All training losses of one padded batch.

        Args:
            feats: (B, T, 80) fbank; feat_lens: (B,); tokens: (B, U) padded; token_lens: (B,).
            block_size, left_blocks: the encoder's block mask for this batch (dynamic block
                training draws them with ``model.encoder.sample_block_config``).
            ctc_only: the CTC loss alone (the trainer's CTC warm-up); other heads are not run.
        """
        enc, enc_lens = self.encode(feats, feat_lens, block_size, left_blocks)
        logp = self.ctc_logp(enc)
        ctc = F.ctc_loss(logp.transpose(0, 1), tokens, enc_lens, token_lens, blank=0,
                         reduction="sum", zero_infinity=True) / tokens.shape[0]
        losses = Losses(total=ctc, ctc=ctc.detach())
        if ctc_only:
            return losses
        rest = []
        if self.decoder is not None:
            att, acc = self.decoder(enc, enc_lens, tokens, token_lens)
            losses.att, losses.att_acc = att.detach(), acc.detach()
            rest.append(att)
        if self.sar is not None:
            frames = _align(logp.detach(), enc_lens, tokens, token_lens)
            logits = self.sar(enc, enc_lens, tokens, token_lens, frames, block_size)
            sar = self.sar.ctc_loss(logits, enc_lens, tokens, token_lens)
            lm = self.sar.lm_loss(tokens, token_lens)
            losses.sar, losses.lm = sar.detach(), lm.detach()
            rest.append(sar)
            ctc_part = self.cfg.ctc_weight * ctc + (1 - self.cfg.ctc_weight) * sum(rest) / len(rest)
            losses.total = ctc_part + self.cfg.sar.lm_loss_weight * lm
        elif rest:
            losses.total = self.cfg.ctc_weight * ctc + (1 - self.cfg.ctc_weight) * sum(rest) / len(rest)
        return losses


@torch.no_grad()
def _align(logp: torch.Tensor, enc_lens: torch.Tensor, tokens: torch.Tensor,
           token_lens: torch.Tensor) -> torch.Tensor:
    """CTC spike frame of every token (B, K) by Viterbi; utterances too short to align get evenly
    spaced frames (their CTC loss is zeroed by ``zero_infinity`` anyway)."""
    repeats = ((tokens[:, 1:] == tokens[:, :-1]) &
               (torch.arange(1, tokens.shape[1], device=tokens.device)[None] < token_lens[:, None])).sum(1)
    ok = (token_lens + repeats) <= enc_lens
    K = tokens.shape[1]
    even = (torch.arange(K, device=tokens.device)[None, :] * enc_lens[:, None]) // token_lens.clamp(min=1)[:, None]
    frames = even.clone()
    if bool(ok.any()):
        idx = ok.nonzero().squeeze(1)
        aligned = ctc_forced_align_batch(logp[idx], enc_lens[idx], tokens[idx], token_lens[idx]).token_frames
        frames[idx] = aligned
    return frames


def build_model(cfg: ModelConfig) -> AsrModel:
    return AsrModel(cfg)
