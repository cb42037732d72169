"""Build the torch-free C++ core `symkern._C` (pybind11 + raw buffers).

Everything else (metadata, dependencies, entry points) lives in pyproject.toml.
Environment knobs:
  SYMKERN_OPENMP=0      build without OpenMP even when the compiler supports it.
  SYMKERN_NATIVE=1      add -march=native (fast local builds; the wheel is then not portable).
  SYMKERN_BUILD_JOBS=N  parallel compile jobs (default: all cores).
"""

import os
import sys
from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext, has_flag
from setuptools import setup

ParallelCompile("SYMKERN_BUILD_JOBS", default=0).install()


def _env_flag(name: str, default: bool) -> bool:
    """A yes/no build switch: 1/true/yes/on or 0/false/no/off (any case); anything else is an
    error (SYMKERN_OPENMP=off used to build with OpenMP: only "0" turned it off)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(
        f"the environment variable {name} must be 1/true/yes/on or 0/false/no/off, got {raw!r}"
    )


class SymkernBuildExt(build_ext):
    """Adds OpenMP only when the compiler accepts it, so the build never fails for lack of it."""

    def build_extensions(self) -> None:
        want_openmp = _env_flag("SYMKERN_OPENMP", default=True)
        native = _env_flag("SYMKERN_NATIVE", default=False)
        for ext in self.extensions:
            if sys.platform != "win32":
                # -fno-trapping-math: FP exceptions are never inspected, and without it GCC
                # will not if-convert a select whose arm computes (exp_d's NaN-keeping clamps)
                # unless it can mask the lanes — so the AVX2 copies of the float64 particle
                # loops stayed scalar (only AVX-512 has masks). Rounding is unchanged.
                ext.extra_compile_args += ["-O3", "-fno-math-errno", "-fno-trapping-math"]
                if native and has_flag(self.compiler, "-march=native"):
                    ext.extra_compile_args.append("-march=native")
            if want_openmp and sys.platform != "win32" and has_flag(self.compiler, "-fopenmp"):
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
                ext.define_macros.append(("SYMKERN_WITH_OPENMP", "1"))
        super().build_extensions()


ext_modules = [
    Pybind11Extension(
        "symkern._C",
        sorted(glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        depends=sorted(glob("csrc/*.h")),
        cxx_std=17,
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": SymkernBuildExt})
