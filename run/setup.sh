#!/usr/bin/env bash
# jhssl setup: system packages, Python packages, and an offline-ready Jittor.
# Idempotent: a second run checks everything and changes nothing.
#   bash run/setup.sh              # everything the trainer needs; installs jhssl itself (pip install -e .)
#   JHSSL_WITH_TORCH=1 bash run/setup.sh   # plus requirements-dev.txt: torch 2.13 CPU, safetensors, pytest
#                                          # (what the tests need; bash run/test.sh does this, then runs them)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="__none__"; fi
fi

# 1. Debian packages: OpenMPI for `mpirun` training, Fashion-MNIST for the demo and tests.
APT_PKGS="openmpi-bin libopenmpi-dev dataset-fashion-mnist"
missing=""
for p in $APT_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$SUDO" = "__none__" ]; then
    echo "setup: missing Debian packages:$missing (run as root or install sudo)" >&2; exit 1
  fi
  echo "setup: installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
else
  echo "setup: Debian packages present ($APT_PKGS)"
fi

# 2. Python packages. jittor-offline ships the oneDNN/cub/cutt/NCCL archives Jittor would otherwise download.
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "${JHSSL_WITH_TORCH:-0}" = "1" ]; then
  # torch (pinned to the CPU build: .pth export, parity tests, benchmarks), safetensors (the reference
  # implementation our reader/writer is tested against) and pytest.
  $PY -m pip install -q -r requirements-dev.txt
else
  $PY -m pip install -q -r requirements.txt
fi
# jhssl and models as an editable package: run/*.py, the tests and your own scripts import them
# from this checkout (dependencies are installed above).
$PY -m pip install -q --no-deps -e .

# 2b. GPU machines only (an NVIDIA driver is present): patch the installed Jittor for CUDA 12/13 and
#     cuDNN 9 (run/patch_jittor.py: idempotent, checksummed, recorded in <jittor>/jhssl_patches.json),
#     and install the NCCL wheel of the toolkit's CUDA major (offline: PIP_FIND_LINKS=<wheel dir>
#     PIP_NO_INDEX=1). Jittor asserts an unversioned libnccl.so; the wheel ships libnccl.so.2 only.
#     jhssl's bootstrap (models/cuda_detect.py) then points Jittor at the wheel's NCCL.
if [ -e /proc/driver/nvidia/version ] || [ -e /dev/nvidiactl ] || [ "${JHSSL_PATCH_JITTOR:-0}" = "1" ]; then
  $PY run/patch_jittor.py
fi
if [ -e /proc/driver/nvidia/version ] || [ -e /dev/nvidiactl ]; then
  NVCC=$($PY -c "import os, sys; sys.path.insert(0, 'models'); import cuda_detect; print(cuda_detect.find_nvcc(dict(os.environ)) or '')")
  if [ -z "$NVCC" ]; then
    echo "setup: an NVIDIA driver but no CUDA toolkit (nvcc) found: training will use the CPU" >&2
  else
    CUDA_MAJOR=$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
    $PY -c "import nvidia.nccl" 2>/dev/null || $PY -m pip install -q "nvidia-nccl-cu${CUDA_MAJOR}"
    NCCL_DIR=$($PY -c "import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])")
    [ -e "$NCCL_DIR/lib/libnccl.so" ] || ln -s libnccl.so.2 "$NCCL_DIR/lib/libnccl.so"
    echo "setup: CUDA ${CUDA_MAJOR} toolkit at ${NVCC%/bin/nvcc}, NCCL wheel at $NCCL_DIR"
  fi
fi

# 3. Compile Jittor's core once (about 3 minutes the first time, cached in ~/.cache/jittor) and check
#    that oneDNN and MPI are really on. jhssl.bootstrap sets the env (no GPU -> nvcc_path="").
$PY - <<'PYEOF'
import time
import jhssl  # noqa: F401  bootstrap first
import jittor as jt
from jittor import compile_extern as ce

if ce.mkl_ops is None:
    raise SystemExit("setup: Jittor's oneDNN ops are OFF (is jittor-offline installed?); conv would be ~100x slower")
a = jt.randn(1024, 1024); b = jt.randn(1024, 1024)
jt.sync_all(True)
c = ce.mkl_ops.mkl_matmul(a, b, False, False); c.sync()
t = time.time(); n = 5
for _ in range(n):
    c = ce.mkl_ops.mkl_matmul(a, b, False, False); c.sync()
gflops = 2 * 1024 ** 3 * n / (time.time() - t) / 1e9
ref = (a.numpy() @ b.numpy())
err = abs(c.numpy() - ref).max()
print(f"setup: jittor {jt.__version__}, cuda={'on' if jt.has_cuda else 'off'}, "
      f"oneDNN=on ({gflops:.0f} GFLOP/s on a 1024^2 GEMM, max err {err:.1e}), "
      f"mpi={'on' if ce.mpi is not None or ce.inside_mpi() else 'off'}")
PYEOF
echo "setup: done"
