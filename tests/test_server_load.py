"""benchmarks/server_load.py end to end on the synthetic recognizer: clients in separate
processes, every stream completes, the JSON and the table are written (no timing asserts)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import server_load  # noqa: E402


def test_clients_in_processes_report_every_stream(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    args = ["--synthetic-rtf", "0.01", "--synthetic-batch", "--seconds", "1.5", "--streams", "1,3",
            "--client-procs", "2", "--max-latency", "1000", "--out", str(out)]
    assert server_load.main(args) == 0
    report = json.loads(out.read_text())
    assert report["client_procs"] == 2 and [r["streams"] for r in report["levels"]] == [1, 3]
    for row in report["levels"]:
        assert row["completed"] == row["streams"] and row["errors"] == [] and row["realtime"]
        assert row["latency_p50_s"] is not None and row["final_lag_max_s"] is not None
    assert report["scheduler"]["max_batch_seen"] >= 1
    assert "| 3 |" in out.with_suffix(".md").read_text()


def test_summarize_counts_failed_streams() -> None:
    ok = {"latencies_s": [0.1, 0.2], "final_lag_s": 0.3}
    row = server_load.summarize(2, [ok, {"error": "ClientError('boom')"}], max_latency=1.0)
    assert row["completed"] == 1 and row["errors"] == ["ClientError('boom')"] and not row["realtime"]
    row = server_load.summarize(1, [ok], max_latency=1.0)
    assert row["realtime"] and row["latency_max_s"] == 0.2


def test_load_through_worker_processes(tmp_path: Path) -> None:
    """--workers 2: the server in front processes and a model process; every stream completes and
    the server CPU is that of the worker processes."""
    out = tmp_path / "load.json"
    args = ["--synthetic-rtf", "0.01", "--synthetic-batch", "--seconds", "1.5", "--streams", "3",
            "--client-procs", "1", "--max-latency", "1000", "--workers", "2", "--out", str(out)]
    assert server_load.main(args) == 0
    report = json.loads(out.read_text())
    (row,) = report["levels"]
    assert report["workers"] == 2 and row["completed"] == 3 and row["errors"] == [] and row["server_cpu_s"] > 0
