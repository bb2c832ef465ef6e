"""Stage 0 of egs/default: the training and validation manifests of the default model.

1. Real speech (the Kaldi dirs ``local/make_carry.py`` writes, ``splits.TRAIN``): every file is
   decoded once to 16 kHz 16-bit WAV under ``<data>/wav`` (no Opus decoding per epoch) and listed
   in ``<data>/manifests/<corpus>_<split>.jsonl``; the ``valid_<split>`` folders (speakers held
   out of training) make the real part of ``valid.jsonl``.
2. Synthetic speech (``python -m recipes.tts``): one run over all voices (espeak-ng accents and
   variants, flite), with ``--heldout-voices`` kept out of training, and one run of flite voices only
   (the most natural of the Debian voices, otherwise 4 of ~130).
3. ``train.jsonl``: every part repeated ``--repeat`` times (fewer data-loader restarts per pass),
   the real corpora a further ``weight`` times (they are a few hours next to tens of synthetic
   hours); ``valid.jsonl``: the real validation split plus ``--valid-tts`` held-out-voice utterances.

    python egs/default/local/prepare.py --corpora .carry/corpora --prompts .carry/text/prompts.txt.gz \\
        --data egs/default/data --tts-utts 40000 --flite-utts 6000 --jobs 16
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from asr.data.manifest import read_manifest, write_manifest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import TRAIN  # noqa: E402

# extra weight of each real training split in train.jsonl (a few hours next to tens of synthetic ones)
WEIGHT = {("speechocean762", "train"): 2, ("speechocean762", "dev"): 2, ("librispeech-mini", "train"): 3,
          ("an4", "train"): 2, ("ljspeech-part", "train"): 1, ("fsdd", "all"): 1}
# (corpus, folder, manifest name, weight; 0 = validation only)
REAL = [(c, s, f"{c}_{s}", WEIGHT[c, s]) for c, s, _, _ in TRAIN]
REAL += [(c, f"valid_{s}", f"{c}_valid_{s}", 0) for c, s, n_valid, _ in TRAIN if n_valid]
HELDOUT_VOICES = ["flite:rms", "espeak:en-us-nyc+f3", "espeak:en-gb-scotland+m5"]


def _table(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


def _decode(job: tuple[str, str]) -> float:
    """Opus (or any soundfile format) -> 16 kHz mono PCM_16 WAV; returns the duration."""
    src, dst = job
    data, rate = sf.read(src, dtype="float32", always_2d=True)
    if rate != 16000:
        raise ValueError(f"{src}: expected 16 kHz, got {rate}")
    mono = data.mean(axis=1)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    sf.write(dst, np.clip(mono, -1, 1), 16000, subtype="PCM_16")
    return len(mono) / 16000


def prepare_real(corpora: Path, data: Path, jobs: int) -> dict[str, list[dict]]:
    sets = {}
    todo = []
    for corpus, split, name, _ in REAL:
        src = corpora / corpus / split
        if not src.is_dir():
            print(f"prepare: {src} not found, skipped", file=sys.stderr)
            continue
        wav, text, spk = _table(src / "wav.scp"), _table(src / "text"), _table(src / "utt2spk")
        rows = []
        for utt in sorted(wav):
            dst = (data / "wav" / corpus / f"{utt}.wav").resolve()
            rows.append({"id": utt, "audio": str(dst), "text": text[utt], "speaker": spk[utt]})
            todo.append((str(corpora / corpus / wav[utt]), str(dst)))
        sets[name] = rows
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        durations = pool.map(_decode, todo, chunksize=16)
    it = iter(durations)
    for name, rows in sets.items():
        for row in rows:
            row["duration"] = round(next(it), 4)
        write_manifest(data / "manifests" / f"{name}.jsonl", rows)
        print(f"prepare: {name}: {len(rows)} utterances, {sum(r['duration'] for r in rows) / 3600:.2f} h",
              file=sys.stderr)
    return sets


def _tts(args: list[str], out: Path) -> None:
    """One ``recipes.tts`` run into ``out``, skipped when an earlier run finished it (``out/.done``)."""
    if (out / ".done").is_file():
        print(f"prepare: {out} already synthesised", file=sys.stderr)
        return
    cmd = [sys.executable, "-m", "recipes.tts", *args, "--out", str(out)]
    print("prepare: " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT)
    (out / ".done").touch()


def synthesise(args: argparse.Namespace, data: Path) -> None:
    """The synthetic part: every voice but the held-out ones, then the flite voices again."""
    data.mkdir(parents=True, exist_ok=True)
    prompts = Path(args.prompts)
    if prompts.suffix == ".gz":
        plain = data / "prompts.txt"
        with gzip.open(prompts, "rt") as f:
            plain.write_text(f.read())
        prompts = plain
    t1 = time.time()
    _tts(["--text", str(prompts), "--num-utts", str(args.tts_utts), "--heldout-voices", *HELDOUT_VOICES,
          "--jobs", str(args.jobs), "--seed", str(args.seed)], data / "tts")
    if args.flite_utts:
        _tts(["--text", str(prompts), "--num-utts", str(args.flite_utts), "--voices", "flite:*",
              "--exclude-voices", *HELDOUT_VOICES, "--jobs", str(args.jobs), "--seed", str(args.seed + 1)],
             data / "tts_flite")
    print(f"prepare: synthesis took {time.time() - t1:.0f} s", file=sys.stderr)


def _kaldi_manifest(src: Path, out: Path, jobs: int) -> list[dict]:
    subprocess.run([sys.executable, "-m", "blockasr", "prepare", "kaldi", str(src), str(out),
                    "--workers", str(jobs), "--quiet"], check=True, cwd=ROOT)
    return read_manifest(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default=None, help="folder of Kaldi corpora (<corpus>/<split>/wav.scp)")
    p.add_argument("--prompts", required=True, help="sentences for synthesis (.txt or .txt.gz)")
    p.add_argument("--data", required=True, help="output folder")
    p.add_argument("--tts-utts", type=int, default=40000, help="utterances over all voices")
    p.add_argument("--flite-utts", type=int, default=6000, help="extra utterances of flite voices")
    p.add_argument("--valid-tts", type=int, default=100, help="held-out-voice utterances in valid.jsonl")
    p.add_argument("--repeat", type=int, default=2, help="passes over everything per epoch")
    p.add_argument("--jobs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synth-only", action="store_true",
                   help="only the synthetic part (device.sh starts it while the corpora are still travelling)")
    args = p.parse_args()
    if args.corpora is None and not args.synth_only:
        p.error("--corpora is required (unless --synth-only)")
    data = Path(args.data).resolve()
    t0 = time.time()
    synthesise(args, data)
    if args.synth_only:
        return 0
    real = prepare_real(Path(args.corpora), data, args.jobs)
    print(f"prepare: real speech decoded in {time.time() - t0:.0f} s", file=sys.stderr)
    man = data / "manifests"
    tts = _kaldi_manifest(data / "tts" / "train", man / "tts_train.jsonl", args.jobs)
    heldout = _kaldi_manifest(data / "tts" / "heldout", man / "tts_heldout.jsonl", args.jobs)
    flite = _kaldi_manifest(data / "tts_flite" / "train", man / "tts_flite.jsonl", args.jobs) if args.flite_utts else []

    train = (tts + flite) * args.repeat
    for _, _, name, weight in REAL:
        train += real.get(name, []) * (weight * args.repeat)
    write_manifest(man / "train.jsonl", train)
    valid = random.Random(args.seed).sample(heldout, min(args.valid_tts, len(heldout)))
    valid_real = [r for _, _, name, weight in REAL if weight == 0 for r in real.get(name, [])]
    write_manifest(man / "valid.jsonl", valid_real + sorted(valid, key=lambda r: r["id"]))
    unique = {r["id"]: r["duration"] for r in train}
    print(f"prepare: train.jsonl {len(train)} rows ({sum(r['duration'] for r in train) / 3600:.1f} h per epoch), "
          f"{len(unique)} unique utterances ({sum(unique.values()) / 3600:.1f} h): synthetic "
          f"{sum(r['duration'] for r in tts + flite) / 3600:.1f} h; valid.jsonl {len(valid)} synthetic + "
          f"{len(valid_real)} real; {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
