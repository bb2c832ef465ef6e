"""Model directories: ``config.yaml`` + ``model.pt`` + ``tokenizer.model`` (+ ``RESULTS.md``).

``config.yaml`` holds the model and feature configs and free-form provenance (data, steps); the
CMVN statistics travel inside the weights (``cmvn.mean`` / ``cmvn.istd``). A compressed directory
(``asr export --compress block-int8``) also has a ``compression`` section; its ``model.pt`` holds
int8 weights with their scales (:mod:`asr.models.compress`), and :func:`load_model_dir` gives a
model that runs its linear layers on int8 kernels, so every command uses it unchanged.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asr.config import from_dict, load_yaml, save_yaml
from asr.features import FbankConfig
from asr.models.compress import CompressionConfig, compress_state, decompress_state, to_int8_kernels
from asr.models.config import ModelConfig
from asr.models.model import AsrModel, build_model
from asr.tokenizer import Tokenizer

__all__ = ["ModelDirConfig", "LoadedModel", "export_model_dir", "load_model_dir", "default_model_dir",
           "compress_model_dir"]


def default_model_dir() -> Path:
    """The model shipped in the repository (``models/default``)."""
    return Path(__file__).resolve().parents[2] / "models" / "default"


@dataclass(frozen=True)
class ModelDirConfig:
    model: ModelConfig
    features: FbankConfig = field(default_factory=FbankConfig)
    provenance: dict = field(default_factory=dict)
    compression: CompressionConfig | None = None


@dataclass
class LoadedModel:
    model: AsrModel
    tokenizer: Tokenizer
    features: FbankConfig
    config: ModelDirConfig
    path: Path


def export_model_dir(state: dict, model_cfg: ModelConfig, features: FbankConfig, tokenizer_path: str | Path,
                     out_dir: str | Path, half: bool = False, provenance: dict | None = None,
                     compression: CompressionConfig | None = None) -> Path:
    """Write a self-contained model directory (weights optionally in float16, or int8-compressed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(model_cfg)
    model.load_state_dict(state)  # checks that the weights fit the config
    if compression is not None:
        weights = compress_state(model, compression)
    else:
        weights = {k: (v.half() if half and v.is_floating_point() and not k.startswith("cmvn.") else v)
                   for k, v in model.state_dict().items()}
    torch.save(weights, out / "model.pt")
    save_yaml(ModelDirConfig(model_cfg, features, provenance or {}, compression), out / "config.yaml")
    if Path(tokenizer_path).resolve() != (out / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer_path, out / "tokenizer.model")
    return out


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model directory for inference (float32 weights, eval mode).

    A compressed directory loads its dequantized weights; with the ``int8`` kernel on CPU its
    linear layers then run as :class:`~asr.models.compress.Int8Linear`.
    """
    path = Path(path)
    for name in ("config.yaml", "model.pt", "tokenizer.model"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: not a model directory (no {name})")
    cfg = load_yaml(ModelDirConfig, path / "config.yaml")
    model = build_model(cfg.model)
    # mmap: the file's pages are read once into the float32 parameters (load_state_dict casts the
    # stored float16 in place), with no second full copy of the weights in memory
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True, mmap=True)
    if cfg.compression is not None:
        state = decompress_state(state, cfg.compression.block)
    model.load_state_dict(state)
    del state
    model.to(device).eval()
    if cfg.compression is not None and cfg.compression.kernel == "int8" and torch.device(device).type == "cpu":
        to_int8_kernels(model)
    return LoadedModel(model, Tokenizer(path / "tokenizer.model"), cfg.features, cfg, path)


def compress_model_dir(src: str | Path, out_dir: str | Path, compression: CompressionConfig) -> Path:
    """Write a compressed copy of the model directory ``src`` (``RESULTS.md`` is not copied: the
    compressed model has its own numbers)."""
    src = Path(src)
    loaded = load_model_dir(src)
    if loaded.config.compression is not None:
        raise ValueError(f"{src}: already compressed ({loaded.config.compression.method})")
    provenance = {**loaded.config.provenance, "compressed_from": str(src)}
    return export_model_dir(loaded.model.state_dict(), loaded.config.model, loaded.features,
                            src / "tokenizer.model", out_dir, provenance=provenance, compression=compression)
