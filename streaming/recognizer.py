"""One stream's recognition: audio chunks of any size in, partial and final results out.

audio -> :class:`~asr.features.OnlineFbank` -> CMVN -> ``encoder.step`` (block mask, KV and conv
caches) -> per block: CTC log-probs, the chosen block decoder, the endpointer. A segment ends on
the endpoint rules (or at :meth:`Recognizer.finalize`); its final result carries word timestamps
and the decoder starts afresh, so an hours-long stream keeps bounded state.

The results do not depend on how the audio is chunked: features, encoder blocks and every
decision are computed on the same frames whatever the chunk sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from asr.decode import (FRAME_SECONDS, BsbsDecoder, CtcGreedyDecoder, SarGreedyDecoder, Tokens, Word,
                        offline_decode, words_from_tokens)
from asr.encoder import block_size_from_ms
from asr.features import OnlineFbank
from asr.models.io import LoadedModel
from asr.models.lm import TransformerLM
from streaming.endpoint import EndpointConfig, Endpointer

__all__ = ["DECODERS", "FLUSH_PAD_MS", "RecognizerConfig", "Result", "Recognizer", "process_batch"]

DECODERS = ("ctc", "sar", "bsbs", "offline")

# Digital silence appended at the end of the stream (finalize). Without it the last ~100-300 ms of
# speech never reach an encoder frame in which the model can emit them: the fbank drops the last
# partial 25 ms window, the subsampling the last < 7 feature frames (its receptive field), and a
# CTC model spikes a token some frames after its sound. A clip that stopped right after the
# speech lost its last word ("OVER LOND" for "OVER LONDON", models/default); 400 ms gave the same
# text as 1 s of appended silence on every flite clip we tried, 80-300 ms not always.
FLUSH_PAD_MS = 400
_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class RecognizerConfig:
    """Args:
        decoder: ``ctc`` (streaming greedy CTC), ``sar`` (semi-autoregressive greedy),
            ``bsbs`` (blockwise synchronous beam search), ``offline`` (full-context joint beam
            search per segment; no partials).
        block_ms: encoder block (latency); a multiple of 40 ms.
        left_blocks: encoder left context in blocks (None = unlimited; bounded keeps memory flat).
        beam, ctc_weight, length_bonus: beam searches (bsbs, offline).
        ctc_beam: the ctc decoder's final result by CTC prefix beam search of this width (1 = greedy).
        lm_weight: shallow-fusion weight of the LM given to :class:`Recognizer` (bsbs, offline).
        tentative_frames: SAR boundary rule ``g`` (0 = naive).
        partials: emit partial results.
    """

    decoder: str = "sar"
    block_ms: int = 640
    left_blocks: int | None = 4
    beam: int = 10
    ctc_beam: int = 1
    ctc_weight: float = 0.3
    length_bonus: float = 0.0
    lm_weight: float = 0.0
    tentative_frames: int = 2
    partials: bool = True
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}; got {self.decoder!r}")
        block_size_from_ms(self.block_ms)


@dataclass(frozen=True)
class Result:
    """A partial (``is_final=False``) or final result of segment ``segment``; times in seconds."""

    text: str
    is_final: bool
    segment: int
    words: list[Word] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0


class Recognizer:
    """Streaming recognition of one audio stream with a loaded model (see module docstring).

    Args:
        lm: language model for shallow fusion (weight ``cfg.lm_weight``; bsbs and offline decoders),
            on the model's device and trained with the model's tokenizer (``asr.models.lm_io.load_lm_dir``).
    """

    def __init__(self, loaded: LoadedModel, cfg: RecognizerConfig = RecognizerConfig(),
                 lm: TransformerLM | None = None):
        self.loaded, self.cfg, self.lm = loaded, cfg, lm
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        if cfg.decoder == "sar" and self.model.sar is None:
            raise ValueError(f"{loaded.path}: this model has no SAR decoder; use --decoder ctc")
        if cfg.decoder == "bsbs" and self.model.decoder is None:
            raise ValueError(f"{loaded.path}: this model has no attention decoder; use --decoder ctc or sar")
        if cfg.lm_weight:
            if lm is None:
                raise ValueError("lm_weight is set but no LM was given (--lm DIR)")
            if cfg.decoder not in ("bsbs", "offline"):
                raise ValueError(f"LM shallow fusion works with the bsbs and offline decoders, not {cfg.decoder!r}")
            if lm.vocab_size != loaded.tokenizer.vocab_size:
                raise ValueError(f"the LM has {lm.vocab_size} tokens, the model's tokenizer "
                                 f"{loaded.tokenizer.vocab_size}")
        self.device = next(self.model.parameters()).device
        self.block_size = block_size_from_ms(cfg.block_ms)
        self.fbank = OnlineFbank(loaded.features).to(self.device)
        self.state = self.model.encoder.init_state(1, self.block_size, cfg.left_blocks, self.device)
        self.endpointer = Endpointer(cfg.endpoint)
        self.segment = 0
        self.frames = 0  # encoder frames so far
        self.segment_start = 0  # encoder frame where the current segment starts
        self.feats: list[torch.Tensor] = []  # offline decoder: features of the current segment
        self.feat_start = 0  # feature frame of self.feats[0]
        self.feat_frames = 0
        self.last_partial = ""
        self.finished = False
        self.samples = 0  # audio samples accepted (the stream's real length, without the flush pad)
        self.decoder = self._new_decoder()

    def _new_decoder(self):
        c = self.cfg
        if c.decoder == "sar":
            return SarGreedyDecoder(self.model.sar, c.tentative_frames)
        if c.decoder == "bsbs":
            return BsbsDecoder(self.model, beam=c.beam, ctc_weight=c.ctc_weight, length_bonus=c.length_bonus,
                               lm=self.lm, lm_weight=c.lm_weight)
        if c.decoder == "ctc":
            return CtcGreedyDecoder(c.ctc_beam)
        return CtcGreedyDecoder()  # offline's streaming pass (endpoints)

    # ------------------------------------------------------------------ public
    def accept_waveform(self, samples: np.ndarray | torch.Tensor) -> list[Result]:
        """Feed 16 kHz mono float32 samples in [-1, 1]; returns new partial/final results."""
        return self._feed(self._features(samples), final=False)

    def finalize(self) -> list[Result]:
        """End the stream: append :data:`FLUSH_PAD_MS` of silence, flush the last partial block and
        commit every tentative token; the last result is always a final. Times stay inside the audio."""
        if self.finished:
            return []
        audio_s = round(self.samples / _SAMPLE_RATE, 3)
        pad = self.fbank.accept(torch.zeros(_SAMPLE_RATE * FLUSH_PAD_MS // 1000, device=self.device))
        results = self._feed(pad, final=True)
        results.append(self._end_segment(always=True))
        self.finished = True
        return [_clip_times(r, audio_s) for r in results]

    # ------------------------------------------------------------------ internals
    def _features(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        if self.finished:
            raise RuntimeError("accept_waveform after finalize: create a new Recognizer per stream")
        x = torch.as_tensor(np.asarray(samples, dtype=np.float32)).flatten()
        self.samples += x.numel()
        return self.fbank.accept(x)

    def _encoder_input(self, feats: torch.Tensor) -> torch.Tensor:
        """Normalised (1, t, F) encoder input; the offline decoder also keeps the raw features."""
        if self.cfg.decoder == "offline" and feats.shape[0]:
            self.feats.append(feats)
            self.feat_frames += feats.shape[0]
        return self.model.cmvn(feats)[None]

    @torch.no_grad()
    def _feed(self, feats: torch.Tensor, final: bool) -> list[Result]:
        enc, self.state = self.model.encoder.step(self._encoder_input(feats), self.state, final=final)
        return self._decode_blocks(enc[0], final)

    @torch.no_grad()
    def _decode_blocks(self, enc: torch.Tensor, final: bool) -> list[Result]:
        """Run the block decoder and the endpointer over new encoder frames (t, D)."""
        results: list[Result] = []
        step = self.block_size or max(enc.shape[0], 1)
        for s in range(0, enc.shape[0], step):
            block = enc[s:s + step]
            logp = self.model.ctc_logp(block)
            self.decoder.accept_block(block, logp)
            self.frames += block.shape[0]
            if self.endpointer.update(logp.argmax(-1).tolist()) and not final:
                r = self._end_segment(always=False)
                if r is not None:
                    results.append(r)
            elif self.cfg.partials and self.cfg.decoder != "offline":
                text = self.tokenizer.decode(self.decoder.partial().ids)
                if text != self.last_partial:
                    self.last_partial = text
                    results.append(Result(text, False, self.segment, start=self._seconds(self.segment_start),
                                          end=self._seconds(self.frames)))
        return results

    def _seconds(self, frame: int) -> float:
        return round(frame * FRAME_SECONDS, 3)

    def _segment_tokens(self) -> Tokens:
        if self.cfg.decoder != "offline":
            return self.decoder.finalize()
        # the segment's encoder frames [segment_start, frames) come from feature frames 4*start .. 4*end + 3
        feats = torch.cat(self.feats) if self.feats else torch.zeros(0, 80)
        lo = 4 * self.segment_start - self.feat_start
        hi = 4 * self.frames + 3 - self.feat_start
        tokens = offline_decode(self.model, feats[max(lo, 0):hi], beam=self.cfg.beam,
                                ctc_weight=self.cfg.ctc_weight, length_bonus=self.cfg.length_bonus,
                                lm=self.lm, lm_weight=self.cfg.lm_weight)
        keep_from = 4 * self.frames - self.feat_start  # the next segment's first feature frame
        self.feats = [feats[keep_from:]]
        self.feat_start += keep_from
        return tokens

    def _end_segment(self, always: bool) -> Result | None:
        tokens = self._segment_tokens()
        text = self.tokenizer.decode(tokens.ids)
        offset = self.segment_start * FRAME_SECONDS
        result = Result(text, True, self.segment, words_from_tokens(tokens, self.tokenizer, offset), tokens.ids,
                        start=self._seconds(self.segment_start), end=self._seconds(self.frames))
        self.decoder = self._new_decoder()
        self.endpointer.reset()
        self.segment_start = self.frames
        self.last_partial = ""
        if not text and not always:
            return None  # a silent segment: nothing to report
        self.segment += 1
        return result


def _clip_times(result: Result, audio_s: float) -> Result:
    """``result`` with its times limited to the stream's audio (tokens may spike in the flush pad)."""
    if result.end <= audio_s:
        return result
    words = [Word(w.word, min(w.start, audio_s), min(w.end, audio_s)) for w in result.words]
    return dataclasses.replace(result, words=words, start=min(result.start, audio_s), end=audio_s)


@torch.no_grad()
def process_batch(work: list[tuple[Recognizer, np.ndarray]]) -> list[list[Result]]:
    """``accept_waveform`` for many streams at once: the encoder steps of streams sharing a model
    run as one batch where their states allow (:meth:`ConformerEncoder.step_batch`). Each result
    list equals what ``rec.accept_waveform(samples)`` would have returned."""
    results: list[list[Result]] = [[] for _ in work]
    by_model: dict[int, list[int]] = {}
    for i, (rec, _) in enumerate(work):
        by_model.setdefault(id(rec.model), []).append(i)
    for members in by_model.values():
        recs = [work[i][0] for i in members]
        xs = [rec._encoder_input(rec._features(work[i][1])) for rec, i in zip(recs, members)]
        outs = recs[0].model.encoder.step_batch(xs, [rec.state for rec in recs])
        for rec, i, (enc, state) in zip(recs, members, outs):
            rec.state = state
            results[i] = rec._decode_blocks(enc[0], final=False)
    return results
