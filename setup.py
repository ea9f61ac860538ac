"""Build of fairseq_kaleidoscope and its compiled operators (fairseq_kaleidoscope._C)."""

import glob
import os
import sys

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")


def cuda_build() -> dict | None:
    """Sources and nvcc flags of the CUDA kernels (csrc/cuda) if this build includes them, else None.

    KALEIDOSCOPE_CUDA=1 forces the CUDA build and KALEIDOSCOPE_CUDA=0 disables it; unset, it is
    built when torch sees a GPU and a CUDA toolkit is found (CUDA_HOME).

    Build with the C++ compiler whose libstdc++ the process loads (usually the system g++,
    e.g. ``CXX=/usr/bin/g++``). Seen on a GPU image whose default was CXX=/opt/gcc/bin/g++:
    the extension built and its kernels ran, but formatting an integer into an error message
    (any failed argument check) crashed the interpreter; with CXX=/usr/bin/g++ all tests passed.
    """
    flag = os.environ.get("KALEIDOSCOPE_CUDA", "")
    if flag == "0":
        return None
    import torch

    if flag == "1":
        if torch.version.cuda is None or CUDA_HOME is None:
            raise RuntimeError(
                "KALEIDOSCOPE_CUDA=1 needs a CUDA build of torch and a CUDA toolkit (set CUDA_HOME); "
                f"found torch {torch.__version__}, CUDA_HOME={CUDA_HOME}"
            )
    elif not (torch.cuda.is_available() and CUDA_HOME is not None):
        if torch.version.cuda is not None:  # a CUDA torch, but no CUDA kernels: say so loudly
            why = "no CUDA toolkit found (set CUDA_HOME)" if CUDA_HOME is None else "torch sees no GPU"
            bar = "!" * 78
            print(
                f"\n{bar}\nfairseq-kaleidoscope: building WITHOUT the CUDA kernels ({why}), although torch "
                f"{torch.__version__} has CUDA.\nK-matrix layers on CUDA tensors will run the plain-PyTorch "
                "reference (20-50x slower).\nBuild them with KALEIDOSCOPE_CUDA=1 (needs nvcc); silence this "
                f"with KALEIDOSCOPE_CUDA=0.\n{bar}\n",
                file=sys.stderr,
            )
        return None
    sources = sorted(
        os.path.relpath(p, ROOT) for ext in ("*.cu", "*.cpp") for p in glob.glob(os.path.join(CUDA_DIR, ext))
    )
    # C++ standard: torch's choice, as for the C++ sources (the .cu files need C++17).
    return {"sources": sources, "nvcc": ["-O3", "-lineinfo"]}


def extensions() -> list:
    if os.environ.get("KALEIDOSCOPE_SKIP_EXT") == "1":
        # scripts/setup.sh builds the extension in place (incrementally, with ninja) and then
        # installs the package in editable mode; the editable install must not build it again.
        return []
    sources = sorted(
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*.cpp"), recursive=True)
        if not p.startswith(CUDA_DIR + os.sep)  # CUDA glue: only in CUDA builds, see cuda_build()
    )
    # No -march=native: the binary must run on any x86-64 machine; SIMD code paths are
    # compiled per target in their own files and chosen at run time.
    cxx = ["-O3"]  # the C++ standard is chosen by torch.utils.cpp_extension (C++20 for torch 2.13)
    if os.environ.get("KALEIDOSCOPE_DEBUG") == "1":
        cxx = ["-O0", "-g"]
    cuda = cuda_build()
    if cuda is not None:
        return [
            CUDAExtension(
                "fairseq_kaleidoscope._C",
                sources + cuda["sources"],
                extra_compile_args={"cxx": [*cxx, "-fopenmp"], "nvcc": cuda["nvcc"]},
                extra_link_args=["-fopenmp"],
            )
        ]
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
