"""Prepare Jittor's environment. Import this module before ``jittor``.

Jittor reads its build switches from environment variables once, at import
time, so they must be set before the first ``import jittor`` anywhere in the
process. ``models/__init__`` imports this module first (so every ``import models...``
and ``import jhssl``, which imports ``models.env`` through ``jhssl.bootstrap``,
runs it); each module that imports jittor also imports it explicitly.

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
* ``sys.executable`` is spelled one way (:func:`stable_executable`): Jittor writes the interpreter's
  path into every kernel's compile command and rebuilds a cached kernel whose stored command differs,
  so a ``python`` process and a ``python3`` process (the same binary) recompiled each other's
  kernels: the demo's 141, 5 minutes on 2 cores, after ``bash run/test.sh`` then ``python run/train.py``.

* ``log_silent=1``: Jittor prints a dozen ``[i ...]`` info lines (compiler, cache path, every
  tool found) at import and at every compile; they hide a command's own output. They stay on
  with ``JHSSL_VERBOSE=1`` or ``--verbose`` on the command line (read here because the lines
  appear while jittor is imported, before any argument parser runs). Note that Jittor's
  ``log_silent`` also mutes its warnings; errors still raise.

Every variable is only *defaulted*: a value set by the user always wins.
Set ``JHSSL_DEVICE=cpu`` to force the CPU path on a GPU machine.
"""
import os
import sys

_DONE = False


def gpu_visible() -> bool:
    """True when this process trains on CUDA; sets ``nvcc_path`` (the real toolkit's nvcc, or "")
    and, under mpirun, this rank's ``CUDA_VISIBLE_DEVICES`` (models/cuda_detect.py)."""
    from . import cuda_detect
    try:
        return cuda_detect.prepare_environ(os.environ)
    except cuda_detect.CudaSetupError as e:  # at import time: one line, not a traceback
        raise SystemExit(f"jhssl: {e}") from None


def stable_executable(executable: str, version=sys.version_info) -> str:
    """The interpreter's path as ``python<major>.<minor>`` in its own directory when that names the
    same binary (``python`` and ``python3`` are usually links to it), else ``executable`` unchanged.

    Jittor 1.3.11 (compiler.py) uses ``sys.executable`` + ``.<minor>`` when that file exists, else
    ``sys.executable``: ``.../python3`` becomes ``.../python3.11`` but ``.../python`` stays, and its
    kernel cache keys on the resulting string. Same directory, so a virtual environment stays itself.
    """
    if not executable:
        return executable
    versioned = os.path.join(os.path.dirname(executable), f"python{version[0]}.{version[1]}")
    try:
        return versioned if os.path.samefile(versioned, executable) else executable
    except OSError:  # no such file: keep what the interpreter reports
        return executable


def setup_env() -> None:
    global _DONE
    if _DONE:
        return
    _DONE = True
    if "jittor" not in sys.modules:  # Jittor reads it once, at import
        sys.executable = stable_executable(sys.executable)
    if gpu_visible():
        os.environ.setdefault("use_cutlass", "0")
    os.environ.setdefault("use_mkl", "1")
    # oneDNN (Jittor) and MKL (torch) use GNU OpenMP, whose default spin-waiting collapses when
    # other processes share the cores (measured: ViT-T/4 step 7.5 s -> 3.0 s on a loaded 2-core
    # machine with PASSIVE). Must be set before the OpenMP runtime loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("log_silent", "0" if verbose() else "1")
    # Jittor compiles the ops of a new graph in a pool of threads. A compile thread crashed under
    # load in our tests (cold cache, 2 cores): Jittor then calls exit(), whose destructor joins
    # the crashed thread and hangs forever (seen as a test that never ends; py-spy: exit() ->
    # SimpleThreads::~list -> pthread_mutex_lock). Serial compilation has no pool to hang on; it
    # only slows the first run of a new graph (kernels are cached afterwards).
    # ``use_parallel_op_compiler=16`` restores Jittor's default.
    os.environ.setdefault("use_parallel_op_compiler", "0")


def verbose() -> bool:
    """``JHSSL_VERBOSE=1`` or ``--verbose`` among the command-line arguments."""
    if os.environ.get("JHSSL_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return "--verbose" in sys.argv[1:]


setup_env()
