"""Helpers every benchmark here uses: statistics, RSS, CPU time, and waiting for an idle machine.

Benchmarks are scripts run by hand (`.venv/bin/python benchmarks/X.py`), so this is imported as
a sibling module (the script's own directory is on sys.path), not as part of netplane.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summary(values: list[float]) -> dict:
    """Median and spread of the runs, with the runs themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def rss_mb(pids: Iterable[int]) -> float:
    """Summed VmRSS of the processes (gone ones count 0), in MB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all CPUs, since boot (/proc/stat). Busy is
    user + nice + system + irq + softirq + steal."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / tick, sum(f) / tick


def cpu_busy(interval: float = 0.5) -> float:
    """Fraction of all CPUs busy over `interval` seconds."""
    b0, t0 = machine_cpu_seconds()
    time.sleep(interval)
    b1, t1 = machine_cpu_seconds()
    return (b1 - b0) / max(1e-9, t1 - t0)


def process_cpu_seconds(pids: Iterable[int], *, waited_children: bool = False) -> float:
    """utime + stime of the processes, all their threads (/proc/PID/stat; gone ones count 0);
    with `waited_children`, plus the CPU of children they have waited for (cutime + cstime)."""
    last = 15 if waited_children else 13
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:last])  # stat fields 14-15 (and 16-17)
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for descendants (getrusage RUSAGE_CHILDREN)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Quiet:
    """Others may share this 2-CPU machine: before each measurement, wait until the CPUs are
    mostly idle, within an overall budget; what was seen is recorded in `log` (plus whatever
    `context()` adds, e.g. other sandboxes seen)."""

    def __init__(self, budget_s: float, threshold: float = 0.2,
                 context: Callable[[], dict] | None = None) -> None:
        self.left, self.threshold = budget_s, threshold
        self.context = context
        self.log: list[dict] = []

    def wait(self, what: str) -> float:
        t0 = time.monotonic()
        busy = cpu_busy()
        while busy > self.threshold and self.left - (time.monotonic() - t0) > 0:
            busy = cpu_busy(1.0)
        waited = time.monotonic() - t0
        self.left -= waited
        extra = self.context() if self.context else {}
        self.log.append({"before": what, "cpu_busy": round(busy, 3), "waited_s": round(waited, 1), **extra})
        if busy > self.threshold:
            print(f"  (machine busy: {busy:.0%} CPU before {what}; {extra})", flush=True)
        return busy
