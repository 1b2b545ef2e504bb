"""The peak resident memory of this process, on every platform that reports it.

Standard library only: `pipelines/rechub_worker.py`, which runs in torch-rechub's own
interpreter without vidrec, imports this file from beside itself.
"""

from __future__ import annotations

import sys

try:
    import resource  # POSIX only
except ImportError:  # Windows: no getrusage
    resource = None  # type: ignore[assignment]

__all__ = ["maxrss_mb", "peak_rss_mb"]


def maxrss_mb(maxrss: int, platform: str = sys.platform) -> float:
    """Return getrusage's `ru_maxrss` in MiB: macOS reports bytes, Linux and the BSDs KiB."""
    return maxrss / 2**20 if platform == "darwin" else maxrss / 1024.0


def peak_rss_mb() -> float | None:
    """Return the peak resident set of this process so far in MiB, None where the platform does
    not report it (no `resource` module)."""
    if resource is None:
        return None
    return maxrss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
