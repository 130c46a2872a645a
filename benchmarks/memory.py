"""Peak-memory measurement shared by the benchmarks (Linux /proc)."""

from __future__ import annotations


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM, ...)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Reset the kernel's high-water mark VmHWM to the current RSS."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
