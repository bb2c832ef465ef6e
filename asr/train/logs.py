"""Training logs: CSV files a person can open anywhere, and a loss/WER plot as PNG."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["CsvLog", "plot_curves"]


class CsvLog:
    """Appends rows to a CSV file; the header grows when new columns appear (file rewritten)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open() as f:
            return list(csv.DictReader(f))

    def append(self, row: dict) -> None:
        rows = self.rows()
        fields = list(rows[0].keys()) if rows else []
        fields += [k for k in row if k not in fields]
        rows.append({k: _fmt(v) for k, v in row.items()})
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run repeats them)."""
        rows = [r for r in self.rows() if int(float(r["step"])) <= step]
        if not self.path.is_file():
            return
        if not rows:
            self.path.unlink()
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def plot_curves(train_csv: Path, valid_csv: Path, out_png: Path) -> None:
    """Training/validation loss and validation WER against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, valid = CsvLog(train_csv).rows(), CsvLog(valid_csv).rows()
    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot([float(r["step"]) for r in train], [float(r["loss"]) for r in train], label="train")
    if valid:
        steps = [float(r["step"]) for r in valid]
        ax_loss.plot(steps, [float(r["loss"]) for r in valid], "o-", label="valid")
        for key in [k for k in valid[0] if k.startswith("wer")]:
            ax_wer.plot(steps, [float(r[key]) for r in valid if r.get(key)], "o-", label=key)
        ax_wer.legend()
    ax_loss.set(xlabel="step", ylabel="loss per utterance", yscale="log", title="loss")
    ax_loss.legend()
    ax_wer.set(xlabel="step", ylabel="WER %", title="greedy CTC WER (valid)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
