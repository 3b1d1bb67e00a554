"""Builds zcstore._core from the store's C++ sources (see pyproject.toml).

The version is read from CMakeLists.txt, where it lives. CMake builds the
same module for `make test` and `cmake --install` (python/CMakeLists.txt);
this file is for pip.
"""
import glob
import os
import re

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "CMakeLists.txt")) as f:
    version = re.search(r"project\(zcstore VERSION ([0-9.]+)", f.read()).group(1)

ParallelCompile("ZCSTORE_BUILD_JOBS").install()

sources = ["python/src/core.cc", "serializer/copy.cc"] + sorted(glob.glob("store/*.cc"))
core = Pybind11Extension(
    "zcstore._core", sources, cxx_std=20, include_dirs=["include", "."],
    define_macros=[("ZCSTORE_PY_VERSION", f'"{version}"')],
    extra_compile_args=["-O2", "-fvisibility=hidden"], extra_link_args=["-pthread"])

setup(
    version=version,
    packages=["zcstore"],
    package_dir={"": "python"},
    ext_modules=[core],
    cmdclass={"build_ext": build_ext},
    # Not build/: that is CMake's.
    options={"build": {"build_base": "build-pip"}, "egg_info": {"egg_base": "build-pip"}},
    zip_safe=False,
)
