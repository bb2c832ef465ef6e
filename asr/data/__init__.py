"""Data layer: manifests, Kaldi dirs, dataset, bucketing sampler, augmentation."""

from asr.data.augment import SpecAugmentConfig, spec_augment, speed_perturb
from asr.data.dataset import AsrDataset, Batch, collate, load_row_audio
from asr.data.kaldi import PrepareReport, kaldi_to_manifest, read_kaldi_dir
from asr.data.manifest import ManifestError, read_manifest, write_manifest
from asr.data.sampler import DurationBatchSampler

__all__ = [
    "AsrDataset", "Batch", "collate", "load_row_audio", "DurationBatchSampler", "SpecAugmentConfig",
    "spec_augment", "speed_perturb", "PrepareReport", "kaldi_to_manifest", "read_kaldi_dir", "ManifestError",
    "read_manifest", "write_manifest",
]
