"""Validation: loss and greedy-CTC WER, full context and with a 640 ms streaming block mask."""

from __future__ import annotations

import jiwer
import torch

from asr.data import AsrDataset, DurationBatchSampler, collate
from asr.features import Fbank
from asr.models import AsrModel
from asr.tokenizer import Tokenizer

__all__ = ["validate", "greedy_ctc_texts"]

STREAMING_BLOCK = 16  # encoder frames = 640 ms
STREAMING_LEFT = 4


def greedy_ctc_texts(logp: torch.Tensor, lens: torch.Tensor, tokenizer: Tokenizer) -> list[str]:
    """Best-path CTC decoding of a batch: (B, T, V) log-probs -> texts."""
    best = logp.argmax(-1).cpu()
    texts = []
    for b, n in enumerate(lens.tolist()):
        ids = torch.unique_consecutive(best[b, :n]).tolist()
        texts.append(tokenizer.decode([i for i in ids if i != 0]))
    return texts


@torch.no_grad()
def validate(model: AsrModel, fbank: Fbank, rows: list[dict], tokenizer: Tokenizer, device: torch.device,
             batch_seconds: float, bf16: bool = True) -> dict[str, float]:
    model.eval()
    ds = AsrDataset(rows, tokenizer)
    sampler = DurationBatchSampler(ds.durations, batch_seconds, shuffle=False)
    totals: dict[str, float] = {}
    n_batches = 0
    refs, hyps_full, hyps_block = [], [], []
    use_bf16 = bf16 and device.type == "cuda"
    for idx in sampler:
        batch = collate([ds[i] for i in idx])
        if not batch.ids:
            continue
        batch = batch.to(device)
        feats, feat_lens = fbank(batch.waves, batch.wave_lens)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            losses = model(feats, feat_lens, batch.tokens, batch.token_lens)
            for k, v in losses.items().items():
                totals[k] = totals.get(k, 0.0) + v
            n_batches += 1
            for block, hyps in ((None, hyps_full), (STREAMING_BLOCK, hyps_block)):
                enc, enc_lens = model.encode(feats, feat_lens, block, STREAMING_LEFT if block else None)
                hyps.extend(greedy_ctc_texts(model.ctc_logp(enc), enc_lens, tokenizer))
        refs.extend(rows[i]["text"] for i in idx if rows[i]["id"] in set(batch.ids))
    result = {("loss" if k == "total" else k): v / max(n_batches, 1) for k, v in totals.items()}
    result["wer_full"] = 100 * jiwer.wer(refs, hyps_full) if refs else float("nan")
    result["wer_640ms"] = 100 * jiwer.wer(refs, hyps_block) if refs else float("nan")
    return result
