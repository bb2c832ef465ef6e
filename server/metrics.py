"""Prometheus text-format metrics, without a client library (gauges, counters, histograms).

All updates happen on the event loop thread, so plain integers and floats suffice.
"""

from __future__ import annotations

import bisect
import os
import resource
from collections import Counter

__all__ = ["Histogram", "Metrics", "LATENCY_BUCKETS_S", "RTF_BUCKETS", "resident_bytes"]

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RTF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def resident_bytes() -> int:
    """The process's resident set size now (Linux /proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Histogram:
    """Cumulative-bucket histogram; `quantile` estimates from bucket upper bounds."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # last slot: +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.sum:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


class Metrics:
    """The server's counters. `render()` returns the `/metrics` body."""

    def __init__(self) -> None:
        self.sessions = 0  # gauge: started streams (each holds a session slot)
        self.waiting = 0  # gauge: connections that have not started a stream
        self.sessions_total = 0
        self.audio_seconds = 0.0
        self.partial_latency = Histogram()
        self.final_latency = Histogram()
        self.pass_seconds = Histogram()
        self.pass_rtf = Histogram(RTF_BUCKETS)
        self.pass_streams = 0
        self.errors: Counter[str] = Counter()
        self.by_protocol: Counter[str] = Counter()

    def session_opened(self, protocol: str = "native") -> None:
        self.sessions += 1
        self.sessions_total += 1
        self.by_protocol[protocol] += 1

    def model_pass(self, wall_s: float, audio_s: float, streams: int) -> None:
        """One scheduler pass: its wall time, the audio it processed (all streams), its batch."""
        self.pass_seconds.observe(wall_s)
        self.pass_streams += streams
        if audio_s > 0:
            self.pass_rtf.observe(wall_s / audio_s)

    def session_closed(self) -> None:
        self.sessions -= 1

    def add_audio(self, num_samples: int, sample_rate: int) -> None:
        self.audio_seconds += num_samples / sample_rate

    def error(self, code: str) -> None:
        self.errors[code] += 1

    def render(self) -> str:
        lines = [
            "# HELP asr_sessions Started streaming sessions (each holds a session slot).",
            "# TYPE asr_sessions gauge",
            f"asr_sessions {self.sessions}",
            "# HELP asr_connections_waiting Connections that have not started a stream yet.",
            "# TYPE asr_connections_waiting gauge",
            f"asr_connections_waiting {self.waiting}",
            "# HELP asr_sessions_total Streaming sessions opened since start.",
            "# TYPE asr_sessions_total counter",
            f"asr_sessions_total {self.sessions_total}",
            "# HELP asr_audio_seconds_total Seconds of audio received.",
            "# TYPE asr_audio_seconds_total counter",
            f"asr_audio_seconds_total {self.audio_seconds:.3f}",
            *self.partial_latency.render(
                "asr_partial_latency_seconds",
                "Time from receiving audio to sending the result that includes it.",
            ),
            *self.final_latency.render(
                "asr_final_latency_seconds",
                "Time from the end of a stream (client's end or eof) to its last final result.",
            ),
            *self.pass_seconds.render("asr_model_pass_seconds", "Wall time of one model pass (all streams batched in it)."),
            *self.pass_rtf.render(
                "asr_model_pass_rtf", "Real-time factor of one model pass: its wall time over the audio it processed."
            ),
            "# HELP asr_model_pass_streams_total Streams processed, summed over model passes (over "
            "asr_model_pass_seconds_count: the mean batch).",
            "# TYPE asr_model_pass_streams_total counter",
            f"asr_model_pass_streams_total {self.pass_streams}",
            "# HELP asr_sessions_by_protocol_total Streaming sessions opened since start, by protocol.",
            "# TYPE asr_sessions_by_protocol_total counter",
        ]
        lines += [f'asr_sessions_by_protocol_total{{protocol="{p}"}} {n}' for p, n in sorted(self.by_protocol.items())]
        lines += [
            "# HELP process_resident_memory_bytes Resident memory of the server process.",
            "# TYPE process_resident_memory_bytes gauge",
            f"process_resident_memory_bytes {resident_bytes()}",
            "# HELP asr_errors_total Errors sent to clients, by code.",
            "# TYPE asr_errors_total counter",
        ]
        lines += [f'asr_errors_total{{code="{code}"}} {n}' for code, n in sorted(self.errors.items())]
        return "\n".join(lines) + "\n"
