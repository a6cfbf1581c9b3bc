"""GPU discovery: what ``nvidia-smi`` says a host has, as plain device records.

The config turns them into its ``GpuDevice`` sections; nothing here knows the config.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

VENDOR_WORDS = {"nvidia", "tesla", "geforce", "quadro", "amd", "radeon", "instinct"}
NVIDIA_SMI_QUERY = ["--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]


def gpu_type_of(name: str) -> str:
    """A short GPU type from a device name: vendor words dropped, words up to the first with
    a digit joined (``NVIDIA A100-SXM4-40GB`` -> ``a100``, ``GeForce RTX 3090`` -> ``rtx3090``)."""
    words = [w for w in re.split(r"[\s\-_]+", name.lower()) if w and w not in VENDOR_WORDS]
    out = []
    for w in words:
        out.append(re.sub(r"[^a-z0-9.]", "", w))
        if any(c.isdigit() for c in w):
            break
    return "".join(out)[:64]


def parse_nvidia_smi(csv_text: str) -> list[dict[str, Any]]:
    """Devices (index, type, memory_mb) from ``nvidia-smi --query-gpu=index,name,memory.total
    --format=csv,noheader,nounits``. Lines that do not parse (a header, a warning) are skipped; memory is MiB.
    """
    out = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        memory = parts[2].split()[0] if parts[2] else "0"
        out.append({"index": int(parts[0]), "type": gpu_type_of(parts[1]),
                    "memory_mb": int(memory) if memory.isdigit() else 0})
    return out


def nvidia_smi_devices() -> list[dict[str, Any]] | None:
    """This host's GPUs from its ``nvidia-smi``; None where there is none or it fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else None
