"""One stream's recognition: audio chunks of any size in, partial and final results out.

audio -> :class:`~asr.features.OnlineFbank` -> CMVN -> ``encoder.step`` (block mask, KV and conv
caches) -> per block: CTC log-probs, the block decoder that the settings name
(:func:`asr.decode.build_decoder`), the endpointer. A segment ends on the endpoint rules (or at
:meth:`Recognizer.finalize`); its final result carries word timestamps and the decoder starts
afresh, so an hours-long stream keeps bounded state. With ``cfg.session_context = N`` the decoder
keeps up to N tokens of the stream's earlier finals as the next segment's context (the fusion LM's
for bsbs/offline, in paged caches with PagedEviction; the SAR label context), still bounded. The
context belongs to the stream: a new Recognizer starts a new session.

The results do not depend on how the audio is chunked: features, encoder blocks and every
decision are computed on the same frames whatever the chunk sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from asr.decode import Tokens, Word, build_decoder, words_from_tokens
from asr.encoder import FRAME_MS
from asr.encoder.subsampling import RECEPTIVE_FIELD, STRIDE, subsampled_length
from asr.features import FbankConfig, OnlineFbank, num_frames
from asr.inference import InferenceConfig
from asr.models.io import LoadedModel
from asr.models.lm import TransformerLM
from streaming.endpoint import EndpointConfig, Endpointer

__all__ = ["FLUSH_PAD_MS", "flush_frames", "flush_pad", "samples_for_frames", "Result", "Recognizer", "encoder_inputs",
           "decode_round",
           "process_batch", "finalize_batch"]

# The end-of-stream flush (finalize) appends digital silence, so that the stream ends as it would
# if silence followed: the last word of a clip cut right after the speech is the one it gets with
# silence appended (issue 19; benchmarks/last_word.py). Without a pad the last ~100-300 ms of speech
# never reach an encoder frame in which the model can emit them: the fbank drops the last partial
# 25 ms window, the subsampling the last < 7 feature frames (its receptive field), and a CTC model
# spikes a token some frames after its sound ("OVER LOND" for "OVER LONDON", models/default).
# * Length: up to the first block boundary at least FLUSH_PAD_MS after the last encoder frame that
#   the audio reaches. The encoder is block-causal (a frame attends to its whole block and earlier
#   blocks, never past the block's end; the convolution is causal), so every encoder frame the
#   decoder gets then equals the frame it gets when silence is appended and the stream goes on:
#   the last real frame sees the same right context, the last block is a whole block (as every
#   block the decoders and the contextual encoder's block embeddings see while streaming), and the
#   model has FLUSH_PAD_MS of silence to spike its last tokens in (80-300 ms were not always
#   enough). A fixed 400 ms pad left the last block partial when the audio ended early in it.
#   Full context (no blocks): FLUSH_PAD_MS, there is no block to complete.
# * Content: zeros, which is what "silence appended" is (sox pad, ffmpeg apad, the pauses of the
#   TTS voices the models train on). A faint noise (-50 dBFS, the pad before) is not silence to
#   such a model: models/default heard it as a fricative ("YESTER DATE", "WINDOWTH", "OVERF" where
#   1 s of appended zeros gives "YESTER DAY", "WINDOW", "OVER") and the tiny test model dropped
#   whole words on it. A model that emits junk on long digital silence does so with silence
#   appended too: the flush still equals appended silence.
FLUSH_PAD_MS = 400


def flush_frames(num_samples: int, block_size: int | None, features: FbankConfig = FbankConfig()) -> int:
    """Encoder frames of a stream of ``num_samples`` samples once it is flushed: the first multiple
    of ``block_size`` (any count for full context) at least :data:`FLUSH_PAD_MS` past the last
    frame that the audio reaches.

    Encoder frame ``t`` reads feature frames ``STRIDE * t .. STRIDE * t + RECEPTIVE_FIELD - 1``,
    that is samples from ``STRIDE * shift * t`` on, so the audio reaches frames
    ``0 .. ceil(num_samples / (STRIDE * shift)) - 1``.

    >>> flush_frames(16000, 16), flush_frames(16000, 8), flush_frames(16000, None)
    (48, 40, 35)
    """
    hop = STRIDE * features.window_shift  # samples per encoder frame
    end = _ceil_div(num_samples, hop) + _ceil_div(FLUSH_PAD_MS * features.sample_rate, 1000 * hop)
    return end if block_size is None else _ceil_div(end, block_size) * block_size


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def samples_for_frames(frames: int, features: FbankConfig = FbankConfig()) -> int:
    """Audio samples behind the first ``frames`` (>= 1) encoder frames: the fbank windows of the
    ``STRIDE * (frames - 1) + RECEPTIVE_FIELD`` feature frames they read.

    >>> samples_for_frames(16), samples_for_frames(1)
    (10960, 1360)
    """
    feats = STRIDE * (frames - 1) + RECEPTIVE_FIELD
    return features.window_size + features.window_shift * (feats - 1)


def flush_pad(num_samples: int, block_size: int | None, features: FbankConfig = FbankConfig()) -> torch.Tensor:
    """The zeros :meth:`Recognizer.finalize` appends to a stream of ``num_samples`` samples: exactly
    enough for :func:`flush_frames` encoder frames (see the comment above :data:`FLUSH_PAD_MS`).

    >>> flush_pad(16000, 16).numel()  # 1 s of audio, 640 ms blocks: 48 frames = 3 blocks
    15440
    """
    return torch.zeros(samples_for_frames(flush_frames(num_samples, block_size, features), features) - num_samples)


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


def _seconds(frame: int) -> float:
    return round(frame * FRAME_MS / 1000, 3)


class Recognizer:
    """Streaming recognition of one audio stream with a loaded model (see module docstring).

    The recognizer's tensors (feature buffer, encoder caches, decoder states) live on the model's
    device and in its dtype: move the model with ``loaded.model.to(...)`` before building one.

    Args:
        loaded: the model directory, loaded once and shared by every stream.
        cfg: the inference settings (decoder, block, beams, LM weight; the model, device and
            threads fields are for whoever loads ``loaded``).
        lm: language model for shallow fusion (weight ``cfg.lm_weight``; bsbs and offline decoders),
            on the model's device and trained with the model's tokenizer (``asr.models.lm_io.load_lm_dir``).
        endpoint: the endpointing rules.
        partials: emit partial results (the offline decoder has none).
    """

    def __init__(self, loaded: LoadedModel, cfg: InferenceConfig = InferenceConfig(),
                 lm: TransformerLM | None = None, *, endpoint: EndpointConfig = EndpointConfig(),
                 partials: bool = True):
        self.loaded, self.cfg, self.lm = loaded, cfg, lm
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        if lm is not None and lm.vocab_size != loaded.tokenizer.vocab_size:
            raise ValueError(f"the LM has {lm.vocab_size} tokens, the model's tokenizer {loaded.tokenizer.vocab_size}")
        self.decoder = build_decoder(self.model, cfg, lm, source=str(loaded.path))
        self.partials = partials and self.decoder.partials
        weight = next(self.model.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.block_size = cfg.block_size
        # samples between two block boundaries (after the first; see samples_until_block); None: full context
        self.block_samples = None if self.block_size is None else self.block_size * STRIDE * loaded.features.window_shift
        # features in the model's dtype, but never below float32 (an FFT in half precision loses the log-mels)
        self.fbank = OnlineFbank(loaded.features).to(self.device, torch.promote_types(self.dtype, torch.float32))
        self.state = self.model.encoder.init_state(1, self.block_size, cfg.left_blocks, self.device, self.dtype)
        self.endpointer = Endpointer(endpoint)
        self.segment = 0
        self.frames = 0  # encoder frames so far
        self.segment_start = 0  # encoder frame where the current segment starts
        self.last_partial = ""
        self._partial_tokens = Tokens()  # the tokens behind last_partial
        self.finished = False
        self.samples = 0  # audio samples accepted (the stream's real length, without the flush pad)

    # ------------------------------------------------------------------ public
    def accept_waveform(self, samples: np.ndarray | torch.Tensor) -> list[Result]:
        """Feed 16 kHz mono float32 samples in [-1, 1]; returns new partial/final results."""
        return self.decode(*self.step_encoder(self.encoder_input(samples)))

    def finalize(self) -> list[Result]:
        """End the stream: append :func:`flush_pad` (digital silence to a block boundary at least
        :data:`FLUSH_PAD_MS` past the audio), run the last blocks and commit every tentative token;
        the last result is always a final. Times stay inside the audio."""
        if self.finished:
            return []
        self.decoder.end_of_stream()
        results = self.decode(*self.step_encoder(self.flush_input(), final=True))
        return self.end_stream(results, self.decoder.finalize())

    # ------------------------------------------------------------------ the three stages of a chunk
    # (public so that process_batch and finalize_batch can run the middle one for many streams at once)
    @torch.no_grad()
    def encoder_input(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Audio -> the normalised (1, t, F) feature frames that became complete."""
        return encoder_inputs([self], [samples])[0]

    @torch.no_grad()
    def flush_input(self) -> torch.Tensor:
        """finalize's encoder input: the (1, t, F) features of :func:`flush_pad` (not counted in
        ``self.samples``: it is not the stream's audio)."""
        return _flush_inputs([self])[0]

    @torch.no_grad()
    def step_encoder(self, x: torch.Tensor, final: bool = False) -> tuple[torch.Tensor, bool]:
        """(1, t, F) encoder input -> ``(enc (t', D), final)`` of the blocks that became complete."""
        enc, self.state = self.model.encoder.step(x, self.state, final=final)
        return enc[0], final

    def blocks(self, enc: torch.Tensor) -> list[torch.Tensor]:
        """New encoder frames (t, D) cut into the blocks the decoder takes one at a time."""
        step = self.block_size or max(enc.shape[0], 1)
        if 0 < enc.shape[0] <= step:
            return [enc]  # one block (a server pass, mostly): no view to cut
        return [enc[s:s + step] for s in range(0, enc.shape[0], step)]

    @torch.no_grad()
    def decode(self, enc: torch.Tensor, final: bool = False) -> list[Result]:
        """Run the block decoder and the endpointer over new encoder frames (t, D)."""
        results: list[Result] = []
        for block in self.blocks(enc):
            results += decode_round([self], [block], final)[0]
        return results

    def samples_until_block(self) -> int | None:
        """How many more samples this stream needs before its next block is complete: audio short
        of that gives no encoder frame, no decoder step and no result (a server may hold it back
        and take the stream into a later pass). None with full context, where no block completes
        before the end. Counts from the stream's start: segments do not reset the encoder."""
        if self.block_size is None or self.finished:
            return None
        features = self.loaded.features
        done = subsampled_length(num_frames(self.samples, features)) // self.block_size  # whole blocks so far
        return samples_for_frames((done + 1) * self.block_size, features) - self.samples

    def end_stream(self, results: list[Result], tokens: Tokens) -> list[Result]:
        """finalize's last stage, after the flush pad's blocks gave ``results`` and the decoder's
        ``finalize`` the last segment's ``tokens``: the last final, times limited to the audio."""
        results = results + [self._end_segment(always=True, tokens=tokens)]
        self.finished = True
        audio_s = round(self.samples / self.loaded.features.sample_rate, 3)
        return [_clip_times(r, audio_s) for r in results]

    def endpoint(self, labels: list[int], final: bool) -> bool:
        """After the decoder took a block (the per-frame argmax of its CTC log-probs, on the host):
        the endpointer's verdict, True when the segment ends here (never on the stream's last blocks)."""
        self.frames += len(labels)
        return self.endpointer.update(labels) and not final

    def after_block(self, segment_tokens: Tokens | None) -> list[Result]:
        """The block's results once :meth:`endpoint` said: with ``segment_tokens`` (the decoder's
        ``finalize`` of an ended segment) the segment's final, else the partial if it changed."""
        if segment_tokens is not None:
            r = self._end_segment(always=False, tokens=segment_tokens)
            return [] if r is None else [r]
        if self.partials:
            tokens = self.decoder.partial()
            if tokens is self._partial_tokens or tokens.ids == self._partial_tokens.ids:
                return []  # the same tokens (decoders return the same object until they change): the same text
            self._partial_tokens = tokens
            text = self.tokenizer.decode(tokens.ids)
            if text != self.last_partial:
                self.last_partial = text
                return [Result(text, False, self.segment, start=_seconds(self.segment_start),
                               end=_seconds(self.frames))]
        return []

    # ------------------------------------------------------------------ internals
    def _end_segment(self, always: bool, tokens: Tokens | None = None) -> Result | None:
        """The segment's final (None: silent and not ``always``); ``tokens``: the decoder's
        ``finalize()`` when the caller already ran it (finalize_batch)."""
        tokens = self.decoder.finalize() if tokens is None else tokens
        text = self.tokenizer.decode(tokens.ids)
        offset = self.segment_start * FRAME_MS / 1000
        result = Result(text, True, self.segment, words_from_tokens(tokens, self.tokenizer, offset), tokens.ids,
                        start=_seconds(self.segment_start), end=_seconds(self.frames))
        self.endpointer.reset()
        self.segment_start = self.frames
        self.last_partial = ""
        self._partial_tokens = Tokens()
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
def encoder_inputs(recs: list[Recognizer], chunks: list[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
    """:meth:`Recognizer.encoder_input` of several streams of one model: the new audio crosses to
    the device in one copy and runs through one fbank and one CMVN call."""
    if any(rec.finished for rec in recs):  # before any stream's state changes
        raise RuntimeError("accept_waveform after finalize: create a new Recognizer per stream")
    # numpy on the host, as OnlineFbank.accept_many frames them (a torch tensor per stream and back
    # cost ~3 us a stream)
    waves = [np.asarray(samples, dtype=np.float32).ravel() for samples in chunks]
    for rec, x in zip(recs, waves):
        rec.samples += x.size
    return _features(recs, waves)


def _flush_inputs(recs: list[Recognizer]) -> list[torch.Tensor]:
    """:meth:`Recognizer.flush_input` of several streams of one model, in one features call."""
    return _features(recs, [flush_pad(rec.samples, rec.block_size, rec.loaded.features) for rec in recs])


def _features(recs: list[Recognizer], waves: list[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
    """(n_i,) samples per stream -> the normalised (1, t_i, F) frames that became complete (the
    decoder sees the raw frames too: the offline decoder re-encodes them at the segment's end)."""
    feats = OnlineFbank.accept_many([rec.fbank for rec in recs], waves)  # (t_i, F) each
    for rec, f in zip(recs, feats):
        rec.decoder.accept_features(f)
    normed = recs[0].model.cmvn(torch.cat(feats)).split([f.shape[0] for f in feats])
    return [x[None] for x in normed]


def _ctc_logps(model, blocks: list[torch.Tensor], batched: bool) -> tuple[list[torch.Tensor], list[list[int]]]:
    """CTC log-probs (t_i, V) of blocks (t_i, D) and their per-frame argmax labels on the host:
    one call and one device-to-host copy per block length when ``batched``."""
    if not batched or len(blocks) == 1:
        logps = [model.ctc_logp(b) for b in blocks]
        return logps, [logp.argmax(-1).tolist() for logp in logps]
    out: list[torch.Tensor | None] = [None] * len(blocks)
    labels: list[list[int] | None] = [None] * len(blocks)
    by_len: dict[int, list[int]] = {}
    for i, b in enumerate(blocks):
        by_len.setdefault(b.shape[0], []).append(i)
    for members in by_len.values():
        logp = model.ctc_logp(torch.stack([blocks[i] for i in members]))  # (B, t, V)
        rows = logp.argmax(-1).tolist()
        for row, i in enumerate(members):
            out[i], labels[i] = logp[row], rows[row]
    return out, labels  # type: ignore[return-value]


def _decoder_groups(recs: list[Recognizer], batched: bool) -> list[list[int]]:
    """Indices of streams whose decoders take one batched call (same class and ``batch_key``)."""
    groups: dict[object, list[int]] = {}
    for i, rec in enumerate(recs):
        key = (type(rec.decoder), rec.decoder.batch_key()) if batched else i
        groups.setdefault(key, []).append(i)
    return list(groups.values())


@torch.no_grad()
def decode_round(recs: list[Recognizer], blocks: list[torch.Tensor], final: bool = False,
                 batch_decoders: bool = True) -> list[list[Result]]:
    """The next block (t_i, D) of each stream (all of one model): CTC log-probs, the block decoders
    (one :meth:`~asr.decode.BlockDecoder.accept_blocks` call per decoder kind when ``batch_decoders``),
    each stream's endpointer, one :meth:`~asr.decode.BlockDecoder.finalize_many` per decoder kind for
    the segments that end, then the finals and partials. Each result list equals what that stream
    alone gives."""
    logps, labels = _ctc_logps(recs[0].model, blocks, batch_decoders)
    for members in _decoder_groups(recs, batch_decoders):
        decoders = [recs[i].decoder for i in members]
        type(decoders[0]).accept_blocks(decoders, [blocks[i] for i in members], [logps[i] for i in members],
                                        [labels[i] for i in members])
    ending = [i for i, (rec, lab) in enumerate(zip(recs, labels)) if rec.endpoint(lab, final)]
    tokens: dict[int, Tokens] = {}
    for sub in _decoder_groups([recs[i] for i in ending], batch_decoders):  # one finalize_many per kind
        idx = [ending[j] for j in sub]
        tokens.update(zip(idx, type(recs[idx[0]].decoder).finalize_many([recs[i].decoder for i in idx])))
    return [rec.after_block(tokens.get(i)) for i, rec in enumerate(recs)]


def _by_model(recs: list[Recognizer]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i, rec in enumerate(recs):
        groups.setdefault(id(rec.model), []).append(i)
    return list(groups.values())


def _encode_and_decode(recs: list[Recognizer], xs: list[torch.Tensor], final: bool,
                       batch_decoders: bool) -> list[list[Result]]:
    """Streams of one model and their encoder inputs (1, t_i, F): one ``step_batch``, then block by
    block one :func:`decode_round` over every stream that has that block."""
    results: list[list[Result]] = [[] for _ in recs]
    blocks = []
    for rec, (enc, state) in zip(recs, recs[0].model.encoder.step_batch(xs, [r.state for r in recs], final=final)):
        rec.state = state
        blocks.append(rec.blocks(enc[0]))
    for k in range(max((len(b) for b in blocks), default=0)):
        live = [j for j, b in enumerate(blocks) if k < len(b)]
        outs = decode_round([recs[j] for j in live], [blocks[j][k] for j in live], final, batch_decoders)
        for j, res in zip(live, outs):
            results[j] += res
    return results


@torch.no_grad()
def process_batch(work: list[tuple[Recognizer, np.ndarray]], batch_decoders: bool = True) -> list[list[Result]]:
    """``accept_waveform`` for many streams at once. Per model: the features per stream, one
    :meth:`ConformerEncoder.step_batch` (one subsampling call; streams whose states allow share the
    conformer layers), then block by block one :func:`decode_round` over every stream that has that
    block (``batch_decoders``: one CTC and one decoder call per round; False: the decoders one stream
    after another). Each result list equals what ``rec.accept_waveform(samples)`` would have returned."""
    results: list[list[Result]] = [[] for _ in work]
    for members in _by_model([rec for rec, _ in work]):
        recs = [work[i][0] for i in members]
        xs = encoder_inputs(recs, [work[i][1] for i in members])
        for i, res in zip(members, _encode_and_decode(recs, xs, False, batch_decoders)):
            results[i] = res
    return results


@torch.no_grad()
def finalize_batch(recs: list[Recognizer], batch_decoders: bool = True) -> list[list[Result]]:
    """``finalize`` for many streams (distinct recognizers) that end at once, e.g. in one server pass.

    Per model: the flush pad's features per stream, one ``step_batch(final=True)``, the decode rounds
    of the last blocks as in :func:`process_batch`, then one
    :meth:`~asr.decode.BlockDecoder.finalize_many` per decoder kind (SAR: one fusion call over the
    carried tails) for the last segments. Each result list equals what ``rec.finalize()`` returns
    (empty for a recognizer already finalized)."""
    results: list[list[Result]] = [[] for _ in recs]
    live = [i for i, rec in enumerate(recs) if not rec.finished]
    for members in _by_model([recs[i] for i in live]):
        idx = [live[j] for j in members]
        group = [recs[i] for i in idx]
        for rec in group:
            rec.decoder.end_of_stream()
        decoded = _encode_and_decode(group, _flush_inputs(group), True, batch_decoders)
        tokens: list[Tokens | None] = [None] * len(group)
        for sub in _decoder_groups(group, batch_decoders):
            finals = type(group[sub[0]].decoder).finalize_many([group[j].decoder for j in sub])
            for j, tok in zip(sub, finals):
                tokens[j] = tok
        for i, rec, res, tok in zip(idx, group, decoded, tokens):
            results[i] = rec.end_stream(res, tok)
    return results
