"""Kaldi data directories -> JSONL manifest.

Reads ``wav.scp`` (``utt path``; relative paths resolve against the data dir, then its parent, the
corpus folder), ``text``, optional ``utt2spk`` and ``segments`` (``utt recording start end``). Every
audio file is opened (header and length check); a missing or corrupt file is reported with its
utterance id and counted, the run goes on, and the count is printed at the end.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from asr.audio import AudioError, audio_duration
from asr.data.manifest import write_manifest

__all__ = ["PrepareReport", "read_kaldi_dir", "kaldi_to_manifest", "resolve_audio_path"]


@dataclass
class PrepareReport:
    """What a preparation run produced; ``errors`` holds ``(utterance id, message)`` pairs."""

    rows: list[dict] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        hours = sum(r["duration"] for r in self.rows) / 3600
        return f"{len(self.rows)} utterances ({hours:.2f} h), {len(self.errors)} errors"


def _read_table(path: Path, ncols: int | None = None) -> dict[str, str]:
    table = {}
    with path.open() as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) < 2 and ncols != 1:
                parts.append("")
            key, value = parts[0], parts[1] if len(parts) > 1 else ""
            if key in table:
                raise ValueError(f"{path}:{n}: duplicate key '{key}'")
            table[key] = value
    return table


def resolve_audio_path(entry: str, data_dir: Path) -> Path:
    """Absolute path of a ``wav.scp`` entry; relative entries try the data dir, then its parent."""
    p = Path(entry)
    if p.is_absolute():
        return p
    for base in (data_dir, data_dir.parent, Path.cwd()):
        if (base / p).exists():
            return (base / p).resolve()
    return (data_dir.parent / p).resolve()


def _probe(item: tuple[str, Path]) -> tuple[str, float | None, str | None]:
    key, path = item
    try:
        return key, audio_duration(path), None
    except AudioError as e:
        return key, None, str(e)


def read_kaldi_dir(data_dir: str | Path, workers: int = 4, progress: bool = True) -> PrepareReport:
    """Read a Kaldi data dir into manifest rows, reporting every utterance it cannot use."""
    data_dir = Path(data_dir)
    for name in ("wav.scp", "text"):
        if not (data_dir / name).is_file():
            raise FileNotFoundError(f"{data_dir}: not a Kaldi data dir (no {name})")
    wav_scp = _read_table(data_dir / "wav.scp")
    texts = _read_table(data_dir / "text")
    utt2spk = _read_table(data_dir / "utt2spk") if (data_dir / "utt2spk").is_file() else {}
    segments = {}
    if (data_dir / "segments").is_file():
        for utt, value in _read_table(data_dir / "segments").items():
            reco, start, end = value.split()
            segments[utt] = (reco, float(start), float(end))

    report = PrepareReport()
    recordings, reco_errors = {}, {}
    for key, entry in wav_scp.items():
        if entry.rstrip().endswith("|"):
            reco_errors[key] = f"piped wav.scp commands are not supported: {entry!r}"
        else:
            recordings[key] = resolve_audio_path(entry, data_dir)
    with ThreadPoolExecutor(workers) as pool:
        probes = pool.map(_probe, recordings.items())
        durations = {}
        for key, dur, err in tqdm(probes, total=len(recordings), desc=f"probe {data_dir.name}",
                                  disable=not progress, unit="file"):
            if err is None:
                durations[key] = dur
            else:
                reco_errors[key] = err

    utts = set(segments) if segments else set(wav_scp)
    for utt in sorted(utts | set(texts)):
        reco, start, end = segments.get(utt, (utt, None, None))
        if utt not in texts:
            report.errors.append((utt, "no transcript in text"))
        elif reco in reco_errors:
            report.errors.append((utt, reco_errors[reco]))
        elif reco not in recordings:
            report.errors.append((utt, f"recording '{reco}' not in wav.scp"))
        else:
            dur = durations[reco] if start is None else min(end, durations[reco]) - start
            if dur <= 0:
                what = "0 s long" if start is None else f"empty segment {start}..{end}"
                report.errors.append((utt, f"{what}: {recordings[reco]}"))
                continue
            report.rows.append({
                "id": utt, "audio": str(recordings[reco]), "text": " ".join(texts[utt].split()),
                "speaker": utt2spk.get(utt, utt), "duration": round(dur, 4), "start": start, "end": end,
            })
    return report


def kaldi_to_manifest(data_dir: str | Path, out_path: str | Path, workers: int = 4,
                      progress: bool = True) -> PrepareReport:
    """Prepare ``data_dir`` into ``out_path`` (JSONL); errors go to stderr and are counted."""
    report = read_kaldi_dir(data_dir, workers=workers, progress=progress)
    for utt, message in report.errors:
        print(f"error: {utt}: {message}", file=sys.stderr)
    write_manifest(out_path, report.rows)
    return report
