"""Experiment configuration: data, features, model and optimisation, loaded from one YAML file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from asr.config import ConfigError, from_dict, read_yaml, resolve_path
from asr.data.augment import SpecAugmentConfig
from asr.data.wave_augment import WaveAugmentConfig
from asr.features import FbankConfig
from asr.models.config import ModelConfig

__all__ = ["DataConfig", "OptimConfig", "ExperimentConfig", "load_experiment"]


@dataclass(frozen=True)
class DataConfig:
    """Paths are relative to the YAML file's folder unless absolute.

    Attributes:
        train: training manifests (JSONL), concatenated.
        valid: validation manifest.
        tokenizer: sentencepiece model.
        cmvn: global CMVN statistics (``asr cmvn``); None = estimated from ``train`` at start.
        batch_seconds: padded seconds per batch (per GPU).
        max_utterances: cap on utterances per batch.
        max_duration: drop training utterances longer than this (seconds), reported at start.
        speeds: speed-perturbation factors (``[1.0]`` = off).
        num_workers: data loader processes.
        cache_features: compute every training utterance's fbank (at every speed) once and keep it
            on the training device as float16 (:mod:`asr.train.feature_cache`); for GPUs that the
            data loader cannot keep busy. ``optim.dither`` does not apply then.
        cache_waves: keep every training utterance's audio on the training device as int16
            (:mod:`asr.train.wave_cache`) and speed-perturb there; unlike ``cache_features`` it
            leaves the audio open to ``augment``.
        augment: waveform augmentation on the training device (noise, babble, reverberation,
            gain, telephone band; :mod:`asr.data.wave_augment`); None = off. Not with
            ``cache_features`` (the audio is gone by then).
    """

    train: tuple[str, ...] = ()
    valid: str | None = None
    tokenizer: str = ""
    cmvn: str | None = None
    batch_seconds: float = 200.0
    max_utterances: int | None = None
    max_duration: float = 30.0
    speeds: tuple[float, ...] = (0.9, 1.0, 1.1)
    num_workers: int = 2
    valid_max_utterances: int = 500
    cache_features: bool = False
    cache_waves: bool = False
    augment: WaveAugmentConfig | None = None


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then inverse-square-root decay.

    ``schedule: deadline``: after the warm-up the learning rate falls linearly with the wall-clock
    time left instead, to ``lr * min_lr_ratio`` at the deadline of a time-bounded run
    (``Trainer.train(deadline)``, e.g. one GPU lease): the run ends annealed however many steps fit.

    ``ctc_warmup_steps``: the first steps train the CTC loss alone, with full-context attention
    and no SpecAugment; then the other heads, dynamic blocks and SpecAugment switch on. A
    conformer with all of them on from step 0 sits on the initial CTC plateau (blank only) far
    longer: on 2,845 synthetic utterances, 4 layers d=144, batches of 64 s, plain CTC left it at
    ~400 steps (valid CTC loss 233 -> 138 by step 600) while the full SAR recipe was still at 221
    at step 500 (benchmarks/results/ctc_plateau.md).
    """

    lr: float = 1e-3
    warmup_steps: int = 2000
    schedule: str = "inverse_sqrt"  # or "deadline" (see above)
    min_lr_ratio: float = 0.02
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 5.0
    accum_steps: int = 1
    max_steps: int = 20000
    max_epochs: int | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 10
    valid_every: int | None = None  # steps; None = once per epoch
    log_every: int = 50
    seed: int = 0
    dither: float = 0.0
    spec_augment: SpecAugmentConfig | None = field(default_factory=SpecAugmentConfig)
    bf16: bool = True  # autocast on CUDA; float32 on CPU regardless
    ctc_warmup_steps: int = 0
    # False: SDPA may not pick its cuDNN backend, which plans per new shape: with a new length in
    # every batch, the all-heads step of egs/default ran 8x slower with it (benchmarks/results/train_step_cuda.md)
    cudnn_attention: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in ("inverse_sqrt", "deadline"):
            raise ValueError(f"optim.schedule: {self.schedule!r} is not one of inverse_sqrt, deadline")


@dataclass(frozen=True)
class ExperimentConfig:
    """Attributes:
        lm_init: LM directory (``asr train-lm``, ``<out>/lm``) whose weights initialise
            ``model.sar.lm`` at the start of a fresh run (not on resume); relative to the YAML file.
        init: model directory (``asr export``) whose weights, CMVN included, initialise a fresh run
            (not on resume): a run continued from weights alone, e.g. from one GPU lease to the
            next, where the optimizer state did not travel. Its tokenizer must be ``data.tokenizer``.
    """

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    features: FbankConfig = field(default_factory=FbankConfig)
    lm_init: str | None = None
    init: str | None = None


def load_experiment(path: str | Path, vocab_size: int | None = None) -> ExperimentConfig:
    """Load an experiment YAML; relative data paths resolve against the file's folder.

    ``model.vocab_size`` may be omitted in the file: it then comes from the tokenizer.
    """
    path = Path(path)
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict) or "model" not in raw:
        raise ConfigError(f"{path}: needs a 'model' section")
    model = dict(raw["model"] or {})
    if "vocab_size" not in model:
        tok = (raw.get("data") or {}).get("tokenizer")
        if vocab_size is None and tok:
            from asr.tokenizer import Tokenizer

            vocab_size = Tokenizer(resolve_path(tok, path.parent)).vocab_size
        if vocab_size is None:
            raise ConfigError(f"{path}: model.vocab_size is missing and no data.tokenizer to take it from")
        model["vocab_size"] = vocab_size
    cfg = from_dict(ExperimentConfig, {**raw, "model": model}, source=str(path))
    d = cfg.data
    data = dataclasses.replace(
        d, train=tuple(resolve_path(p, path.parent) for p in d.train),
        valid=resolve_path(d.valid, path.parent) if d.valid else None,
        tokenizer=resolve_path(d.tokenizer, path.parent) if d.tokenizer else "",
        cmvn=resolve_path(d.cmvn, path.parent) if d.cmvn else None)
    if d.augment is not None:
        if d.cache_features:
            raise ConfigError(f"{path}: data.augment needs the audio: use data.cache_waves, not data.cache_features")
        if d.augment.rirs:
            data = dataclasses.replace(data, augment=dataclasses.replace(
                d.augment, rirs=resolve_path(d.augment.rirs, path.parent)))
    return dataclasses.replace(cfg, data=data,
                               lm_init=resolve_path(cfg.lm_init, path.parent) if cfg.lm_init else None,
                               init=resolve_path(cfg.init, path.parent) if cfg.init else None)
