"""Build what travels to the GPU machine: the training splits of ``shared/corpora`` re-encoded to
smaller Ogg/Opus, the room impulse responses, and the text for synthesis prompts.

Only training material goes in (``splits.TRAIN``): the dev-test speakers (``splits.DEVTEST``) are
never read. Each training split loses a few speakers to a ``valid_<split>`` folder (speaker-disjoint
validation during training); every 100th line of ``brown.txt`` (line index % 100 == 0) is kept out
of the prompts, for the held-out synthetic test set.

A call of the device tool carries at most 64 MiB with the working tree (the model alone is 35 MB),
so the corpora are packed into parts of at most ``--part-mb``, each carried by its own call on the
same warm machine (``device.sh`` unpacks every part it finds).

    python egs/default/local/make_carry.py --corpora ../shared/corpora --text ../shared/text --out .carry

Output::

    <work>/corpora/<corpus>/<split>/{wav.scp,text,utt2spk,spk2utt}  and  <work>/corpora/<corpus>/audio/...
    <out>/p<k>/corpora-<k>.tgz      the corpora in parts (tar.gz of Opus files and Kaldi dirs)
    <out>/p1/prompts.txt.gz         one normalised sentence per line
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import TRAIN, read_kaldi, split_speakers  # noqa: E402

HELDOUT_EVERY = 100  # brown.txt line i is held out of the prompts when i % 100 == 0


def write_kaldi(split_dir: Path, utts: list[str], wav: dict, text: dict, spk: dict) -> None:
    split_dir.mkdir(parents=True, exist_ok=True)
    utts = sorted(utts)
    (split_dir / "wav.scp").write_text("".join(f"{u} {wav[u]}\n" for u in utts))
    (split_dir / "text").write_text("".join(f"{u} {text[u]}\n" for u in utts))
    (split_dir / "utt2spk").write_text("".join(f"{u} {spk[u]}\n" for u in utts))
    spk2utt: dict[str, list[str]] = {}
    for u in utts:
        spk2utt.setdefault(spk[u], []).append(u)
    (split_dir / "spk2utt").write_text("".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())))


def reencode(job: tuple[str, str, float | None]) -> int:
    """Re-encode ``src`` to Opus at compression ``level`` into ``dst``; ``level`` None copies it."""
    src, dst, level = job
    if Path(dst).is_file():
        return Path(dst).stat().st_size
    if level is None:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return Path(dst).stat().st_size
    data, rate = sf.read(src, dtype="float32", always_2d=True)
    mono = np.ascontiguousarray(data.mean(axis=1))
    if rate != 16000:
        import torch
        from torchaudio.functional import resample
        mono = resample(torch.from_numpy(mono), rate, 16000).numpy()
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    tmp = dst + ".tmp.opus"
    with sf.SoundFile(tmp, "w", 16000, 1, format="OGG", subtype="OPUS", compression_level=level) as f:
        f.write(mono)
    Path(tmp).replace(dst)
    return Path(dst).stat().st_size


def _pack(work: Path, out: Path, part_bytes: int) -> list[Path]:
    """Tar the Kaldi dirs and audio under ``work/corpora`` into gzipped parts of at most ``part_bytes``
    (Opus does not compress further: the input size is the part size)."""
    files = sorted(p for p in (work / "corpora").rglob("*") if p.is_file() and not p.name.endswith(".tmp.opus"))
    parts: list[list[Path]] = [[]]
    size = 0
    for f in files:
        n = f.stat().st_size + 512
        if size + n > part_bytes and parts[-1]:
            parts.append([])
            size = 0
        parts[-1].append(f)
        size += n
    paths = []
    for k, group in enumerate(parts, 1):
        (out / f"p{k}").mkdir(parents=True, exist_ok=True)
        path = out / f"p{k}" / f"corpora-{k}.tgz"
        with tarfile.open(path, "w:gz") as tar:
            for f in group:
                tar.add(f, arcname=str(f.relative_to(work)))
        paths.append(path)
    return paths


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", required=True)
    p.add_argument("--text", required=True, help="folder with brown.txt and ljspeech_transcripts.txt")
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/blockasr-carry", help="where the re-encoded files are written")
    p.add_argument("--part-mb", type=float, default=24.0, help="size of each carried part (MB)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--copy", action="store_true",
                   help="copy the Opus files as they are (files re-encoded by an earlier run are kept): "
                        "more parts to carry, no CPU time (re-encoding takes ~0.2 CPU s per file)")
    args = p.parse_args()
    corpora, out, work = Path(args.corpora), Path(args.out), Path(args.work)
    jobs = []
    for corpus, split, n_valid, level in TRAIN:
        wav, text, spk = read_kaldi(corpora / corpus / split)
        train_spk, valid_spk = split_speakers(corpus, split, spk, n_valid)
        splits = {split: [u for u in sorted(wav) if spk[u] in train_spk]}
        if valid_spk:
            splits[f"valid_{split}"] = [u for u in sorted(wav) if spk[u] in valid_spk]
        for name, us in splits.items():
            write_kaldi(work / "corpora" / corpus / name, us, wav, text, spk)
            print(f"{corpus}/{name}: {len(us)} utterances, {len({spk[u] for u in us})} speakers", file=sys.stderr)
            jobs += [(str(corpora / corpus / wav[u]), str(work / "corpora" / corpus / wav[u]),
                      None if args.copy else level) for u in us]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        total = sum(pool.imap_unordered(reencode, jobs, chunksize=32))
    print(f"re-encoded {len(jobs)} files: {total / 2**20:.1f} MiB", file=sys.stderr)
    for path in _pack(work, out, int(args.part_mb * 1e6)):
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB", file=sys.stderr)

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from asr.text import normalize_text

    lines = []
    for i, line in enumerate((Path(args.text) / "brown.txt").read_text().splitlines()):
        if i % HELDOUT_EVERY:
            lines.append(normalize_text(line))
    for line in (Path(args.text) / "ljspeech_transcripts.txt").read_text().splitlines():
        lines.append(normalize_text(line.partition(" ")[2]))
    with gzip.open(out / "p1" / "prompts.txt.gz", "wt") as f:
        f.writelines(line + "\n" for line in lines if line)
    print(f"prompts: {sum(1 for x in lines if x)} lines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
