"""What CPU this is: its model name and feature flags, read from /proc/cpuinfo.

Plain file reading, no compiled extension: provenance (workbench.cache) names the CPU on an
install whose kernels did not build, and workbench.kernels reports the same values beside its
ISA dispatch.
"""

from __future__ import annotations

import platform
from functools import lru_cache

CPUINFO = "/proc/cpuinfo"          # Linux's description of each logical CPU

# The flags a record keeps (cache.provenance): the SIMD features that decide how fast the
# kernels and their peers (torch, llama.cpp) run.
KERNEL_FLAGS = frozenset({
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "amx_int8", "sse4_1", "sse4_2",
})


def _cpuinfo_field(key: str) -> str | None:
    """The value of the first "key : value" line of CPUINFO, or None (absent, not Linux)."""
    try:
        with open(CPUINFO) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1]
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name ("Intel(R) Xeon(R) ..."), else what platform knows of it."""
    name = _cpuinfo_field("model name")
    return name.strip() if name is not None else platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Every feature flag of the CPU ("avx2", "avx512_vnni", ...); empty when unknown."""
    flags = _cpuinfo_field("flags")
    return frozenset(flags.split()) if flags is not None else frozenset()


def kernel_flags() -> list[str]:
    """The CPU's flags among KERNEL_FLAGS, sorted."""
    return sorted(KERNEL_FLAGS & cpu_flags())
