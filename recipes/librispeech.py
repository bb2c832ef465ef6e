"""LibriSpeech: the upstream layout to one manifest JSONL per subset.

Upstream layout (as unpacked from openslr.org resource 12)::

    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac
    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   # "<utt> <TEXT>" lines

Every subset found under the root is prepared to ``<out>/<subset>.jsonl`` (rows sorted by id; audio
paths absolute; duration from the flac header; speaker = the speaker id). Subsets can be downloaded
first with ``--download``; without a network the download is skipped with a message.

    python -m recipes.librispeech --root /data/LibriSpeech --out data/manifests
"""

from __future__ import annotations

import argparse
import socket
import sys
import tarfile
import urllib.request
from pathlib import Path

import soundfile as sf

from asr.text import normalize_text

__all__ = [
    "SUBSETS",
    "find_librispeech_root",
    "find_subsets",
    "librispeech_rows",
    "prepare_librispeech",
    "download_librispeech",
    "network_available",
    "add_arguments",
    "run",
    "main",
]

SUBSETS = (
    "dev-clean", "dev-other", "test-clean", "test-other",
    "train-clean-100", "train-clean-360", "train-other-500",
)
_URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"
_HOST = "www.openslr.org"


def find_librispeech_root(root: str | Path) -> Path:
    """The ``LibriSpeech`` folder: ``root`` itself, or ``root/LibriSpeech``.

    Raises:
        FileNotFoundError: neither holds a subset folder.
    """
    root = Path(root)
    for candidate in (root, root / "LibriSpeech"):
        if candidate.is_dir() and find_subsets(candidate):
            return candidate.resolve()
    raise FileNotFoundError(
        f"{root}: no LibriSpeech subsets found (expected {root}/<subset>/<speaker>/<chapter>/"
        f"*.trans.txt or {root}/LibriSpeech/<subset>/...)")


def find_subsets(root: Path) -> list[str]:
    """Names of the subset folders under ``root`` that hold at least one ``*.trans.txt``, sorted.

    Any folder name is accepted (not only :data:`SUBSETS`), so custom splits in the same layout work.
    """
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and next(d.glob("*/*/*.trans.txt"), None) is not None)


def librispeech_rows(subset_dir: Path) -> list[dict]:
    """Manifest rows for one subset folder, sorted by utterance id.

    Raises:
        ValueError: a transcript line names a flac that does not exist, or is malformed.
    """
    rows = []
    for trans in sorted(subset_dir.glob("*/*/*.trans.txt")):
        speaker = trans.parent.parent.name
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            audio = trans.parent / f"{utt}.flac"
            if not audio.is_file():
                raise ValueError(f"{trans}:{lineno}: utterance {utt!r} has no audio file {audio}")
            info = sf.info(str(audio))
            rows.append({
                "id": utt,
                "audio": str(audio.resolve()),
                "text": normalize_text(text),
                "speaker": speaker,
                "duration": round(info.frames / info.samplerate, 4),
                "start": None,
                "end": None,
            })
    rows.sort(key=lambda r: r["id"])
    return rows


def prepare_librispeech(root: str | Path, out_dir: str | Path,
                        subsets: list[str] | None = None) -> dict[str, Path]:
    """Write ``<out_dir>/<subset>.jsonl`` for each subset found (or each of ``subsets``).

    Returns:
        subset name -> manifest path.

    Raises:
        FileNotFoundError: no LibriSpeech layout under ``root``, or a requested subset is missing.
    """
    from asr.data.manifest import write_manifest  # asr.data imports torch: `asr prepare --help` stays fast

    root = find_librispeech_root(root)
    found = find_subsets(root)
    wanted = found if subsets is None else list(subsets)
    missing = [s for s in wanted if s not in found]
    if missing:
        raise FileNotFoundError(f"{root}: subset(s) {', '.join(missing)} not found; "
                                f"found: {', '.join(found)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for subset in wanted:
        rows = librispeech_rows(root / subset)
        path = out_dir / f"{subset}.jsonl"
        write_manifest(path, rows)
        hours = sum(r["duration"] for r in rows) / 3600
        print(f"librispeech {subset}: {len(rows)} utterances, {hours:.2f} h -> {path}")
        written[subset] = path
    return written


def network_available(host: str = _HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def download_librispeech(subsets: list[str], dest: str | Path) -> list[str]:
    """Download and unpack ``subsets`` into ``dest`` (giving ``dest/LibriSpeech/<subset>``).

    Subsets already unpacked are skipped. Without a network nothing is downloaded and a message says
    so; the caller goes on with what is on disk.

    Returns:
        The subsets present under ``dest/LibriSpeech`` afterwards.
    """
    dest = Path(dest)
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise ValueError(f"unknown LibriSpeech subset(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(SUBSETS)}")
    todo = [s for s in subsets if not (dest / "LibriSpeech" / s / ".complete").is_file()]
    if todo and not network_available():
        print(f"librispeech: no network ({_HOST} unreachable); not downloading {', '.join(todo)}",
              file=sys.stderr)
        todo = []
    dest.mkdir(parents=True, exist_ok=True)
    for subset in todo:
        archive = dest / f"{subset}.tar.gz"
        if not archive.is_file():
            url = _URL.format(subset=subset)
            print(f"librispeech: downloading {url}")
            partial = archive.with_suffix(".part")
            urllib.request.urlretrieve(url, partial)
            partial.rename(archive)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        (dest / "LibriSpeech" / subset / ".complete").touch()
        archive.unlink()
    return find_subsets(dest / "LibriSpeech")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options (``asr prepare librispeech`` and ``python -m recipes.librispeech``)."""
    parser.add_argument("--root", required=True,
                        help="the LibriSpeech folder, or the folder that holds it")
    parser.add_argument("--out", required=True, help="output folder for <subset>.jsonl")
    parser.add_argument("--subsets", nargs="+", default=None,
                        help="subsets to prepare (default: every subset found)")
    parser.add_argument("--download", nargs="+", default=None, metavar="SUBSET",
                        help=f"download these subsets into --root first ({', '.join(SUBSETS)})")


def run(args: argparse.Namespace) -> int:
    """Run with parsed options; returns the exit status (errors: one line on stderr)."""
    try:
        if args.download:
            root = Path(args.root)
            download_librispeech(args.download, root.parent if root.name == "LibriSpeech" else root)
        prepare_librispeech(args.root, args.out, args.subsets)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asr prepare librispeech", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
