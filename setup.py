"""Build fastlangevin._C: the C++ CPU kernels always, the CUDA kernels when they can be built.

Environment switches:
  FASTLANGEVIN_NO_EXT=1   install pure Python (reference and Triton backends only)
  FORCE_CUDA=1            build the CUDA sources even where torch.cuda.is_available() is False
                          (CI does this on a machine without a GPU so CUDA code that does not
                          compile never lands); needs a CUDA build of torch and nvcc
  FASTLANGEVIN_NO_CUDA=1  never build the CUDA sources
  TORCH_CUDA_ARCH_LIST    GPU architectures (default here when no GPU is visible: "8.0;9.0")
  MAX_JOBS                parallel compile jobs (ninja)

Install with `pip install --no-build-isolation -e .`: an isolated build would download its own,
different, multi-GB torch to compile against.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _real_toolkit():
    """The CUDA toolkit folder whose bin/ holds the real nvcc.

    On some machines the nvcc on PATH is a wrapper script outside the toolkit
    (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`); torch guesses CUDA_HOME as the wrapper's
    parent's parent and then finds no headers. Ask nvcc itself where it lives instead.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        try:
            # `nvcc -dryrun` prints the toolkit's own TOP directory in its environment lines.
            out = subprocess.run([nvcc, "-dryrun", "--version"], capture_output=True, text=True, timeout=60)
            for line in (out.stdout + out.stderr).splitlines():
                if "TOP=" in line:
                    candidates.append(line.split("TOP=", 1)[1].strip())
        except (OSError, subprocess.SubprocessError):
            pass
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if os.path.isfile(os.path.join(c, "bin", "nvcc")) and os.path.isfile(
            os.path.join(c, "include", "cuda_runtime.h")
        ):
            return os.path.realpath(c)
    return None


def _extensions():
    if _flag("FASTLANGEVIN_NO_EXT"):
        print("fastlangevin: FASTLANGEVIN_NO_EXT=1, installing pure Python (no _C extension)")
        return [], {}
    toolkit = _real_toolkit()
    if toolkit and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = toolkit  # before torch.utils.cpp_extension reads it
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    want_cuda = (
        not _flag("FASTLANGEVIN_NO_CUDA")
        and torch.version.cuda is not None
        and CUDA_HOME is not None
        and (torch.cuda.is_available() or _flag("FORCE_CUDA"))
    )
    if _flag("FORCE_CUDA") and not want_cuda and not _flag("FASTLANGEVIN_NO_CUDA"):
        sys.exit(
            "fastlangevin: FORCE_CUDA=1 but the CUDA sources cannot be built: "
            f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME} (nvcc not found?)"
        )
    sources = ["csrc/fastlangevin.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -O3: GCC 12 only vectorises the Philox/Box-Muller loop at -O3 (-O2 runs the cheap-cost
    # model and leaves it scalar). -fopenmp: at::parallel_for is header code whose
    # `#pragma omp parallel` is a no-op without it (the step would silently run on one core).
    cxx = ["-O3", "-fopenmp", "-fno-math-errno"]  # torch adds -std=c++20
    link = ["-fopenmp"]
    include_dirs = [os.path.join(HERE, "csrc")]
    define_macros = []
    if want_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # No GPU to detect: A100 and H100/H200.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        # cuSPARSE/cuBLAS headers that torch's CUDA headers include come from the nvidia-*
        # wheels torch installs, not from the toolkit: beside torch, or in any other folder on
        # sys.path (wheels installed with --target, or a .pth pointing at another environment).
        torch_site = os.path.dirname(os.path.dirname(torch.__file__))
        for site in dict.fromkeys([torch_site] + [p for p in sys.path if p]):
            include_dirs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
        define_macros.append(("FASTLANGEVIN_WITH_CUDA", "1"))
        ext = CUDAExtension(
            "fastlangevin._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]},
            extra_link_args=link,
        )
        print(f"fastlangevin: building CPU + CUDA kernels (CUDA_HOME={CUDA_HOME}, "
              f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})")
    else:
        ext = CppExtension(
            "fastlangevin._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
        print("fastlangevin: building CPU kernels only")
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
