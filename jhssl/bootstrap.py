"""Prepare Jittor's environment. Import this module before ``jittor``.

Jittor reads its build switches from environment variables once, at import
time, so they must be set before the first ``import jittor`` anywhere in the
process. Every entry point (``run/*.py``), ``jhssl/__init__`` and
``models/__init__`` import this module first.

What it does, and why:

* ``nvcc_path``: Jittor turns CUDA on whenever it finds ``nvcc``. Machines
  with the CUDA compiler but without a usable CUDA runtime/driver (CPU CI
  images, login nodes) then crash at the first kernel. When no GPU is
  visible we set ``nvcc_path=""`` so Jittor compiles C++ kernels for the CPU.
* ``use_cutlass``: Jittor downloads cutlass at first CUDA use; no offline
  archive exists for it (``jittor-offline`` ships oneDNN, cub, cutt and the
  NCCL source, not cutlass), so offline GPU nodes need ``use_cutlass=0``.
* oneDNN (``use_mkl``) stays on: with the ``jittor-offline`` wheel installed
  Jittor unpacks the exact oneDNN archive it expects without network access.
* MPI is on when ``mpicc`` exists (Jittor's own default); nothing to do here.
* ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep instead of spinning while waiting, which
  keeps shared or oversubscribed CPUs (MPI ranks on one node, CI) from collapsing.

Every variable is only *defaulted*: a value set by the user always wins.
Set ``JHSSL_DEVICE=cpu`` to force the CPU path on a GPU machine.
"""
import os

_DONE = False


def _cuda_detect():
    """``models/cuda_detect.py`` loaded by path: importing the ``models`` package would import jittor."""
    import importlib.util
    import sys
    mod = sys.modules.get("models.cuda_detect")
    if mod is None:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "cuda_detect.py")
        spec = importlib.util.spec_from_file_location("models.cuda_detect", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["models.cuda_detect"] = mod
        spec.loader.exec_module(mod)
    return mod


def gpu_visible() -> bool:
    """True when this process trains on CUDA; sets ``nvcc_path`` (the real toolkit's nvcc, or "")
    and, under mpirun, this rank's ``CUDA_VISIBLE_DEVICES`` (models/cuda_detect.py)."""
    detect = _cuda_detect()
    try:
        return detect.prepare_environ(os.environ)
    except detect.CudaSetupError as e:  # at import time: one line, not a traceback
        raise SystemExit(f"jhssl: {e}") from None


def setup_env() -> None:
    global _DONE
    if _DONE:
        return
    _DONE = True
    if gpu_visible():
        os.environ.setdefault("use_cutlass", "0")
    os.environ.setdefault("use_mkl", "1")
    # oneDNN (Jittor) and MKL (torch) use GNU OpenMP, whose default spin-waiting collapses when
    # other processes share the cores (measured: ViT-T/4 step 7.5 s -> 3.0 s on a loaded 2-core
    # machine with PASSIVE). Must be set before the OpenMP runtime loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Jittor prints every compile at info level; keep warnings and errors.
    os.environ.setdefault("log_silent", "0")


setup_env()
