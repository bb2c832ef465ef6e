"""Training: experiment configs, the trainer, checkpoints, validation."""

from asr.train.checkpoint import average_checkpoints, latest_checkpoint, list_checkpoints
from asr.train.config import DataConfig, ExperimentConfig, OptimConfig, load_experiment
from asr.train.trainer import Trainer

__all__ = ["DataConfig", "ExperimentConfig", "OptimConfig", "Trainer", "average_checkpoints",
           "latest_checkpoint", "list_checkpoints", "load_experiment"]
