"""A process's memory as the kernel reports it in ``/proc/<pid>/status``: the one reader that the
memory, soak, fuzz and long-stream benchmarks share."""

from __future__ import annotations

__all__ = ["status_mib", "vm_rss_mb"]


def status_mib(field: str = "VmRSS", pid: int | str = "self") -> float | None:
    """``field`` (``VmRSS``, ``VmHWM``, ...) of process ``pid`` in MiB; None once the process has
    exited or where the kernel does not report the field."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def vm_rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of process ``pid`` in MiB (None once it has exited)."""
    return status_mib("VmRSS", pid)
