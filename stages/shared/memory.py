"""Memory sizes as people write them (`1GB`, `512MB`, `1.5GiB`) and what this machine has free."""

from __future__ import annotations

import os
import re

from expclip.base.errors import ExpclipError

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str, option: str) -> int:
    """Bytes of `text` (a number with an optional unit: B, KB, MB, GB, TB or KiB .. TiB); refuses anything else."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = found.group(2).upper() if found else None
    size = int(float(found.group(1)) * UNITS[unit]) if found and unit in UNITS else 0
    if size < 1:  # also a size that rounds to no byte at all
        raise ExpclipError(f"{option} {text!r}: write a size such as 1GB, 512MB or 2GiB")
    return size


def available_bytes() -> int:
    """Memory the system can give without swapping (Linux: MemAvailable; elsewhere: free pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
