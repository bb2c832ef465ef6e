r"""ESPnet's streaming encoder and its blockwise synchronous beam search next to ours, same run.

    python benchmarks/peer_espnet.py [--utts 6] [--reps 5]

ESPnet is a benchmark-only peer: never a dependency of the project (pyproject.toml). Install it
into a venv of its own, outside the repository, that sees the project's venv (its torch 2.14.1,
numpy, sentencepiece: no second torch) through a .pth file and may not change any package there
(the constraints pin them all), and run this script with that venv's python:

    /work/main/.venv/bin/python -m venv /work/wt/espnet-venv
    echo /work/main/.venv/lib/python3.11/site-packages \
        > /work/wt/espnet-venv/lib/python3.11/site-packages/_blockasr_main_venv.pth
    /work/main/.venv/bin/pip freeze | grep -v '^-e\|@ file' > /work/wt/espnet-venv/main-constraints.txt
    /work/wt/espnet-venv/bin/pip install --no-deps espnet==202511
    /work/wt/espnet-venv/bin/pip install -c /work/wt/espnet-venv/main-constraints.txt typeguard einops \
        hydra-core opt_einsum humanfriendly torch_complex librosa h5py kaldiio g2p_en jamo espnet-tts-frontend
    PYTHONPATH=$PWD /work/wt/espnet-venv/bin/python benchmarks/peer_espnet.py

(pip then warns that espnet wants protobuf, pyworld, pypinyin<=0.44 and sentencepiece==0.2.0:
none of them is imported by the two modules used here; nltk's failed cmudict download at import
is harmless.)

1. Encoder, ms per 640 ms of audio, batch 1, random weights, 1 and 2 threads: ESPnet's
   ``ContextualBlockConformerEncoder`` (block 40 / hop 16 / look-ahead 16 frames: 640 ms of new
   output per call, each call re-encodes 40 frames) against our ``ConformerEncoder.step`` (block
   16 frames = 640 ms, 4 blocks of left context from the KV cache), float and block-int8, at the
   sizes of our ``models/default`` (9 x 256, 4 heads, FF 768, conv kernel 15) and ``small``
   (12 x 256, FF 1024) presets. Both get 64 feature frames (640 ms) per call; the variants run
   interleaved; on 1 thread the thread's CPU time is reported too (the host is shared).
2. BSBS, RTF and final latency: ESPnet ``Speech2TextStreaming`` (random weights, the default
   model's sizes plus a 2-layer transformer decoder, beam 10, CTC weight 0.3) against our
   ``Recognizer(decoder="bsbs")`` with the trained ``models/default`` and with random weights,
   fed the same utterances (speechocean762 dev) in 100 ms chunks.

Writes benchmarks/results/peer_espnet.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "corpora" / "speechocean762" / "dev"
if not DATA.is_dir():
    DATA = Path("/work/shared/corpora/speechocean762/dev")
SIZES = {"default": (9, 768), "small": (12, 1024)}  # layers, feed-forward units; d_model 256, 4 heads, kernel 15
CHUNK = 64  # feature frames per call = 640 ms


def _need_espnet() -> None:
    try:
        import espnet2.asr.encoder.contextual_block_conformer_encoder  # noqa: F401
        import espnet2.bin.asr_inference_streaming  # noqa: F401
    except ImportError as e:
        sys.exit(f"ESPnet is not installed ({e}). Install it for this benchmark only:\n"
                 + __doc__.split("never a dependency")[1].split("1. Encoder")[0])


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


# ------------------------------------------------------------------------------------- encoder
def _espnet_encoder(layers: int, units: int):
    from espnet2.asr.encoder.contextual_block_conformer_encoder import ContextualBlockConformerEncoder

    torch.manual_seed(0)
    return ContextualBlockConformerEncoder(
        input_size=80, output_size=256, attention_heads=4, linear_units=units, num_blocks=layers,
        macaron_style=True, use_cnn_module=True, cnn_module_kernel=15, block_size=40, hop_size=16,
        look_ahead=16).eval()


def _our_encoders(layers: int, units: int) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from encoder import _int8_copy

    from asr.encoder import ConformerEncoder, EncoderConfig

    torch.manual_seed(0)
    enc = ConformerEncoder(EncoderConfig(d_model=256, n_heads=4, n_layers=layers, ff_mult=units // 256,
                                         conv_kernel=15)).eval()
    return {"ours float": enc, "ours block-int8": _int8_copy(enc)}


def _time_espnet(enc, x: torch.Tensor) -> list[tuple[float, float]]:
    out, states = [], None
    with torch.inference_mode():
        for i in range(0, x.shape[1] - CHUNK + 1, CHUNK):
            chunk = x[:, i : i + CHUNK]
            w0, c0 = time.perf_counter(), time.thread_time()
            y, _, states = enc(chunk, torch.tensor([CHUNK]), prev_states=states, is_final=False, infer_mode=True)
            wall, cpu = (time.perf_counter() - w0) * 1000, (time.thread_time() - c0) * 1000
            if i >= CHUNK * 5 and y.shape[1]:
                out.append((wall * 16 / y.shape[1], cpu * 16 / y.shape[1]))  # per 640 ms of output
    return out


def _time_ours(enc, x: torch.Tensor) -> list[tuple[float, float]]:
    out = []
    with torch.inference_mode():
        state = enc.init_state(1, 16, 4)
        for i in range(0, x.shape[1] - CHUNK + 1, CHUNK):
            w0, c0 = time.perf_counter(), time.thread_time()
            y, state = enc.step(x[:, i : i + CHUNK], state)
            wall, cpu = (time.perf_counter() - w0) * 1000, (time.thread_time() - c0) * 1000
            if i >= CHUNK * 5 and y.shape[1]:
                out.append((wall * 16 / y.shape[1], cpu * 16 / y.shape[1]))
    return out


def bench_encoders(reps: int, threads_list: list[int], rows: list[dict], on_row, seconds: float = 12.0) -> list[dict]:
    x = torch.randn(1, int(seconds * 100), 80)
    for threads in threads_list:
        torch.set_num_threads(threads)
        for size, (layers, units) in SIZES.items():
            variants = {"espnet": (_espnet_encoder(layers, units), _time_espnet)}
            variants.update({k: (e, _time_ours) for k, e in _our_encoders(layers, units).items()})
            times: dict[str, list] = {k: [] for k in variants}
            for rep in range(reps + 1):
                for k, (enc, fn) in variants.items():
                    t = fn(enc, x)
                    if rep:
                        times[k] += t
            for k, t in times.items():
                wall, cpu = [a for a, _ in t], [b for _, b in t]
                rows.append({"size": size, "layers": layers, "ff_units": units, "threads": threads, "encoder": k,
                             "wall_ms_min": round(min(wall), 2), "wall_ms_median": round(_median(wall), 2),
                             "cpu_ms_min": round(min(cpu), 2) if threads == 1 else None})
                print(f"  encoder: {rows[-1]}", flush=True)
            on_row()
    return rows


# ---------------------------------------------------------------------------------------- bsbs
def _espnet_streaming(tmp: Path, vocab: int):
    import yaml
    from espnet2.bin.asr_inference_streaming import Speech2TextStreaming
    from espnet2.tasks.asr import ASRTask

    tokens = ["<blank>", "<unk>"] + [f"t{i}" for i in range(vocab - 3)] + ["<sos/eos>"]
    args = ASRTask.get_parser().parse_args(["--output_dir", str(tmp / "out"), "--token_list", "none"])
    layers, units = SIZES["default"]
    args.token_list, args.token_type, args.bpemodel, args.normalize, args.normalize_conf = tokens, "char", None, None, {}
    args.frontend, args.frontend_conf = "default", {"fs": 16000, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 80}
    args.encoder = "contextual_block_conformer"
    args.encoder_conf = {"output_size": 256, "attention_heads": 4, "linear_units": units, "num_blocks": layers,
                         "macaron_style": True, "use_cnn_module": True, "cnn_module_kernel": 15,
                         "block_size": 40, "hop_size": 16, "look_ahead": 16}
    args.decoder, args.decoder_conf = "transformer", {"attention_heads": 4, "linear_units": 768, "num_blocks": 2}
    args.model_conf = {"ctc_weight": 0.3}
    args.specaug = None
    torch.manual_seed(0)
    model = ASRTask.build_model(args)
    torch.save(model.state_dict(), tmp / "model.pth")
    conf = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}
    (tmp / "config.yaml").write_text(yaml.safe_dump(conf))
    return Speech2TextStreaming(asr_train_config=str(tmp / "config.yaml"), asr_model_file=str(tmp / "model.pth"),
                                beam_size=10, ctc_weight=0.3, lm_weight=0.0, nbest=1)


def _utterances(n: int) -> list[tuple[str, torch.Tensor]]:
    from asr.audio import load_audio

    rows = []
    for line in (DATA / "wav.scp").read_text().splitlines()[:n]:
        utt, path = line.split(maxsplit=1)
        p = Path(path) if Path(path).is_absolute() else DATA.parent / path
        rows.append((utt, load_audio(p)))
    return rows


def _run_stream(feed, finish, wave: torch.Tensor) -> tuple[float, float]:
    """(total compute s, final latency s) feeding 100 ms chunks."""
    total = 0.0
    for i in range(0, wave.shape[0], 1600):
        t0 = time.perf_counter()
        feed(wave[i : i + 1600])
        total += time.perf_counter() - t0
    t0 = time.perf_counter()
    finish()
    final = time.perf_counter() - t0
    return total + final, final


def bench_bsbs(n_utts: int, rows: list[dict], on_row, threads: int = 2) -> list[dict]:
    import dataclasses

    from asr.models.io import LoadedModel, default_model_dir, load_model_dir
    from asr.models.model import build_model
    from asr.inference import InferenceConfig
    from streaming import Recognizer

    torch.set_num_threads(threads)
    utts = _utterances(n_utts)
    audio_s = sum(w.shape[0] for _, w in utts) / 16000
    trained = load_model_dir(default_model_dir())
    torch.manual_seed(0)
    random_model = build_model(trained.config.model).eval()
    random = dataclasses.replace(trained, model=random_model) if dataclasses.is_dataclass(trained) else LoadedModel(
        random_model, trained.tokenizer, trained.features, trained.config, trained.path)
    cfg = InferenceConfig(decoder="bsbs", block_ms=640, beam=10, ctc_weight=0.3)
    with tempfile.TemporaryDirectory() as tmp:
        esp = _espnet_streaming(Path(tmp), trained.config.model.vocab_size)
        systems = {"espnet Speech2TextStreaming (random)": None, "ours bsbs (models/default)": trained,
                   "ours bsbs (random weights)": random}
        for name, loaded in systems.items():
            totals, finals = [], []
            for _, wave in utts:
                with torch.inference_mode():
                    if loaded is None:
                        esp.reset()
                        total, final = _run_stream(lambda c: esp(speech=c.numpy(), is_final=False),
                                                   lambda: esp(speech=torch.zeros(0).numpy(), is_final=True), wave)
                    else:
                        rec = Recognizer(loaded, cfg)
                        total, final = _run_stream(lambda c: rec.accept_waveform(c.numpy()), rec.finalize, wave)
                totals.append(total)
                finals.append(final)
            rows.append({"system": name, "threads": threads, "utts": len(utts), "audio_s": round(audio_s, 1),
                         "rtf": round(sum(totals) / audio_s, 3), "final_latency_ms_p50": round(_median(finals) * 1000),
                         "final_latency_ms_max": round(max(finals) * 1000)})
            print(f"  bsbs: {rows[-1]}", flush=True)
            on_row()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions of each encoder (+1 warm-up)")
    p.add_argument("--utts", type=int, default=6, help="speechocean762 dev utterances for the BSBS part")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts of the encoder part")
    p.add_argument("--skip-bsbs", action="store_true")
    args = p.parse_args()
    _need_espnet()
    load0 = os.getloadavg()[0]
    enc_rows: list[dict] = []
    bsbs_rows: list[dict] = []

    def write() -> None:  # after every finished group of rows, so a cut-short run keeps what it measured
        _write(load0, enc_rows, bsbs_rows)

    bench_encoders(args.reps, args.threads, enc_rows, write)
    if not args.skip_bsbs:
        bench_bsbs(args.utts, bsbs_rows, write)
    write()
    print((RESULTS / "peer_espnet.md").read_text())


def _write(load0: float, enc_rows: list[dict], bsbs_rows: list[dict]) -> None:
    import espnet

    load1 = os.getloadavg()[0]
    result = {"espnet": espnet.__version__, "torch": torch.__version__, "loadavg_1min": [load0, load1],
              "encoder": enc_rows, "bsbs": bsbs_rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peer_espnet.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# ESPnet {espnet.__version__} next to blockasr (same run, CPU, random weights unless noted)", "",
             f"Conditions: a shared {os.cpu_count()}-core host with other jobs running; host load average (1 min) at "
             f"start / end: {load0:.1f} / {load1:.1f}. Wall times include waiting for a core and are noisy; CPU = the "
             "thread's own CPU time (1 thread only), the steadier number. The ratios within this one run are what "
             "count. torch " + torch.__version__ + ". Issue 16's targets: ours >= 4.5x faster than ESPnet's "
             "encoder at the same sizes, and <= 10 ms per 640 ms block on 1 thread.", "",
             "## Encoder: ms per 640 ms of audio, batch 1", "",
             "ESPnet: ContextualBlockConformerEncoder, block 40 / hop 16 / look-ahead 16 (each call re-encodes 40",
             "frames for 16 new ones). Ours: ConformerEncoder.step, block 16, 4 blocks left context (KV cache).", "",
             "| size | threads | encoder | wall min | wall median | CPU min | ESPnet / ours (min) |", "|---|---|---|---|---|---|---|"]
    for r in enc_rows:
        esp = next(e for e in enc_rows if e["size"] == r["size"] and e["threads"] == r["threads"] and e["encoder"] == "espnet")
        key = "cpu_ms_min" if r["cpu_ms_min"] is not None else "wall_ms_min"
        ratio = "-" if r["encoder"] == "espnet" else f"{esp[key] / r[key]:.2f}x"
        lines.append(f"| {r['size']} ({r['layers']} x 256, FF {r['ff_units']}) | {r['threads']} | {r['encoder']} | "
                     f"{r['wall_ms_min']} | {r['wall_ms_median']} | {r['cpu_ms_min'] if r['cpu_ms_min'] is not None else '-'} | {ratio} |")
    if bsbs_rows:
        lines += ["", f"## Blockwise synchronous beam search, {bsbs_rows[0]['threads']} threads, beam 10, CTC weight 0.3,",
                  f"{bsbs_rows[0]['utts']} speechocean762 dev utterances ({bsbs_rows[0]['audio_s']} s), 100 ms chunks", "",
                  "Random weights decide how long each block's search runs (when `<eos>` or a repetition ends it),",
                  "so compare the random-weight rows with each other; the trained row is what users get.", "",
                  "| system | RTF | final latency p50 ms | max ms |", "|---|---|---|---|"]
        lines += [f"| {r['system']} | {r['rtf']} | {r['final_latency_ms_p50']} | {r['final_latency_ms_max']} |" for r in bsbs_rows]
    (RESULTS / "peer_espnet.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
