"""Find the CUDA driver, the GPUs and a real CUDA toolkit, before Jittor is imported.

Pure Python, no Jittor import: ``jhssl.bootstrap`` calls :func:`prepare_environ` while the
process environment can still change what Jittor does at import time.

* **A GPU is there when the driver says so** (``/proc/driver/nvidia/gpus/*``, ``/dev/nvidia<N>``,
  or ``nvidia-smi -L``), never because ``nvcc`` is on PATH: CPU images often carry a toolkit,
  and a GPU node often has ``nvcc`` only under ``/usr/local/cuda/bin``. GPUs are counted without
  initialising CUDA in this process (``cuInit`` would freeze ``CUDA_VISIBLE_DEVICES`` before we
  set it).
* **nvcc is searched in the usual places** (``nvcc_path``, ``$CUDA_HOME``/``$CUDA_PATH``, PATH,
  ``/usr/local/cuda``, ``/usr/local/cuda-*``, ``/opt/cuda``) and **resolved to the real
  toolkit**: Jittor derives the CUDA library folder from nvcc's folder (``<bin>/../lib64``), so
  a wrapper script such as ``/usr/local/bin/nvcc`` (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``)
  made it look for ``/usr/local/lib64/libcudart.so`` and die. A wrapper is followed through the
  path it ``exec``s, or else through ``nvcc -dryrun`` (which prints its own ``_HERE_``).
* **One GPU per MPI rank** (:func:`rank_gpu`): see that function.

Device choice everywhere: ``JHSSL_DEVICE`` = ``auto`` (default: CUDA when a driver shows a GPU and
a toolkit is found) | ``cpu`` | ``cuda`` (an error at startup when either is missing).
"""
import glob
import os
import re
import shutil
import subprocess
import sys

DEVICES = ("auto", "cpu", "cuda")


class CudaSetupError(RuntimeError):
    """The requested CUDA setup cannot work here (one line, names the problem)."""


# ----------------------------------------------------------------------------- the driver
def gpu_ids(root="/", run=subprocess.run, which=shutil.which):
    """Indices of the GPUs the NVIDIA driver shows (all of them, before CUDA_VISIBLE_DEVICES)."""
    proc = glob.glob(os.path.join(root, "proc/driver/nvidia/gpus/*"))
    if proc:
        return list(range(len(proc)))
    devs = sorted(int(m.group(1)) for p in glob.glob(os.path.join(root, "dev/nvidia*"))
                  for m in [re.fullmatch(r"nvidia(\d+)", os.path.basename(p))] if m)
    if devs:
        return devs
    smi = which("nvidia-smi")
    if smi:
        try:
            out = run([smi, "-L"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return []
        if out.returncode == 0:
            return [i for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]
    return []


def visible_gpus(env, ids):
    """The GPUs this process may use: ``ids`` filtered by ``CUDA_VISIBLE_DEVICES`` (a list of
    the strings CUDA accepts there: indices or UUIDs)."""
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return [str(i) for i in ids]
    if cvd.strip() in ("", "-1", "none", "NoDevFiles"):
        return []
    return [x.strip() for x in cvd.split(",") if x.strip()]


# ----------------------------------------------------------------------------- the toolkit
def _is_nvcc_binary(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _exec_target(script):
    """Absolute ``.../nvcc`` path a wrapper script runs, or None."""
    try:
        with open(script, "r", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return None
    for m in re.finditer(r"(/[^\s\"'$;|&]*?/bin/nvcc)\b", text):
        cand = os.path.realpath(m.group(1))
        if cand != os.path.realpath(script) and os.path.isfile(cand):
            return cand
    return None


def _dryrun_home(nvcc, run):
    try:
        out = run([nvcc, "-dryrun", "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ _HERE_=(\S+)", (out.stdout or "") + (out.stderr or ""), re.M)
    return os.path.join(m.group(1), "nvcc") if m else None


def resolve_nvcc(path, run=subprocess.run):
    """The real ``<toolkit>/bin/nvcc`` behind ``path`` (a symlink or a wrapper script), or None."""
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        return None
    for _ in range(4):  # wrapper of a wrapper
        if _is_nvcc_binary(real):
            return real
        nxt = _exec_target(real)
        if nxt is None:
            break
        real = nxt
    if _is_nvcc_binary(real):
        return real
    here = _dryrun_home(path, run)
    if here and _is_nvcc_binary(os.path.realpath(here)):
        return os.path.realpath(here)
    return None


def toolkit_root(nvcc):
    return os.path.dirname(os.path.dirname(nvcc))


def has_runtime(root):
    """The toolkit folder has the CUDA runtime where Jittor looks (``lib64``, else ``lib``)."""
    return any(os.path.exists(os.path.join(root, d, "libcudart.so"))
               for d in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"))


def nvcc_candidates(env, which=shutil.which, root="/"):
    """Where nvcc may be, in the order it is tried."""
    c = []
    if env.get("nvcc_path"):
        c.append(env["nvcc_path"])
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT", "CUDA_TOOLKIT_ROOT_DIR"):
        if env.get(var):
            c.append(os.path.join(env[var], "bin", "nvcc"))
    on_path = which("nvcc")
    if on_path:
        c.append(on_path)
    c.append(os.path.join(root, "usr/local/cuda/bin/nvcc"))

    def version_key(p):
        m = re.search(r"cuda-(\d+)\.(\d+)", p)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    c += sorted(glob.glob(os.path.join(root, "usr/local/cuda-*/bin/nvcc")), key=version_key, reverse=True)
    c.append(os.path.join(root, "opt/cuda/bin/nvcc"))
    return c


def find_nvcc(env, which=shutil.which, run=subprocess.run, root="/"):
    """The first real nvcc (wrappers resolved) whose toolkit has the CUDA runtime, or None."""
    for cand in nvcc_candidates(env, which, root):
        if not os.path.exists(cand):
            continue
        real = resolve_nvcc(cand, run)
        if real and has_runtime(toolkit_root(real)):
            return real
    return None


def toolkit_version(nvcc):
    """(major, minor) of the toolkit of a resolved nvcc, from ``version.json`` or the folder name."""
    root = toolkit_root(nvcc)
    try:
        import json
        with open(os.path.join(root, "version.json")) as f:
            v = json.load(f)["cuda"]["version"]
        return tuple(int(x) for x in v.split(".")[:2])
    except (OSError, KeyError, ValueError):
        pass
    m = re.search(r"cuda-(\d+)\.(\d+)", os.path.realpath(root))
    return (int(m.group(1)), int(m.group(2))) if m else None


def nccl_wheel_paths(search_path):
    """(include, lib) of the pip NCCL wheel (``nvidia-nccl-cu12``/``-cu13``: ``nvidia/nccl``) when
    installed with the unversioned ``libnccl.so`` Jittor asserts (run/setup.sh links it), else None."""
    for base in search_path:
        d = os.path.join(base or ".", "nvidia", "nccl")
        if os.path.isfile(os.path.join(d, "lib", "libnccl.so")) and os.path.isdir(os.path.join(d, "include")):
            return os.path.join(d, "include"), os.path.join(d, "lib")
    return None


# ----------------------------------------------------------------------------- ranks
def local_rank(env):
    """(local rank, ranks on this node) from OpenMPI's variables; (0, 1) outside mpirun."""
    r = env.get("OMPI_COMM_WORLD_LOCAL_RANK")
    n = env.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    if r is None:
        return 0, 1
    return int(r), int(n) if n is not None else int(r) + 1


def rank_gpu(env, gpus):
    """The ``CUDA_VISIBLE_DEVICES`` value of this rank: its own GPU, or None outside mpirun.

    One GPU per rank is set through ``CUDA_VISIBLE_DEVICES`` before Jittor (or any CUDA library)
    loads, not through ``cudaSetDevice``: Jittor only calls ``cudaSetDevice(local_rank)`` inside its
    NCCL set-up, after cuBLAS/cuDNN may already hold a context on GPU 0, and not at all with
    ``use_nccl=0`` (Jittor issue #437: every rank on GPU 0). With the variable every thread and
    library of the process sees exactly its GPU as device 0. Jittor's NCCL set-up would then count
    one device for several local ranks and fall back to CPU all-reduces; ``run/patch_jittor.py``
    makes it honour ``JHSSL_ONE_GPU_PER_RANK=1``, which :func:`prepare_environ` sets.

    More local ranks than GPUs is an error (CUDA_VISIBLE_DEVICES already narrowed to one GPU per
    rank by the scheduler is fine), unless ``JHSSL_GPU_SHARING=1``: then ranks share GPUs
    round-robin and NCCL is off (it cannot run two ranks on one GPU).
    """
    r, n = local_rank(env)
    if env.get("OMPI_COMM_WORLD_LOCAL_RANK") is None or not gpus:
        return None
    if len(gpus) == 1:
        if n > 1 and env.get("CUDA_VISIBLE_DEVICES") is None and env.get("JHSSL_GPU_SHARING") != "1":
            raise CudaSetupError(
                f"{n} MPI ranks on this node but only 1 GPU: start one rank per GPU "
                "(set JHSSL_GPU_SHARING=1 to share it, slowly, e.g. for tests; or JHSSL_DEVICE=cpu)")
        return gpus[0]
    if n > len(gpus) and env.get("JHSSL_GPU_SHARING") != "1":
        raise CudaSetupError(
            f"{n} MPI ranks on this node but {len(gpus)} GPUs ({','.join(gpus)}): start one rank per GPU "
            f"(mpirun -np {len(gpus)} per node; JHSSL_GPU_SHARING=1 shares GPUs round-robin; JHSSL_DEVICE=cpu)")
    return gpus[r % len(gpus)]


# ----------------------------------------------------------------------------- all together
def prepare_environ(env, root="/", which=shutil.which, run=subprocess.run, sys_path=None):
    """Decide CPU or CUDA for this process and set Jittor's variables in ``env``; True for CUDA.

    CUDA: ``nvcc_path`` = the real nvcc, ``CUDA_VISIBLE_DEVICES`` = this rank's GPU under mpirun
    (``JHSSL_ONE_GPU_PER_RANK=1``, or ``use_nccl=0`` when GPUs are shared), the NCCL wheel's
    paths when it is installed, ``use_cutt=0`` on CUDA >= 13. CPU: ``nvcc_path=""``
    (Jittor would otherwise turn CUDA on whenever it finds nvcc). Raises :class:`CudaSetupError`
    for ``JHSSL_DEVICE=cuda`` without a GPU or toolkit, and for more ranks than GPUs.
    """
    sys_path = sys.path if sys_path is None else sys_path
    want = (env.get("JHSSL_DEVICE") or "auto").strip().lower()
    if want not in DEVICES:
        raise CudaSetupError(f"JHSSL_DEVICE={want!r}: use one of {', '.join(DEVICES)}")
    if want == "cpu" or (env.get("nvcc_path") == "" and want == "auto"):  # nvcc_path="": Jittor's own CPU switch
        env["nvcc_path"] = ""
        return False
    gpus = visible_gpus(env, gpu_ids(root, run, which))
    nvcc = find_nvcc(env, which, run, root) if gpus else None
    if not gpus or not nvcc:
        if want == "cuda":
            why = "no NVIDIA driver/GPU visible (/proc/driver/nvidia, /dev/nvidia*, nvidia-smi)" if not gpus \
                else "no CUDA toolkit found (nvcc in $CUDA_HOME, PATH, /usr/local/cuda*, /opt/cuda)"
            raise CudaSetupError(f"device=cuda but {why}; use device=cpu")
        env["nvcc_path"] = ""
        return False
    env["nvcc_path"] = nvcc
    version = toolkit_version(nvcc)
    if version and version >= (13, 0):
        env.setdefault("use_cutt", "0")  # cutt 1.2 (Jittor's transpose library) uses fields CUDA 13 removed
    nccl = nccl_wheel_paths(sys_path)
    if nccl and not (env.get("nccl_include_path") or env.get("nccl_lib_path")):
        # without these Jittor builds NCCL 2.8.4 from source, which fails on CUDA >= 12
        env["nccl_include_path"], env["nccl_lib_path"] = nccl
    mine = rank_gpu(env, gpus)
    if mine is not None:
        # a single GPU per rank set by the scheduler counts as one GPU per rank
        shared = env.get("JHSSL_GPU_SHARING") == "1" and len(gpus) < local_rank(env)[1]
        env["CUDA_VISIBLE_DEVICES"] = mine
        if shared:
            env.setdefault("use_nccl", "0")
        else:
            env["JHSSL_ONE_GPU_PER_RANK"] = "1"
    return True
