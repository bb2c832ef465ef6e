"""Int8 compression (asr.models.compress): quantization bounds, int8 kernels against the float
reference, compressed model directories that load, decode and are smaller."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asr.models.compress import (
    CompressionConfig,
    Int8Conv2d,
    PatchConv2d,
    Int8Linear,
    compress_state,
    decompress_state,
    dequantize_weight,
    quantize_weight,
    to_int8_kernels,
)
from asr.models.io import compress_model_dir, default_model_dir, load_model_dir

# Int8Linear quantizes activations per call to 7 bits over their range (fbgemm's reduce_range on
# AVX2): for Gaussian inputs the range is ~8 sigma, so the rounding noise is ~8 / (127 sqrt(12))
# = 1.8 % of sigma, and the output is within 3 % (relative L2) of the float matmul with the same
# dequantized weights (measured 1.5-2.0 %).
INT8_TOL = 0.03


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("scheme,block", [("block", 64), ("block", 48), ("channel", 64), ("tensor", 64)])
@pytest.mark.parametrize("shape", [(96, 256), (32, 1, 3, 3), (64, 16, 3, 3), (40, 1, 15)])
def test_quantize_error_is_at_most_half_a_step(scheme, block, shape):
    torch.manual_seed(0)
    w = torch.randn(shape) * torch.rand(shape[0], *([1] * (len(shape) - 1))) * 3
    q, scale = quantize_weight(w, scheme, block)
    k = w[0].numel()
    groups = {"block": -(-k // block), "channel": 1, "tensor": 1}[scheme]
    assert q.dtype == torch.int8 and q.shape == w.shape and int(q.abs().max()) <= 127
    assert scale.shape == (1 if scheme == "tensor" else shape[0], groups)
    step = dequantize_weight(torch.ones_like(q), scale, block)  # each weight's quantization step
    assert ((dequantize_weight(q, scale, block) - w).abs() <= step / 2 + 1e-6).all()
    assert (q.reshape(shape[0], -1).abs().amax() == 127)  # the largest weight uses the full range


def test_block_scales_follow_the_columns():
    w = torch.ones(2, 128)
    w[:, 64:] = 100.0
    q, scale = quantize_weight(w, "block", 64)
    assert torch.allclose(scale, torch.tensor([[1 / 127, 100 / 127]] * 2))
    assert (q == 127).all()
    _, channel = quantize_weight(w, "channel")
    assert (dequantize_weight(*quantize_weight(w, "channel")) - w).abs().max() > 0.2  # 1.0 -> 0.787
    assert torch.allclose(dequantize_weight(q, scale), w) and channel.shape == (2, 1)


@pytest.mark.parametrize("k,n", [(256, 768), (768, 256), (80, 24)])
def test_int8_linear_matches_float_reference(k, n):
    torch.manual_seed(1)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(dequantize_weight(*quantize_weight(lin.weight, "channel")))
    fast = Int8Linear.from_linear(lin)
    x = torch.randn(3, 16, k)
    with torch.no_grad():
        ref = lin(x)
        y = fast(x)
    assert y.shape == ref.shape == (3, 16, n)
    assert _rel(y, ref) <= INT8_TOL
    # per-channel int8 weights pass into the kernel unchanged
    assert torch.equal(fast.weight, lin.weight) and torch.equal(fast.bias, lin.bias)
    assert fast.weight.device.type == "cpu"


def test_int8_conv2d_matches_float_conv():
    torch.manual_seed(2)
    conv = nn.Conv2d(32, 48, 3, stride=2)
    fast = Int8Conv2d.from_conv(conv)
    x = torch.randn(2, 32, 21, 39)
    with torch.no_grad():
        ref = conv(x)
        y = fast(x)
        deq = F.conv2d(x, fast.linear.weight.view(48, 3, 3, 32).permute(0, 3, 1, 2), conv.bias, stride=2)
    assert y.shape == ref.shape == (2, 48, 10, 19)
    assert _rel(y, deq) <= INT8_TOL
    assert _rel(y, ref) <= INT8_TOL
    with pytest.raises(ValueError, match="padding"):
        Int8Conv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1))


def test_patch_conv2d_equals_conv_and_leaves_channels_last():
    torch.manual_seed(4)
    conv = nn.Conv2d(1, 8, 3, stride=2).double()
    patch = PatchConv2d.from_conv(conv)
    x = torch.randn(2, 1, 19, 80, dtype=torch.float64)
    with torch.no_grad():
        y = patch(x)
        assert torch.allclose(y, conv(x), atol=1e-12, rtol=0)
        # the int8 convolution after it reads the channels-last memory without a copy
        assert y.permute(0, 2, 3, 1).is_contiguous()
    with pytest.raises(ValueError, match="one input channel"):
        PatchConv2d.from_conv(nn.Conv2d(2, 4, 3))


def test_compress_state_round_trip():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(70, 30), nn.LayerNorm(30), nn.Conv1d(30, 30, 5, groups=30))
    packed = compress_state(model, CompressionConfig("block-int8", block=32))
    assert packed["0.weight.int8"].dtype == torch.int8 and packed["0.weight.scale"].shape == (30, 3)
    assert packed["2.weight.int8"].shape == (30, 1, 5) and "1.weight" in packed  # norms stay float
    restored = decompress_state(packed, 32)
    assert set(restored) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert restored[key].dtype == torch.float32
        tol = 1e-3 if key in ("1.weight", "1.bias", "0.bias", "2.bias") else 0.02
        assert (restored[key] - value).abs().max() <= tol * value.abs().max(), key


def test_config_errors():
    with pytest.raises(ValueError, match="method"):
        CompressionConfig("int4")
    with pytest.raises(ValueError, match="block"):
        CompressionConfig(block=0)
    assert CompressionConfig("channel-int8").scheme == "channel"


@pytest.fixture(scope="module")
def default_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "default-int8"
    return compress_model_dir(default_model_dir(), out, CompressionConfig("block-int8", block=64))


def test_compressed_default_model_is_smaller_and_loads(default_int8):
    loaded = load_model_dir(default_int8)
    n_params = sum(p.numel() for p in load_model_dir(default_model_dir()).model.parameters())
    size = (default_int8 / "model.pt").stat().st_size
    assert size * 3.5 <= 4 * n_params  # >= 3.5x smaller than float32 weights
    assert size * 1.8 <= (default_model_dir() / "model.pt").stat().st_size  # the shipped float16 file
    assert loaded.config.compression == CompressionConfig("block-int8", 64, "int8")
    mods = list(loaded.model.modules())
    assert not any(isinstance(m, nn.Linear) for m in mods)
    assert isinstance(loaded.model.encoder.subsampling.conv2, Int8Conv2d)
    assert isinstance(loaded.model.encoder.subsampling.conv1, PatchConv2d)
    # the shipped model is untouched: float modules, its own keys
    shipped = load_model_dir(default_model_dir())
    assert shipped.config.compression is None
    assert set(shipped.model.state_dict()) == set(torch.load(default_model_dir() / "model.pt", weights_only=True))
    with pytest.raises(ValueError, match="already compressed"):
        compress_model_dir(default_int8, default_int8.parent / "again", CompressionConfig())


def test_compressed_model_decodes_like_float(default_int8):
    from asr.audio import load_audio
    from asr.features import Fbank

    wave = load_audio(default_model_dir().parents[1] / "samples" / "so3027_what_in_short.wav")
    texts = []
    for path in (default_model_dir(), default_int8):
        loaded = load_model_dir(path)
        feats, lens = Fbank(loaded.features)(wave[None], torch.tensor([wave.shape[0]]))
        with torch.inference_mode():
            enc, enc_lens = loaded.model.encode(feats, lens, 16, 4)
            ids = loaded.model.ctc_logp(enc)[0].argmax(-1).unique_consecutive()
        texts.append(loaded.tokenizer.decode([i for i in ids.tolist() if i != 0]))
    float_text, int8_text = texts
    assert float_text.strip()
    assert _char_errors(int8_text, float_text) <= 0.1 * len(float_text), texts


def test_transcribe_cli_uses_compressed_model(default_int8, capsys):
    from blockasr.cli import main

    wav = default_model_dir().parents[1] / "samples" / "so3027_what_in_short.wav"
    assert main(["transcribe", str(wav), "--model", str(default_int8), "--decoder", "ctc", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["text"].strip()


def _char_errors(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
