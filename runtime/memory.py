"""How much memory this process has used, for benchmarks (stdlib only, so it adds nothing to a
process whose memory it measures)."""
from __future__ import annotations

import sys


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB. VmHWM belongs to the process image, so unlike
    ru_maxrss it does not carry over a parent's peak through fork + exec; ru_maxrss is the fallback
    where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    kib = 1024.0 if sys.platform == "darwin" else 1.0  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 * kib)
