"""Build of fairseq_kaleidoscope and its compiled operators (fairseq_kaleidoscope._C)."""

import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def extensions() -> list:
    sources = sorted(
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*.cpp"), recursive=True)
    )
    # No -march=native: the binary must run on any x86-64 machine; SIMD code paths are
    # compiled per target in their own files and chosen at run time.
    cxx = ["-O3"]  # the C++ standard is chosen by torch.utils.cpp_extension (C++20 for torch 2.13)
    if os.environ.get("KALEIDOSCOPE_DEBUG") == "1":
        cxx = ["-O0", "-g"]
    return [
        CppExtension(
            "fairseq_kaleidoscope._C",
            sources,
            extra_compile_args={"cxx": [*cxx, "-fopenmp"]},
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="fairseq-kaleidoscope",
    version="0.1.0",
    description="Kaleidoscope (K-matrix) linear layers and fairseq architectures with fast CPU kernels",
    packages=find_packages(include=["fairseq_kaleidoscope", "fairseq_kaleidoscope.*"]),
    python_requires=">=3.10",
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["kaleidoscope-demo=fairseq_kaleidoscope.demo:main"]},
)
