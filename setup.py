"""Build the Cython kernels in kernels_cy/ as extension modules of the workbench package.

OpenMP flags are chosen per compiler; set WORKBENCH_NO_OPENMP=1 to build without OpenMP
(the kernels then run single-threaded whatever n_threads says). No -march=native: code
for a specific instruction set is selected at run time, so one build runs on any x86-64.
Set WORKBENCH_DEBUG_FLAGS (e.g. "-fsanitize=address -g") to add compile and link flags.
"""

import glob
import os
import shlex
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _openmp_flags(compiler_type: str, compiler_cmd: str) -> tuple[list[str], list[str]]:
    """(compile_args, link_args) that enable OpenMP for this compiler."""
    if compiler_type == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin" and "clang" in compiler_cmd:
        # Apple clang has no -fopenmp driver flag; needs libomp (brew install libomp).
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


class BuildExt(build_ext):
    """Adds per-compiler optimisation and OpenMP flags, and prints what it chose."""

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        cmd = " ".join(getattr(self.compiler, "compiler_so", None) or [ctype])
        use_omp = os.environ.get("WORKBENCH_NO_OPENMP", "0") not in ("1", "true", "yes")
        # -ffp-contract=off: no multiply-add is fused behind the code's back, so the float rescale
        # and the engine's elementwise math round exactly as the NumPy and torch references do
        opt = (["/O2", "/fp:precise"] if ctype == "msvc" else
               ["-O3", "-fno-math-errno", "-ffp-contract=off", "-Wno-unused-function"])
        omp_c, omp_l = _openmp_flags(ctype, cmd) if use_omp else ([], [])
        extra = shlex.split(os.environ.get("WORKBENCH_DEBUG_FLAGS", ""))
        for ext in self.extensions:
            ext.extra_compile_args = opt + omp_c + extra + list(ext.extra_compile_args or [])
            ext.extra_link_args = omp_l + extra + list(ext.extra_link_args or [])
            ext.define_macros = list(ext.define_macros or []) + [
                ("WORKBENCH_OPENMP", "1" if use_omp else "0")
            ]
        print(
            f"workbench build: compiler={ctype} openmp={'on' if use_omp else 'off'} "
            f"flags={' '.join(opt + omp_c + extra)} python={sysconfig.get_python_version()}"
        )
        super().build_extensions()


def _extensions():
    from Cython.Build import cythonize

    # every header is a dependency of both modules: an edited header recompiles them
    headers = sorted(glob.glob("kernels_cy/*.h"))
    exts = [
        Extension("workbench._quant", ["kernels_cy/_quant.pyx"], include_dirs=["kernels_cy"],
                  depends=headers),
        Extension("workbench._linear", ["kernels_cy/_linear.pyx"], include_dirs=["kernels_cy"],
                  depends=headers),
    ]
    return cythonize(
        exts,
        language_level=3,
        include_path=["kernels_cy"],
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                             "initializedcheck": False},
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
