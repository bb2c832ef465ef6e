"""Room impulse responses for reverberation augmentation (``data.augment.rirs``), simulated with
pyroomacoustics (image source method): shoebox rooms of random size and RT60, a source and a
microphone at random positions, 16 kHz, cut to ``--seconds`` and saved as one (R, L) float16 array.

    python egs/default/local/make_rirs.py --out .carry/p1/rirs.npy --num 400

pyroomacoustics is needed only here (``pip install pyroomacoustics``), not at training time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def simulate(rng: np.random.Generator, seconds: float, rate: int = 16000) -> np.ndarray:
    import pyroomacoustics as pra

    dims = np.array([rng.uniform(3, 12), rng.uniform(3, 10), rng.uniform(2.4, 4.5)])
    rt60 = rng.uniform(0.15, 0.9)
    try:
        absorption, max_order = pra.inverse_sabine(rt60, dims)
    except ValueError:  # RT60 too short for this room: the most absorbent walls
        absorption, max_order = 0.99, 3
    room = pra.ShoeBox(dims, fs=rate, materials=pra.Material(absorption), max_order=min(max_order, 25))
    margin = 0.5
    src = rng.uniform(margin, dims - margin)
    mic = rng.uniform(margin, dims - margin)
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    n = int(seconds * rate)
    out = np.zeros(n)
    out[: min(n, len(rir))] = rir[:n]
    return out / np.abs(out).max()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output .npy")
    p.add_argument("--num", type=int, default=400)
    p.add_argument("--seconds", type=float, default=0.5, help="length of each response")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    try:
        import pyroomacoustics  # noqa: F401
    except ImportError:
        print("make_rirs: needs pyroomacoustics (pip install pyroomacoustics)", file=sys.stderr)
        return 1
    rng = np.random.default_rng(args.seed)
    bank = np.stack([simulate(rng, args.seconds) for _ in range(args.num)]).astype(np.float16)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, bank)
    print(f"make_rirs: {bank.shape[0]} responses of {bank.shape[1]} samples -> {args.out} "
          f"({bank.nbytes / 1e6:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
