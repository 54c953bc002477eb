"""Which precision a training run uses: the recipe's or ``--precision``'s, and for ``auto`` the machine's.

bf16 autocast pays only where the hardware computes in bf16: on a CPU without ``avx512_bf16`` or
``amx_bf16`` (an AVX2-only AMD Zen 3, say) oneDNN emulates it and a SimCLR small step ran 8x
slower than in fp32. So ``auto`` is bf16 on CPUs with those instructions, fp32 on other CPUs, bf16
on CUDA devices that support it and fp16 with a gradient scaler on older ones. The decision is a
pure function of what was asked and what the machine has (``resolve_precision``), so that it can be
tested for machines we do not have; ``machine_precision`` feeds it this machine's facts.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

# x86 flags (as /proc/cpuinfo spells them) of instructions that compute in bf16.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The instruction-set flags of this machine's first CPU (empty where /proc/cpuinfo is missing)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM spelling
            return frozenset(value.split())
    return frozenset()


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name, as lscpu prints it, for a run's config and benchmark reports."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_precision(requested: str, device_type: str, flags: frozenset[str] = frozenset(),
                      cuda_bf16: bool = False) -> tuple[str, str]:
    """(precision, why) for a run that asked for ``requested`` (auto, fp32, bf16, fp16) on a
    ``device_type`` ("cpu" or "cuda") whose CPU has ``flags`` / whose CUDA device supports bf16."""
    if requested != "auto":
        if requested == "bf16" and device_type == "cpu" and not flags & set(NATIVE_BF16_CPU_FLAGS):
            return requested, "fixed by the recipe or --precision; this CPU has no native bf16 (no avx512_bf16 or amx_bf16): emulated, slow"
        return requested, "fixed by the recipe or --precision"
    if device_type == "cuda":
        if cuda_bf16:
            return "bf16", "auto: the CUDA device computes in bf16"
        return "fp16", "auto: the CUDA device has no bf16: fp16 with a gradient scaler"
    native = sorted(flags & set(NATIVE_BF16_CPU_FLAGS))
    if device_type == "cpu" and native:
        return "bf16", f"auto: the CPU has {' and '.join(native)}"
    if device_type == "cpu":
        return "fp32", "auto: the CPU has no avx512_bf16 or amx_bf16 (bf16 would be emulated)"
    return "fp32", f"auto: fp32 on a {device_type} device"


def machine_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """``resolve_precision`` with this machine's CPU flags and CUDA device."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return resolve_precision(requested, device.type, cpu_flags() if device.type == "cpu" else frozenset(), cuda_bf16)
