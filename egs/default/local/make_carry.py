"""Build the folder that travels to the GPU machine: the training splits of ``shared/corpora``
re-encoded to smaller Ogg/Opus, and the text for synthesis prompts.

Only training material goes in: ``speechocean762/dev`` is the held-out test set and is never read.
Five ``speechocean762/train`` speakers become a ``valid`` split (validation during training); every
100th line of ``brown.txt`` (line index % 100 == 0) is kept out of the prompts, for the held-out
synthetic test set (``local/synth_test.sh``).

    python egs/default/local/make_carry.py --corpora ../shared/corpora --text ../shared/text --out .carry

Output::

    <work>/corpora/<corpus>/<split>/{wav.scp,text,utt2spk,spk2utt}  and  <work>/corpora/<corpus>/audio/...
    <out>/corpora.tgz              <work>/corpora packed (thousands of small files pack to far fewer
                                   bytes than they take on disk: the carry limit counts the latter)
    <out>/text/prompts.txt.gz      one normalised sentence per line
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import sys
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

# corpus, source split, libsndfile Opus compression level (0.96 ~ 20 kbit/s, 0.985 ~ 12, 1.0 ~ 8)
SETS = [("speechocean762", "train", 0.96), ("ljspeech-part", "train", 0.985), ("fsdd", "all", 1.0)]
VALID_SPEAKERS = 5  # speechocean762/train speakers moved to <out>/corpora/speechocean762/valid
HELDOUT_EVERY = 100  # brown.txt line i is held out of the prompts when i % 100 == 0


def read_kaldi(split_dir: Path) -> tuple[dict, dict, dict]:
    def table(name: str) -> dict[str, str]:
        rows = {}
        for line in (split_dir / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            rows[key] = value.strip()
        return rows
    return table("wav.scp"), table("text"), table("utt2spk")


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


def reencode(job: tuple[str, str, float]) -> int:
    src, dst, level = job
    if Path(dst).is_file():
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", required=True)
    p.add_argument("--text", required=True, help="folder with brown.txt and ljspeech_transcripts.txt")
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/blockasr-carry", help="where the re-encoded files are written")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    corpora, out, work = Path(args.corpora), Path(args.out), Path(args.work)
    jobs = []
    for corpus, split, level in SETS:
        wav, text, spk = read_kaldi(corpora / corpus / split)
        utts = sorted(wav)
        splits = {split: utts}
        if corpus == "speechocean762":
            speakers = sorted(set(spk.values()))
            valid = set(speakers[:: len(speakers) // VALID_SPEAKERS][:VALID_SPEAKERS])
            splits = {split: [u for u in utts if spk[u] not in valid],
                      "valid": [u for u in utts if spk[u] in valid]}
        for name, us in splits.items():
            write_kaldi(work / "corpora" / corpus / name, us, wav, text, spk)
            print(f"{corpus}/{name}: {len(us)} utterances", file=sys.stderr)
        jobs += [(str(corpora / corpus / wav[u]), str(work / "corpora" / corpus / wav[u]), level) for u in utts]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        total = sum(pool.imap_unordered(reencode, jobs, chunksize=32))
    print(f"re-encoded {len(jobs)} files: {total / 2**20:.1f} MiB", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "corpora.tgz", "w:gz") as tar:
        tar.add(work / "corpora", arcname="corpora")

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from asr.text import normalize_text

    lines = []
    for i, line in enumerate((Path(args.text) / "brown.txt").read_text().splitlines()):
        if i % HELDOUT_EVERY:
            lines.append(normalize_text(line))
    for line in (Path(args.text) / "ljspeech_transcripts.txt").read_text().splitlines():
        lines.append(normalize_text(line.partition(" ")[2]))
    (out / "text").mkdir(parents=True, exist_ok=True)
    with gzip.open(out / "text" / "prompts.txt.gz", "wt") as f:
        f.writelines(line + "\n" for line in lines if line)
    print(f"prompts: {sum(1 for x in lines if x)} lines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
