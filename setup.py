"""Builds zcstore._core from the store's C++ sources (see pyproject.toml).

The version is read from CMakeLists.txt, where it lives. CMake builds the
same module for `make test` and `cmake --install` (python/CMakeLists.txt);
this file is for pip.
"""
import glob
import os
import re
import subprocess

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "CMakeLists.txt")) as f:
    version = re.search(r"project\(zcstore VERSION ([0-9.]+)", f.read()).group(1)

ParallelCompile("ZCSTORE_BUILD_JOBS").install()

# The envelope's C++ header is generated from its schema, as CMake does.
generated = os.path.join("build-pip", "generated")
os.makedirs(generated, exist_ok=True)
subprocess.run(["flatc", "--cpp", "-o", generated, "serializer/schema/envelope.fbs"], check=True)
# And zcstore/version.h from its template.
major, minor, patch = version.split(".")
with open(os.path.join(here, "cmake", "version.h.in")) as f:
    header = f.read()
for key, value in {"PROJECT_VERSION_MAJOR": major, "PROJECT_VERSION_MINOR": minor,
                   "PROJECT_VERSION_PATCH": patch, "PROJECT_VERSION": version}.items():
    header = header.replace(f"@{key}@", value)
os.makedirs(os.path.join(generated, "zcstore"), exist_ok=True)
with open(os.path.join(generated, "zcstore", "version.h"), "w") as f:
    f.write(header)

sources = (["python/src/core.cc", "python/src/pool.cc", "python/src/views.cc", "serializer/copy.cc",
            "serializer/envelope.cc"]
           + sorted(glob.glob("store/*.cc")) + sorted(glob.glob("pool/*.cc")))
core = Pybind11Extension(
    "zcstore._core", sources, cxx_std=20, include_dirs=["include", ".", generated],
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
