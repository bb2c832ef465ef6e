"""TED-LIUM release 2 and 3: ``sph/`` + ``stm/`` splits to one manifest JSONL per split.

Layouts (each split folder holds ``sph/<talk>.sph`` and ``stm/<talk>.stm``)::

    TEDLIUM_release2/{train,dev,test}/
    TEDLIUM_release-3/legacy/{train,dev,test}/               (release 2's split, default)
    TEDLIUM_release-3/speaker-adaptation/{train,dev,test}/
    TEDLIUM_release-3/data/                                  (the full release 3 training set)

``--root`` may name the corpus folder, its parent, or a folder that holds split folders directly.
Each stm line ``<talk> <channel> <speaker> <start> <end> <label> <words...>`` becomes one utterance
``<talk>-<start_cs:07d>-<end_cs:07d>`` whose manifest ``start``/``end`` cut it out of the talk's sph
file. As in the Kaldi and ESPnet TED-LIUM recipes, ``ignore_time_segment_in_scoring`` segments are
dropped, noise and unknown-word tokens (``{NOISE}``, ``{SMACK}``, ``<unk>``, ``<sil>`` ...) are
removed, pronunciation variants (``word(2)``) lose their mark, and apostrophe splits are joined
(``it 's`` -> ``IT'S``); text is upper case.

    python -m recipes.tedlium --root /data/TEDLIUM_release2 --out data/manifests
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import soundfile as sf

from asr.text import normalize_text

__all__ = [
    "LAYOUTS",
    "find_tedlium_splits",
    "normalize_tedlium_text",
    "read_stm",
    "tedlium_rows",
    "prepare_tedlium",
    "add_arguments",
    "run",
    "main",
]

LAYOUTS = ("legacy", "speaker-adaptation", "data")
_IGNORE = "ignore_time_segment_in_scoring"
_NOISE_TOKEN = re.compile(r"^(\{.*\}|<.*>|\[.*\])$")
_VARIANT = re.compile(r"\(\d+\)$")


def normalize_tedlium_text(words: str) -> str:
    """Normalise an stm transcript to blockasr's convention.

    >>> normalize_tedlium_text("{NOISE} so it 's <unk> the people(2) who 've {SMACK} left")
    "SO IT'S THE PEOPLE WHO'VE LEFT"
    """
    kept: list[str] = []
    for token in words.split():
        if _NOISE_TOKEN.match(token) or token == _IGNORE:
            continue
        token = _VARIANT.sub("", token)
        if token.startswith("'") and kept:
            kept[-1] += token  # Kaldi's join_suffix.py: "it 's" -> "it's"
        else:
            kept.append(token)
    return normalize_text(" ".join(kept))


def read_stm(path: Path) -> list[tuple[str, str, float, float, str]]:
    """``(talk, speaker, start, end, words)`` for every stm line that is not a comment.

    Raises:
        ValueError: a line has fewer than six fields or times that are not numbers.
    """
    segments = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip() or line.startswith(";;"):
            continue
        fields = line.split(maxsplit=6)
        if len(fields) < 6:
            raise ValueError(f"{path}:{lineno}: expected '<talk> <channel> <speaker> <start> <end> "
                             f"<label> <words>', got {line!r}")
        try:
            start, end = float(fields[3]), float(fields[4])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: start/end are not numbers: {line!r}") from None
        words = fields[6] if len(fields) > 6 else ""
        segments.append((fields[0], fields[2], start, end, words))
    return segments


def find_tedlium_splits(root: str | Path, layout: str = "legacy") -> dict[str, Path]:
    """Split name -> split folder (holding ``sph/`` and ``stm/``) for the layout under ``root``.

    Args:
        root: ``TEDLIUM_release2``, ``TEDLIUM_release-3``, a folder holding either, or a folder of
            split folders (e.g. ``TEDLIUM_release-3/legacy``).
        layout: for release 3, which sub-layout: one of :data:`LAYOUTS`.

    Raises:
        FileNotFoundError: no TED-LIUM layout under ``root``.
        ValueError: unknown ``layout``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown TED-LIUM layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    root = Path(root)
    for release in ("TEDLIUM_release2", "TEDLIUM_release-3", "TEDLIUM_release3"):
        if (root / release).is_dir():
            return find_tedlium_splits(root / release, layout)
    if any((root / name).is_dir() for name in LAYOUTS):  # release 3's top folder
        if layout == "data" and _is_split(root / "data"):
            return {"train": (root / "data").resolve()}
        splits = _split_dirs(root / layout)
    else:
        splits = _split_dirs(root)
    if splits:
        return splits
    raise FileNotFoundError(
        f"{root}: no TED-LIUM layout found (expected <split>/sph/*.sph and <split>/stm/*.stm under "
        f"{root}, {root}/TEDLIUM_release2, or {root}/TEDLIUM_release-3/{layout})")


def _is_split(folder: Path) -> bool:
    return (folder / "stm").is_dir() and (folder / "sph").is_dir()


def _split_dirs(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {d.name: d.resolve() for d in sorted(folder.iterdir()) if d.is_dir() and _is_split(d)}


def tedlium_rows(split_dir: Path) -> tuple[list[dict], int]:
    """Manifest rows for one split folder, sorted by utterance id, and the number of stm segments
    dropped (ignored, empty after normalisation, duplicated, or outside the audio).

    Raises:
        FileNotFoundError: an stm file has no matching sph file.
    """
    rows: dict[str, dict] = {}
    dropped = 0
    for stm in sorted((split_dir / "stm").glob("*.stm")):
        audio = split_dir / "sph" / f"{stm.stem}.sph"
        if not audio.is_file():
            raise FileNotFoundError(f"{stm}: no audio file {audio}")
        info = sf.info(str(audio))
        file_seconds = info.frames / info.samplerate
        for talk, speaker, start, end, words in read_stm(stm):
            text = "" if _IGNORE in words.split() else normalize_tedlium_text(words)
            utt = f"{talk}-{round(start * 100):07d}-{round(end * 100):07d}"
            end = min(end, file_seconds)  # the last stm segment may overrun the audio slightly
            if not text or end <= start or utt in rows:
                dropped += 1
                continue
            rows[utt] = {
                "id": utt,
                "audio": str(audio.resolve()),
                "text": text,
                "speaker": speaker,
                "duration": round(end - start, 4),
                "start": start,
                "end": end,
            }
    return [rows[k] for k in sorted(rows)], dropped


def prepare_tedlium(root: str | Path, out_dir: str | Path, layout: str = "legacy",
                    splits: list[str] | None = None) -> dict[str, Path]:
    """Write ``<out_dir>/<split>.jsonl`` for each split found (or each of ``splits``).

    Returns:
        split name -> manifest path.
    """
    from asr.data.manifest import write_manifest  # asr.data imports torch: `asr prepare --help` stays fast

    found = find_tedlium_splits(root, layout)
    wanted = list(found) if splits is None else list(splits)
    missing = [s for s in wanted if s not in found]
    if missing:
        raise FileNotFoundError(f"{root}: split(s) {', '.join(missing)} not found; "
                                f"found: {', '.join(found)}")
    out_dir = Path(out_dir)
    written = {}
    for split in wanted:
        rows, dropped = tedlium_rows(found[split])
        path = out_dir / f"{split}.jsonl"
        write_manifest(path, rows)
        hours = sum(r["duration"] for r in rows) / 3600
        print(f"tedlium {split}: {len(rows)} segments, {hours:.2f} h ({dropped} dropped) -> {path}")
        written[split] = path
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options (``asr prepare tedlium`` and ``python -m recipes.tedlium``)."""
    parser.add_argument("--root", required=True, help="TED-LIUM corpus folder (release 2 or 3)")
    parser.add_argument("--out", required=True, help="output folder for <split>.jsonl")
    parser.add_argument("--layout", default="legacy", choices=LAYOUTS,
                        help="release 3 sub-layout (default: legacy, i.e. release 2's split)")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="splits to prepare (default: every split found)")


def run(args: argparse.Namespace) -> int:
    """Run with parsed options; returns the exit status (errors: one line on stderr)."""
    try:
        prepare_tedlium(args.root, args.out, args.layout, args.splits)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asr prepare tedlium", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
