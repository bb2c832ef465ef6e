"""Many streams in one pass: batched block decoders equal per-stream ones, and a recognizer's state
follows the model to another dtype / device."""

import copy
import dataclasses

import pytest
import torch

from asr.audio import load_audio
from asr.data import read_manifest
from asr.decode import SarGreedyDecoder, fuse_windows
from asr.decode.sar import label_states
from asr.features import FbankConfig, OnlineFbank
from asr.inference import InferenceConfig
from asr.models.config import LMConfig, SARConfig
from asr.models.sar import SARDecoder
from asr.tokenizer import SOS_EOS
from streaming import Recognizer, finalize_batch, process_batch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def waves(tts_corpus):
    rows = read_manifest(tts_corpus / "all.jsonl")
    return [load_audio(r["audio"]).numpy() for r in rows[:4]], [r["text"] for r in rows[:4]]


SIZES = [5120, 3000, 7000, 5120]  # samples per pass of each stream
BEGIN = [0, 1, 0, 2]  # the pass at which each stream starts


def _streams(loaded, cfg, waves, batched: bool, sizes=SIZES, begin=BEGIN, lm=None, end_batched: bool = False):
    """Streams of different lengths, starting at different passes, fed in chunks of different
    sizes, so their encoder caches, segments, LM contexts and tentative tails all differ.
    ``end_batched``: the streams end in one ``finalize_batch`` (else each its own ``finalize``)."""
    recs = [Recognizer(loaded, cfg, lm) for _ in waves]
    pos = [0] * len(waves)
    out = [[] for _ in waves]
    for step in range(200):
        work, idx = [], []
        for i, (rec, w) in enumerate(zip(recs, waves)):
            if step >= begin[i] and pos[i] < len(w):
                work.append((rec, w[pos[i]:pos[i] + sizes[i]]))
                idx.append(i)
                pos[i] += sizes[i]
        if not work:
            break
        for i, res in zip(idx, process_batch(work, batch_decoders=batched)):
            out[i] += res
    finals = finalize_batch(recs, batch_decoders=batched) if end_batched else [rec.finalize() for rec in recs]
    for i, res in enumerate(finals):
        out[i] += res
    return [[(r.text, r.is_final, r.segment, r.tokens, r.words) for r in res] for res in out]


@pytest.mark.parametrize("decoder", ["ctc", "sar", "bsbs"])
def test_batched_decoders_equal_per_stream(loaded, waves, decoder):
    audio, _ = waves
    cfg = InferenceConfig(decoder=decoder, block_ms=320)
    alone = [_streams(loaded, cfg, [w], False, [SIZES[i]], [0])[0] for i, w in enumerate(audio)]
    assert _streams(loaded, cfg, audio, batched=False) == alone  # the encoder batching alone
    together = _streams(loaded, cfg, audio, batched=True)
    assert together == alone
    assert all(res[-1][1] and res[-1][0] for res in together)  # each ends in a non-empty final


def test_fuse_windows_pads_and_masks():
    """Windows and LM contexts of different lengths in one call equal each stream's own call."""
    torch.manual_seed(0)
    sar = SARDecoder(30, 64, SARConfig(lm=LMConfig(d_model=32, n_layers=1, dropout=0.0), fusion_layers=2,
                                       dropout=0.0)).eval()
    windows = [torch.randn(n, 64) for n in (8, 3, 10)]
    states = [torch.randn(n, 32) for n in (1, 4, 2)]
    with torch.no_grad():
        batched = fuse_windows(sar, windows, states)
        for w, s, got in zip(windows, states, batched):
            want = sar.fuse(w[None], None, s[None], None)[0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("max_context", [None, 3])
def test_label_states_equal_the_cached_lm_steps(max_context):
    """The SAR label context in one padded causal pass equals the LM stepped token by token over a
    KV cache (bounded to max_context), stream by stream."""
    torch.manual_seed(0)
    lm = LMConfig(d_model=32, n_layers=2, dropout=0.0, max_context=max_context, pos="rope")
    sar = SARDecoder(30, 64, SARConfig(lm=lm, fusion_layers=1, dropout=0.0)).eval()
    contexts = [[SOS_EOS, 3, 4, 5, 6, 7, 8], [SOS_EOS], [SOS_EOS, 9, 9, 2]]
    with torch.no_grad():
        states, lens = label_states(sar, contexts, torch.device("cpu"))
        assert lens == [7, 1, 4] and states.shape[:2] == (3, 7)
        for row, context in enumerate(contexts):
            caches, want = sar.lm.empty_caches(1, torch.device("cpu")), []
            for tok in context:
                h, caches = sar.lm.step(torch.tensor([tok]), caches)
                want.append(h)
            torch.testing.assert_close(states[row, :len(context)], torch.cat(want), rtol=1e-5, atol=1e-5)


def test_sar_streams_of_different_g_share_a_call(loaded):
    a, b = SarGreedyDecoder(loaded.model.sar, 0), SarGreedyDecoder(loaded.model.sar, 3)
    assert a.batch_key() == b.batch_key()


@pytest.mark.parametrize("device", DEVICES)
def test_online_fbank_follows_the_module(device):
    """Frames come out on the module's device and dtype; the samples not yet framed wait on the
    host (as they arrived) and cross with the next chunk."""
    fb = OnlineFbank(FbankConfig()).to(device, torch.float64)
    assert fb.accept(torch.zeros(300)).shape == (0, 80) and fb.pending.shape == (300,)
    frames = fb.accept(torch.zeros(260))
    assert frames.shape == (2, 80) and frames.dtype == torch.float64 and frames.device.type == device
    assert fb.pending.shape == (560 - 2 * 160,)
    fb.reset()
    assert fb.pending.size == 0


def test_online_fbank_many_streams_equal_each_alone():
    """accept_many over streams with different pending samples and chunk sizes (some give no
    frame) equals each stream's own accept."""
    g = torch.Generator().manual_seed(0)
    chunks = [[torch.rand(n, generator=g) - 0.5 for n in sizes]
              for sizes in ([300, 260, 1600], [100, 100, 5000], [4000, 0, 399], [401, 159, 161])]
    alone = [OnlineFbank(FbankConfig()) for _ in chunks]
    many = [OnlineFbank(FbankConfig()) for _ in chunks]
    for step in range(3):
        want = [fb.accept(c[step]) for fb, c in zip(alone, chunks)]
        got = OnlineFbank.accept_many(many, [c[step] for c in chunks])
        for w, x in zip(want, got):
            torch.testing.assert_close(x, w, rtol=1e-5, atol=1e-4)  # one batched FFT and matmul: rounding only


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("decoder", ["sar", "offline"])
def test_recognizer_follows_the_model(loaded, waves, device, decoder):
    """Every tensor the recognizer keeps moves with the model: a float64 copy (and a CUDA one)
    gives the same text as the float32 CPU model (the two runs compared, not the words)."""
    audio, _ = waves
    moved = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model).to(device, torch.float64))
    cfg = InferenceConfig(decoder=decoder, block_ms=320)
    texts = []
    for model in (loaded, moved):
        rec = Recognizer(model, cfg)
        results = []
        for s in range(0, len(audio[0]), 4000):
            results += rec.accept_waveform(audio[0][s:s + 4000])
        results += rec.finalize()
        texts.append(results[-1].text)
        assert rec.state.kv[0].k.dtype == next(model.model.parameters()).dtype
    assert texts[0] == texts[1] and texts[0]
