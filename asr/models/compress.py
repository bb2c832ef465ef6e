"""Int8 weight compression of a trained model, without retraining (BCT-style block scales).

Every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` weight is viewed as a matrix (N, K) —
output channels by flattened inputs — and stored as int8 with symmetric scales:

* ``block``: one scale per output row and block of ``block`` input columns, (N, ceil(K / block))
  (blockwise compression, Dong et al., "BCT: Blockwise Compression of Transformer-based Models");
* ``channel``: one scale per output row, (N, 1);
* ``tensor``: one scale for the whole matrix, (1, 1).

Everything else (biases, norms, embeddings, CMVN) stays as it was stored. Loading dequantizes the
weights (``decompress_state``) so the float model holds exactly the stored int8 values times their
scales, then :func:`to_int8_kernels` swaps the linear layers for :class:`Int8Linear`, which runs
PyTorch's fbgemm int8 kernel (``torch.ops.quantized.linear_dynamic``: int8 weights, activations
quantized to int8 per call). fbgemm takes one scale per output row; ``channel`` and ``tensor``
weights go through it unchanged, ``block`` weights are re-quantized per row from their
dequantized values (PyTorch has no CPU int8 matmul with per-block scales). The subsampling's
multi-channel Conv2d runs the same kernel on patches (:class:`Int8Conv2d`); the one-channel
Conv2d and the depthwise Conv1d, and everything under the ``float`` kernel, run in float32 on
the dequantized weights.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

__all__ = ["CompressionConfig", "METHODS", "quantize_weight", "dequantize_weight", "compress_state",
           "decompress_state", "Int8Linear", "Int8Conv2d", "PatchConv2d", "to_int8_kernels"]

Scheme = Literal["block", "channel", "tensor"]
METHODS: dict[str, Scheme] = {"block-int8": "block", "channel-int8": "channel", "tensor-int8": "tensor"}
_INT8, _SCALE = ".int8", ".scale"  # suffixes of a compressed weight's entries in the state dict


@dataclass(frozen=True)
class CompressionConfig:
    """How a model directory's weights are compressed (stored in its ``config.yaml``).

    Attributes:
        method: ``"block-int8"``, ``"channel-int8"`` or ``"tensor-int8"``.
        block: input columns per scale for ``block-int8``.
        kernel: how the loaded model computes its linear layers: ``"int8"`` (fbgemm int8 matmul)
            or ``"float"`` (float32 on the dequantized weights: exactly the stored weights).
    """

    method: str = "block-int8"
    block: int = 64
    kernel: Literal["int8", "float"] = "int8"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"compression method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.block < 1:
            raise ValueError(f"compression block must be >= 1, got {self.block}")
        if self.kernel not in ("int8", "float"):
            raise ValueError(f"compression kernel must be 'int8' or 'float', got {self.kernel!r}")

    @property
    def scheme(self) -> Scheme:
        return METHODS[self.method]


def quantize_weight(w: torch.Tensor, scheme: Scheme, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of a weight.

    Args:
        w: (N, ...) weight; the trailing dimensions are flattened to K input columns.
        scheme: ``"block"``, ``"channel"`` or ``"tensor"``.
        block: input columns per scale (``"block"`` only).

    Returns:
        q: int8 with the shape of ``w``, values in [-127, 127]; scale: float32 (N, G) with
        G = ceil(K / block) for ``block``, (N, 1) per channel, (1, 1) per tensor;
        ``w ~ q * scale`` broadcast over each block.
    """
    m = w.detach().float().reshape(w.shape[0], -1)  # (N, K)
    n, k = m.shape
    if scheme == "tensor":
        amax = m.abs().amax().reshape(1, 1)
    elif scheme == "channel":
        amax = m.abs().amax(dim=1, keepdim=True)
    elif scheme == "block":
        g = math.ceil(k / block)
        padded = torch.nn.functional.pad(m, (0, g * block - k))
        amax = padded.view(n, g, block).abs().amax(dim=2)  # (N, G)
    else:
        raise ValueError(f"unknown quantization scheme {scheme!r}")
    scale = (amax / 127.0).clamp_min(1e-12)
    q = torch.round(m / _expand(scale, n, k, block)).clamp_(-127, 127).to(torch.int8)
    return q.view(w.shape), scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Float32 weight of the shape of ``q`` from :func:`quantize_weight`'s output (``block``:
    the one it was quantized with; unused for one scale per row or per tensor)."""
    m = q.reshape(q.shape[0], -1).float()
    return (m * _expand(scale.float(), *m.shape, block)).view(q.shape)


def _expand(scale: torch.Tensor, n: int, k: int, block: int) -> torch.Tensor:
    """(N or 1, G) scales -> (N, K): scale ``g`` covers columns ``g * block ..`` (all if G = 1)."""
    if scale.shape[1] == 1:
        return scale.expand(n, k)
    if scale.shape[1] != math.ceil(k / block):
        raise ValueError(f"{scale.shape[1]} scales per row do not fit {k} columns in blocks of {block}")
    return scale.repeat_interleave(block, dim=1)[:, :k].expand(n, k)


def _weight_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every linear and convolution weight."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return [f"{name}.weight" for name, mod in model.named_modules() if isinstance(mod, kinds)]


def compress_state(model: nn.Module, cfg: CompressionConfig) -> dict[str, torch.Tensor]:
    """The model's state dict with each linear/conv weight ``key`` replaced by ``key.int8`` (int8)
    and ``key.scale`` (float16); other floating tensors in float16, CMVN in float32."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    quantized = set(_weight_keys(model))
    for key, value in state.items():
        if key in quantized:
            q, scale = quantize_weight(value, cfg.scheme, cfg.block)
            out[key + _INT8], out[key + _SCALE] = q, scale.half()
        elif value.is_floating_point() and not key.startswith("cmvn."):
            out[key] = value.half()
        else:
            out[key] = value
    return out


def decompress_state(state: dict[str, torch.Tensor], block: int) -> dict[str, torch.Tensor]:
    """Float32 state dict (the model's own keys) from :func:`compress_state`'s output
    (``block``: the config's)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(_SCALE):
            continue
        if key.endswith(_INT8):
            base = key[: -len(_INT8)]
            out[base] = dequantize_weight(value, state[base + _SCALE], block)
        else:
            out[key] = value.float() if value.is_floating_point() else value
    return out


class Int8Linear(nn.Module):
    """``nn.Linear`` on fbgemm's int8 kernel: per-row int8 weights, activations quantized per call.

    Build with :meth:`from_linear`. ``forward`` takes (..., K) float32 and returns (..., N).
    """

    def __init__(self, packed: torch.Tensor, in_features: int, out_features: int) -> None:
        super().__init__()
        self._packed = packed
        self.in_features, self.out_features = in_features, out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """Quantize ``linear.weight`` per output row (exact for weights that already are int8 times
        a per-row or per-tensor scale) and pack it for fbgemm."""
        w = linear.weight.detach().float().cpu()
        q, scale = quantize_weight(w, "channel")
        with warnings.catch_warnings():  # quantized tensors are deprecated, fbgemm's packing still takes them
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qw = torch._make_per_channel_quantized_tensor(q, scale[:, 0].double(), torch.zeros(w.shape[0], dtype=torch.long), 0)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        return cls(torch.ops.quantized.linear_prepack(qw, bias), w.shape[1], w.shape[0])

    @classmethod
    def concat(cls, linears: Sequence["Int8Linear"]) -> "Int8Linear":
        """One layer whose output is the outputs of ``linears`` (the same input width) side by side.

        The same numbers as the layers one by one: every weight row keeps its int8 values and its
        scale, and the input, quantized per call from its own range, is quantized once instead of
        once per layer (:class:`~asr.attention.fused.FusedLinears` fuses self-attention's q, k, v).
        """
        if len({m.in_features for m in linears}) != 1:
            raise ValueError("Int8Linear.concat: the layers must have the same in_features")
        weights, biases = zip(*(torch.ops.quantized.linear_unpack(m._packed) for m in linears))
        q = torch.cat([w.int_repr() for w in weights])
        scale = torch.cat([w.q_per_channel_scales() for w in weights])
        zero = torch.cat([w.q_per_channel_zero_points() for w in weights])
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([torch.zeros(m.out_features) if b is None else b for m, b in zip(linears, biases)])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qw = torch._make_per_channel_quantized_tensor(q, scale, zero, 0)
        return cls(torch.ops.quantized.linear_prepack(qw, bias), linears[0].in_features, q.shape[0])

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized (N, K) weight (float32; for inspection, not used by ``forward``)."""
        qw, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qw.dequantize()

    @property
    def bias(self) -> torch.Tensor | None:
        return torch.ops.quantized.linear_unpack(self._packed)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range=True: 7-bit activations, so AVX2's 16-bit pairwise sums cannot saturate
        return torch.ops.quantized.linear_dynamic(x, self._packed, True)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Conv2d(nn.Module):
    """``nn.Conv2d`` (no padding, dilation 1, one group) as patches times an :class:`Int8Linear`.

    The input is gathered channels-last into (B * H' * W', kh * kw * C_in) patches with one strided
    view and one copy, multiplied by the weight reordered to (C_out, kh, kw, C_in), and returned as
    (B, C_out, H', W') (a permuted view).
    """

    def __init__(self, linear: Int8Linear, kernel: tuple[int, int], stride: tuple[int, int]) -> None:
        super().__init__()
        self.linear, self.kernel, self.stride = linear, kernel, stride

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "Int8Conv2d":
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding not in ((0, 0), "valid"):
            raise ValueError("Int8Conv2d supports groups=1, dilation=1, padding=0 only")
        c_out = conv.out_channels
        lin = nn.Linear(conv.weight[0].numel(), c_out, bias=conv.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(conv.weight.permute(0, 2, 3, 1).reshape(c_out, -1))  # (C_out, kh*kw*C_in)
            if conv.bias is not None:
                lin.bias.copy_(conv.bias)
        return cls(Int8Linear.from_linear(lin), tuple(conv.kernel_size), tuple(conv.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W) -> (B, C_out, H', W')."""
        patches, (b, ho, wo) = _patches(x, self.kernel, self.stride)
        return self.linear(patches).view(b, ho, wo, -1).permute(0, 3, 1, 2)


def _patches(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]
             ) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The (B * H' * W', kh * kw * C) patches of an unpadded convolution over x (B, C, H, W),
    gathered channels-last (one strided view and one copy; no copy for channels-last input), and
    (B, H', W')."""
    (kh, kw), (sh, sw) = kernel, stride
    b, c, h, w = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    xl = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
    st = xl.stride()
    patches = xl.as_strided((b, ho, wo, kh, kw, c), (st[0], sh * st[1], sw * st[2], st[1], st[2], st[3]))
    return patches.reshape(b * ho * wo, kh * kw * c), (b, ho, wo)


class PatchConv2d(nn.Module):
    """A one-input-channel ``nn.Conv2d`` (no padding, dilation 1) as one float matrix product over
    its patches, with the output channels last in memory, returned as a (B, C_out, H', W') permuted
    view: an :class:`Int8Conv2d` after it (the subsampling's second convolution) then reads it
    channels-last without a copy. Float weights: one input channel gives too little work per
    weight to gain from int8 (see :func:`to_int8_kernels`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: tuple[int, int],
                 stride: tuple[int, int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (kh * kw, C_out)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.kernel, self.stride = kernel, stride

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "PatchConv2d":
        if conv.in_channels != 1 or conv.dilation != (1, 1) or conv.padding not in ((0, 0), "valid"):
            raise ValueError("PatchConv2d supports one input channel, dilation=1, padding=0 only")
        weight = conv.weight.detach().reshape(conv.out_channels, -1).t().contiguous()
        bias = None if conv.bias is None else conv.bias.detach().clone()
        return cls(weight, bias, tuple(conv.kernel_size), tuple(conv.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, H, W) -> (B, C_out, H', W') (channels last in memory)."""
        patches, (b, ho, wo) = _patches(x, self.kernel, self.stride)
        y = patches @ self.weight if self.bias is None else torch.addmm(self.bias, patches, self.weight)
        return y.view(b, ho, wo, -1).permute(0, 3, 1, 2)


def to_int8_kernels(model: nn.Module, min_conv_channels: int = 16) -> nn.Module:
    """Replace (in place) every ``nn.Linear`` of ``model`` by :class:`Int8Linear` and every plain
    ``nn.Conv2d`` with at least ``min_conv_channels`` input channels by :class:`Int8Conv2d`
    (a one-channel convolution has too little work per weight to gain: it becomes a float
    :class:`PatchConv2d`, whose channels-last output the int8 convolution after it reads without
    a copy: 0.2-0.35 ms of models/default's 9.5 ms encoder step, 1 thread, in three A/B runs); CPU only."""
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear):
                setattr(mod, name, Int8Linear.from_linear(child))
            elif (isinstance(child, nn.Conv2d) and child.groups == 1
                  and child.dilation == (1, 1) and child.padding in ((0, 0), "valid")):
                if child.in_channels >= min_conv_channels:
                    setattr(mod, name, Int8Conv2d.from_conv(child))
                elif child.in_channels == 1:
                    setattr(mod, name, PatchConv2d.from_conv(child))
    return model
