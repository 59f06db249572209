"""Helpers shared by the bench files: quick mode, peak resident memory, CPU time, machine facts, JSON output."""

import ctypes
import ctypes.util
import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

QUICK_ENV = "UDON_BENCH_QUICK"


def quick() -> bool:
    """True when `UDON_BENCH_QUICK=1`: smaller shapes and fewer rounds (the quick suite)."""
    return os.environ.get(QUICK_ENV) == "1"


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (e.g. VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_free_heap() -> None:
    """Return malloc's free pages to the OS (glibc `malloc_trim(0)`; no-op elsewhere), so that memory
    freed by earlier steps is not reused unseen by the next measurement."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def peak_rss_extra_bytes(fn: Callable[[], object]) -> int | None:
    """Bytes of peak resident memory above the resident memory before `fn()` ran, or None where the
    peak mark cannot be reset (`/proc/self/clear_refs` <- 5 needs Linux >= 4.0 and permission).

    Free heap pages are returned to the OS first, so RSS follows the live memory of `fn`; run `fn`
    once beforehand so that lazy initialisation is not counted."""
    _release_free_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    before = status_kib("VmRSS")
    fn()
    return (status_kib("VmHWM") - before) * 1024


def cpu_seconds_with_children() -> float:
    """CPU seconds (user + system) used so far by this process and its live child processes (e.g.
    DataLoader workers), read from /proc; this process alone where /proc is missing."""
    total = time.process_time()
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return total
    tick, me = os.sysconf("SC_CLK_TCK"), os.getpid()
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == me:  # ppid, then utime and stime in clock ticks
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() where that is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict:
    """CPU model, logical cores usable by this process, torch version, UTC date (ISO 8601)."""
    return {
        "cpu_model": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def emit_json(doc: dict, out: Path | None) -> None:
    """Print `doc` as indented JSON and, when `out` is given, write it there too."""
    text = json.dumps(doc, indent=2)
    print(text)
    if out:
        out.write_text(text)
