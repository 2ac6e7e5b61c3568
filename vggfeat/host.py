"""What the host offers, as Linux says, without torch: the CPU's feature flags and the memory
still available (the SVM commands size their work by it)."""

from __future__ import annotations

from pathlib import Path


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags as Linux lists them; None where there is no such list."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def available_memory(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> int | None:
    """Bytes of memory this process can still take without swapping, as Linux estimates it
    (MemAvailable), and within its container's limit (cgroup v2); None where neither is known."""
    limits = []
    try:
        with open(meminfo, encoding="utf-8") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:  # a container's limit, which MemAvailable (the host's) does not know of
        limit = (Path(cgroup) / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((Path(cgroup) / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(limits)) if limits else None
