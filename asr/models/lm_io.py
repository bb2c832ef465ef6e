"""Language-model directories: ``config.yaml`` + ``model.pt`` + ``tokenizer.model``.

Written by ``asr train-lm`` (``<out>/lm``); read for shallow fusion (``asr transcribe --lm DIR``)
and to initialise the SAR decoder's LM subnetwork (``lm_init`` in an experiment YAML). An LM only
fits a model that uses the very same tokenizer: both uses check it and say so when it does not.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from asr.config import load_yaml, save_yaml
from asr.models.config import LMConfig
from asr.models.lm import TransformerLM
from asr.tokenizer import Tokenizer

__all__ = ["LMDirConfig", "LoadedLM", "save_lm_dir", "load_lm_dir", "check_same_tokenizer", "init_sar_lm"]


@dataclass(frozen=True)
class LMDirConfig:
    """``config.yaml`` of an LM directory; ``provenance`` is free-form (data, steps, perplexity)."""

    vocab_size: int
    lm: LMConfig = field(default_factory=LMConfig)
    provenance: dict = field(default_factory=dict)


@dataclass
class LoadedLM:
    lm: TransformerLM
    tokenizer: Tokenizer
    config: LMDirConfig
    path: Path


def save_lm_dir(lm: TransformerLM, tokenizer_path: str | Path, out_dir: str | Path,
                provenance: dict | None = None) -> Path:
    """Write ``lm``'s config, float32 weights and the tokenizer to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().float().cpu() for k, v in lm.state_dict().items()}, out / "model.pt")
    save_yaml(LMDirConfig(lm.vocab_size, lm.cfg, provenance or {}), out / "config.yaml")
    if Path(tokenizer_path).resolve() != (out / "tokenizer.model").resolve():
        shutil.copyfile(tokenizer_path, out / "tokenizer.model")
    return out


def check_same_tokenizer(lm_tok: Tokenizer, model_tok: Tokenizer, what: str) -> None:
    """Raise ValueError unless the two sentencepiece models are identical (same pieces, same ids)."""
    if lm_tok.sp.serialized_model_proto() != model_tok.sp.serialized_model_proto():
        raise ValueError(f"{what}: the LM's tokenizer ({lm_tok.path}, {lm_tok.vocab_size} pieces) differs from "
                         f"the model's ({model_tok.path}, {model_tok.vocab_size} pieces); train the LM with "
                         f"the model's tokenizer (asr train-lm --tokenizer {model_tok.path})")


def load_lm_dir(path: str | Path, device: str | torch.device = "cpu",
                tokenizer: Tokenizer | None = None) -> LoadedLM:
    """Load an LM directory in eval mode; with ``tokenizer``, check that the LM was trained with it."""
    path = Path(path)
    for name in ("config.yaml", "model.pt", "tokenizer.model"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: not an LM directory (no {name}; asr train-lm writes OUT/lm)")
    cfg = load_yaml(LMDirConfig, path / "config.yaml")
    lm_tok = Tokenizer(path / "tokenizer.model")
    if tokenizer is not None:
        check_same_tokenizer(lm_tok, tokenizer, str(path))
    lm = TransformerLM(cfg.vocab_size, cfg.lm)
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    lm.load_state_dict({k: v.float() for k, v in state.items()})
    return LoadedLM(lm.to(device).eval(), lm_tok, cfg, path)


def init_sar_lm(model, lm_dir: str | Path, tokenizer: Tokenizer) -> LoadedLM:
    """Copy a trained LM into ``model.sar.lm`` (an :class:`~asr.models.AsrModel` with a SAR decoder).

    The sizes (``d_model``, ``n_heads``, ``n_layers``, ``ff_mult``) and the tokenizer must match;
    ``dropout`` and ``max_context`` may differ (the model's own config applies).

    Raises:
        ValueError: no SAR decoder, another tokenizer, or other sizes (the message lists them).
    """
    if getattr(model, "sar", None) is None:
        raise ValueError(f"lm_init {lm_dir}: the model has no SAR decoder (kind: sar) to initialise")
    loaded = load_lm_dir(lm_dir, tokenizer=tokenizer)
    want, have = model.sar.cfg.lm, loaded.config.lm
    diff = [f"{k}: model {getattr(want, k)} vs LM {getattr(have, k)}"
            for k in ("d_model", "n_heads", "n_layers", "ff_mult") if getattr(want, k) != getattr(have, k)]
    if diff:
        raise ValueError(f"lm_init {lm_dir}: the LM does not fit model.sar.lm ({'; '.join(diff)})")
    model.sar.lm.load_state_dict(loaded.lm.state_dict())  # in place: optimizers keep their parameters
    return loaded
