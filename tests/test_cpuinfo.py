"""workbench.cpuinfo, the one home of CPU information: model name and flags parsed from
/proc/cpuinfo, a fallback where there is none, and no compiled extension needed for them."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from workbench import cache, cpuinfo

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Test CPU @ 2.00GHz
flags\t\t: fpu sse4_2 avx2 fma avx512f avx512_vnni ht

processor\t: 1
model name\t: some other line
flags\t\t: fpu
"""


@pytest.fixture
def fake_cpuinfo(tmp_path, monkeypatch):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    monkeypatch.setattr(cpuinfo, "CPUINFO", str(path))
    cpuinfo.cpu_flags.cache_clear()
    yield path
    cpuinfo.cpu_flags.cache_clear()


def test_model_and_flags_come_from_the_first_cpu(fake_cpuinfo):
    assert cpuinfo.cpu_model() == "Intel(R) Xeon(R) Test CPU @ 2.00GHz"
    assert cpuinfo.cpu_flags() == {"fpu", "sse4_2", "avx2", "fma", "avx512f", "avx512_vnni", "ht"}
    assert cpuinfo.kernel_flags() == ["avx2", "avx512_vnni", "avx512f", "fma", "sse4_2"]
    assert cache.provenance()["cpu"] == "Intel(R) Xeon(R) Test CPU @ 2.00GHz"
    assert cache.provenance()["cpu_flags"] == cpuinfo.kernel_flags()


def test_without_cpuinfo_platform_names_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(cpuinfo, "CPUINFO", str(tmp_path / "missing"))
    cpuinfo.cpu_flags.cache_clear()
    try:
        assert cpuinfo.cpu_model() == (platform.processor() or platform.machine())
        assert cpuinfo.cpu_flags() == frozenset() and cpuinfo.kernel_flags() == []
    finally:
        cpuinfo.cpu_flags.cache_clear()


def test_provenance_does_not_import_the_compiled_kernels():
    code = ("import sys, workbench.cache as c; c.provenance(); "
            "print(sorted(m for m in sys.modules if m in "
            "('workbench.kernels', 'workbench._linear', 'workbench._quant')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kernels_report_the_same_cpu():
    kernels = pytest.importorskip("workbench.kernels")
    assert kernels.cpu_model is cpuinfo.cpu_model and kernels.cpu_flags is cpuinfo.cpu_flags
    features = kernels.cpu_features()
    assert features["cpu"] == cpuinfo.cpu_model()
    assert features["avx2"] == ("avx2" in cpuinfo.cpu_flags())
