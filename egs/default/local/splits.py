"""Which real speech the default model trains on, validates on and is tested on.

One place for the speaker splits, so that ``make_carry.py`` (what travels to the GPU machine for
training) and ``devtest.py`` (what the model is scored on) can never disagree:

- dev-test, never trained on: ``librispeech-mini/dev`` (4 readers), ``an4/test`` (9 speakers) and
  every third speaker of ``speechocean762/dev`` by sorted id (21 of 62: ``DEVTEST_EVERY``);
- validation during training (speaker-disjoint from training): 5 speakers of
  ``speechocean762/train``, 2 readers of ``librispeech-mini/train`` and 4 speakers of ``an4/train``;
- training: everything else, the other 41 speechocean762/dev speakers included.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEVTEST", "TRAIN", "read_kaldi", "devtest_speakers", "split_speakers"]

DEVTEST_EVERY = 3
# (corpus, source split, validation speakers taken out of it, libsndfile Opus compression level
# for the carry: 0.96 ~ 20 kbit/s, 0.975 ~ 16, 0.985 ~ 12, 1.0 ~ 8)
TRAIN = [
    ("speechocean762", "train", 5, 0.975),
    ("speechocean762", "dev", 0, 0.975),        # minus the dev-test speakers
    ("librispeech-mini", "train", 2, 0.985),
    ("an4", "train", 4, 0.975),
    ("ljspeech-part", "train", 0, 0.985),
    ("fsdd", "all", 0, 1.0),
]
# (name, corpus, split): the sets the model is reported on
DEVTEST = [
    ("speechocean762_devtest", "speechocean762", "dev"),
    ("librispeech_dev", "librispeech-mini", "dev"),
    ("an4_test", "an4", "test"),
]


def read_kaldi(split_dir: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """``(wav.scp, text, utt2spk)`` of a Kaldi dir as dicts keyed by utterance id."""
    def table(name: str) -> dict[str, str]:
        rows = {}
        for line in (split_dir / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            rows[key] = value.strip()
        return rows
    return table("wav.scp"), table("text"), table("utt2spk")


def devtest_speakers(corpus: str, split: str, utt2spk: dict[str, str]) -> set[str]:
    """Speakers of ``corpus/split`` that are kept out of training (all of a dev-test split)."""
    speakers = sorted(set(utt2spk.values()))
    if (corpus, split) == ("speechocean762", "dev"):
        return set(speakers[::DEVTEST_EVERY])
    if any((corpus, split) == (c, s) for _, c, s in DEVTEST):
        return set(speakers)
    return set()


def split_speakers(corpus: str, split: str, utt2spk: dict[str, str], n_valid: int) -> tuple[set[str], set[str]]:
    """``(train speakers, validation speakers)`` of a training split; dev-test speakers in neither."""
    held = devtest_speakers(corpus, split, utt2spk)
    speakers = [s for s in sorted(set(utt2spk.values())) if s not in held]
    valid = set(speakers[:: max(1, len(speakers) // n_valid)][:n_valid]) if n_valid else set()
    return set(speakers) - valid, valid
