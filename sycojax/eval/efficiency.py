"""What a run cost this process: the high-water mark of its resident memory (`peak_rss_mb`).

The kernel's high-water mark (`VmHWM` from `/proc/self/status`, or `ru_maxrss` where /proc is missing)
covers the whole process so far: imports, model load, compilation and the work. A consolidation run
reports it (`report.json`: `peak_rss_mb`); each benchmark job reports it from its own fresh process
(`sycojax.bench.hardware`, which re-exports it).
"""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, kB on Linux
