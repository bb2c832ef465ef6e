"""Long segments of 60-300 s: consecutive utterances of one LibriSpeech chapter, or of one speaker
of speechocean762, an4 and ljspeech-part, joined in utterance-id order; the transcript is the parts'
texts joined with spaces, with ``--gap`` seconds of silence between parts.

Training rows (``long_train.jsonl``) are concatenated manifest rows (``audio`` a list of parts,
:mod:`asr.data.manifest`): the data loader and the wave cache read the parts in place and join
them (:func:`asr.data.load_row_audio`), so no audio is written. Each of ``--draws`` passes draws
its own target lengths, uniform in ``[--min, --max]``, so the passes cut the chapters at different
places. The utterances come from the training speakers only:

- ``--manifests DIR``: the per-corpus manifests ``local/prepare.py`` writes (``<corpus>_<split>.jsonl``
  of ``splits.TRAIN``; run.sh stage 0 on the GPU machine). Their audio comes from the carry, which
  holds no dev-test or validation speaker at all (``make_carry.py`` uses ``splits.split_speakers``).
- ``--corpora DIR``: the Kaldi dirs of ``shared/corpora`` read in place, the training speakers
  chosen with ``splits.split_speakers`` as ``make_carry.py`` does (durations read from the headers).

Evaluation rows (``--devtest``, with ``--corpora``): the dev-test sets of ``splits.DEVTEST``, their
dev-test speakers only, joined the same way with every utterance kept (a chapter's last segment may
be shorter than ``--min``). ``asr decode`` reads plain rows, so each segment is written once as a
16 kHz WAV under ``<out>/wav`` and ``<out>/<set>.jsonl`` lists it (ids ``<first part>_cat<n>``).

    python egs/default/local/long_segments.py --manifests egs/default/data/manifests \\
        --out egs/default/data/manifests/long_train.jsonl --draws 3
    python egs/default/local/long_segments.py --devtest --corpora ../shared/corpora \\
        --out egs/default/data/devtest_long --sets librispeech_dev

Scoring the offline decoder on them, before and after a fine-tune (conf/offline_long.yaml): with
``--block-ms full`` the recognizer encodes the whole recording at once and runs one joint beam search
over it (at a block size the endpointer would cut it into segments of at most 20 s):

    SETS="librispeech_dev_long=data/devtest_long/librispeech_dev.jsonl" DECODERS="offline:full:2" \\
        OUT=exp/eval_long egs/default/local/evaluate.sh MODEL_DIR
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from asr.data.manifest import read_manifest, write_manifest  # noqa: E402
from splits import DEVTEST, TRAIN, devtest_speakers, read_kaldi, split_speakers  # noqa: E402

__all__ = ["LONG_CORPORA", "group_key", "plan_runs", "join_rows", "long_rows", "train_rows_from_kaldi",
           "devtest_rows_from_kaldi", "read_train_manifests"]

# fsdd is left out: isolated digits of six speakers, joined, are not long speech
LONG_CORPORA = ("librispeech-mini", "speechocean762", "an4", "ljspeech-part")


def group_key(corpus: str, row: dict) -> str:
    """What a segment stays within: the chapter of a LibriSpeech utterance (``ls1088-1088-134315-0000``
    -> ``ls1088-1088-134315``), the speaker otherwise."""
    if corpus.startswith("librispeech"):
        return row["id"].rsplit("-", 1)[0]
    return row.get("speaker") or row["id"]


def plan_runs(durations: list[float], lo: float, hi: float, gap: float, rng: random.Random,
              keep_short: bool = False) -> list[list[int]]:
    """Cut consecutive items into runs of ``lo``..``hi`` seconds, gaps included.

    Each run draws a target uniform in ``[lo, hi]`` and takes items until it reaches the target;
    an item that would carry it past ``hi`` starts the next run. Runs shorter than ``lo`` (a
    group's end) or longer than ``hi`` (one item alone) are dropped unless ``keep_short``
    (evaluation: every utterance kept).

    Example: durations [40, 40, 40, 40], lo = hi = 80, gap 0 -> [[0, 1], [2, 3]].
    """
    runs: list[list[int]] = []
    run: list[int] = []
    total = 0.0

    def close() -> None:
        if run and (keep_short or lo <= total <= hi):
            runs.append(list(run))

    target = rng.uniform(lo, hi)
    for i, d in enumerate(durations):
        add = d + (gap if run else 0.0)
        if run and total + add > hi:
            close()
            run, total, target, add = [], 0.0, rng.uniform(lo, hi), d
        run.append(i)
        total += add
        if total >= target:
            close()
            run, total, target = [], 0.0, rng.uniform(lo, hi)
    close()
    return runs


def join_rows(parts: list[dict], gap: float, suffix: str = "") -> dict:
    """One concatenated manifest row of ``parts`` (in order), ``gap`` seconds between them."""
    starts = [p.get("start") for p in parts]
    ends = [p.get("end") for p in parts]
    duration = sum(p["duration"] for p in parts) + gap * (len(parts) - 1)
    return {"id": f"{parts[0]['id']}_cat{len(parts)}{suffix}", "audio": [p["audio"] for p in parts],
            "text": " ".join(p["text"] for p in parts), "speaker": parts[0].get("speaker"),
            "duration": round(duration, 4),
            "start": starts if any(s is not None for s in starts) else None,
            "end": ends if any(e is not None for e in ends) else None,
            "gap": gap if gap else None}


def long_rows(sets: dict[str, list[dict]], lo: float, hi: float, gap: float, seed: int = 0, draws: int = 1,
              keep_short: bool = False) -> list[dict]:
    """Concatenated rows of every corpus, ``draws`` passes over it.

    Args:
        sets: ``corpus`` -> rows of that corpus (each with ``id``, ``audio``, ``text``, ``speaker``,
            ``duration``); grouped by :func:`group_key`, in utterance-id order.
        lo, hi: segment length bounds (seconds); gap: silence between parts (seconds).
        seed: the target lengths of pass ``d`` come from ``Random(seed + d)``.
    """
    out = []
    for draw in range(draws):
        rng = random.Random(seed + draw)
        for corpus in sorted(sets):
            groups: dict[str, list[dict]] = {}
            for row in sorted(sets[corpus], key=lambda r: r["id"]):
                groups.setdefault(group_key(corpus, row), []).append(row)
            for key in sorted(groups):
                rows = groups[key]
                for run in plan_runs([r["duration"] for r in rows], lo, hi, gap, rng, keep_short):
                    out.append(join_rows([rows[i] for i in run], gap, f"_d{draw}" if draws > 1 else ""))
    return out


def read_train_manifests(folder: Path) -> dict[str, list[dict]]:
    """``corpus`` -> rows of the ``<corpus>_<split>.jsonl`` training manifests (``splits.TRAIN``)
    under ``folder``; a missing one is skipped with a note."""
    sets: dict[str, list[dict]] = {}
    for corpus, split, _, _ in TRAIN:
        if corpus not in LONG_CORPORA:
            continue
        path = folder / f"{corpus}_{split}.jsonl"
        if not path.is_file():
            print(f"long_segments: {path} not found, skipped", file=sys.stderr)
            continue
        sets.setdefault(corpus, []).extend(read_manifest(path))
    return sets


def _kaldi_rows(split_dir: Path, speakers: set[str]) -> list[dict]:
    wav, text, spk = read_kaldi(split_dir)
    return [{"id": u, "audio": str((split_dir.parent / wav[u]).resolve()), "text": text[u], "speaker": spk[u]}
            for u in sorted(wav) if spk[u] in speakers]


def train_rows_from_kaldi(corpora: Path) -> dict[str, list[dict]]:
    """``corpus`` -> the training utterances of ``splits.TRAIN`` (training speakers only:
    ``split_speakers``, as make_carry.py), without durations."""
    sets: dict[str, list[dict]] = {}
    for corpus, split, n_valid, _ in TRAIN:
        if corpus not in LONG_CORPORA:
            continue
        _, _, spk = read_kaldi(corpora / corpus / split)
        train_spk, _ = split_speakers(corpus, split, spk, n_valid)
        sets.setdefault(corpus, []).extend(_kaldi_rows(corpora / corpus / split, train_spk))
    return sets


def devtest_rows_from_kaldi(corpora: Path, names: list[str] | None = None) -> dict[str, tuple[str, list[dict]]]:
    """Dev-test set name -> ``(corpus, rows)`` of its dev-test speakers (``splits.DEVTEST``),
    without durations."""
    out = {}
    for name, corpus, split in DEVTEST:
        if names and name not in names:
            continue
        _, _, spk = read_kaldi(corpora / corpus / split)
        out[name] = (corpus, _kaldi_rows(corpora / corpus / split, devtest_speakers(corpus, split, spk)))
    return out


def _duration(path: str) -> float:
    from asr.audio import audio_duration

    return round(audio_duration(path), 4)


def _add_durations(rows: list[dict], jobs: int) -> None:
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for row, d in zip(rows, pool.map(_duration, [r["audio"] for r in rows], chunksize=32)):
            row["duration"] = d


def _write_wavs(rows: list[dict], folder: Path) -> list[dict]:
    """Each concatenated row as one 16 kHz PCM-16 WAV under ``folder``; plain rows pointing at them."""
    import soundfile as sf

    from asr.data import load_row_audio

    folder.mkdir(parents=True, exist_ok=True)
    plain = []
    for row in rows:
        path = (folder / f"{row['id']}.wav").resolve()
        wave = load_row_audio(row)
        sf.write(str(path), wave.clamp(-1, 1).numpy(), 16000, subtype="PCM_16")
        plain.append({**row, "audio": str(path), "start": None, "end": None, "gap": None,
                      "duration": round(wave.numel() / 16000, 4)})
    return plain


def _summary(name: str, rows: list[dict]) -> str:
    d = [r["duration"] for r in rows]
    if not d:
        return f"{name}: no segments"
    return (f"{name}: {len(rows)} segments, {sum(d) / 3600:.2f} h, {min(d):.0f}..{max(d):.0f} s "
            f"(mean {sum(d) / len(d):.0f} s), {sum(len(r['audio']) if isinstance(r['audio'], list) else 1 for r in rows)} parts")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifests", help="folder of prepare.py's <corpus>_<split>.jsonl (training)")
    src.add_argument("--corpora", help="shared/corpora (Kaldi dirs, read in place)")
    p.add_argument("--out", required=True, help="training: the JSONL file; --devtest: a folder")
    p.add_argument("--devtest", action="store_true", help="the dev-test sets (needs --corpora), written as WAVs")
    p.add_argument("--sets", nargs="*", default=None, help="with --devtest: these DEVTEST names only")
    p.add_argument("--min", type=float, default=60.0, help="shortest segment (s)")
    p.add_argument("--max", type=float, default=300.0, help="longest segment (s)")
    p.add_argument("--gap", type=float, default=0.2, help="silence between parts (s)")
    p.add_argument("--draws", type=int, default=1, help="training: passes, each with its own target lengths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="processes reading durations (--corpora)")
    args = p.parse_args()
    if not 0 < args.min <= args.max:
        p.error(f"need 0 < --min <= --max, got {args.min} and {args.max}")
    if args.devtest and not args.corpora:
        p.error("--devtest reads the dev-test Kaldi dirs: give --corpora")
    if args.devtest:
        out = Path(args.out)
        for name, (corpus, rows) in devtest_rows_from_kaldi(Path(args.corpora), args.sets).items():
            _add_durations(rows, args.jobs)
            joined = long_rows({corpus: rows}, args.min, args.max, args.gap, args.seed, keep_short=True)
            write_manifest(out / f"{name}.jsonl", _write_wavs(joined, out / "wav"))
            print("long_segments: " + _summary(name, joined), file=sys.stderr)
        return 0
    if args.manifests:
        sets = read_train_manifests(Path(args.manifests))
    else:
        sets = train_rows_from_kaldi(Path(args.corpora))
        _add_durations([r for rows in sets.values() for r in rows], args.jobs)
    rows = long_rows(sets, args.min, args.max, args.gap, args.seed, args.draws)
    if not rows:
        print("long_segments: no segments (no training manifests found?)", file=sys.stderr)
        return 1
    write_manifest(args.out, rows)
    print(f"long_segments: {args.out}: " + _summary("train", rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
