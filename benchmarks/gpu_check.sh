#!/usr/bin/env bash
# One-go GPU check for a machine with an NVIDIA GPU (issue 16). Offline: no package registry needed
# when the wheels are carried (WHEELS=dir with jittor, jittor-offline, nvidia-nccl-cu12/13, ...).
#
#   OUT=/path/to/results WHEELS=shared/wheels bash benchmarks/gpu_check.sh [quick]
#
# Every step writes $OUT/<nn>-<step>.log and one line to $OUT/summary.txt (ok / FAILED rc, seconds);
# a failing step does not stop the next ones. Step budgets are sized for ~12 minutes in all on an
# H100/H200 with a cold Jittor cache (the first CUDA import compiles Jittor's CUDA core: minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
QUICK=${1:-}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
n=0
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  n=$((n + 1))
  local log; log=$(printf "%s/%02d-%s.log" "$OUT" "$n" "$name")
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then echo "ok       $name (${dt}s)" | tee -a "$SUMMARY"
  else echo "FAILED   $name rc=$rc (${dt}s): $(tail -n 3 "$log" | tr '\n' ' ' | cut -c1-300)" | tee -a "$SUMMARY"; fi
}

# 0. the machine
{ nvidia-smi; nvidia-smi -L; nproc; free -g; python3 --version; ls /usr/local | grep -i cuda; } > "$OUT/00-machine.txt" 2>&1

# 1. setup: Python packages from carried wheels, Jittor patched for CUDA 12/13, NCCL wheel, core compile
if [ -n "${WHEELS:-}" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELS"; fi
step setup 420 bash run/setup.sh

# 2. detection, one GPU per rank, patches (CPU-side tests; compile-only checks use this nvcc)
step detect-tests 120 python3 -m pytest -q -x tests/test_cuda_detect.py tests/test_cuda_compile.py

# 3. kernels on the GPU against the plain path, autocast on the GPU, the AMP unit tests on the GPU
step kernels 300 python3 - <<'PY'
import os, numpy as np
import jhssl  # noqa: F401
import jittor as jt
from jhssl.device import use_device
assert use_device("cuda") == "cuda"
from jhssl import amp, perf, optim
rng = np.random.default_rng(0)
# fused AdamW CUDA kernel vs the plain Jittor ops
p0, g0 = rng.standard_normal(100003).astype("float32"), rng.standard_normal(100003).astype("float32")
res = {}
for fused in ("1", "0"):
    os.environ["JHSSL_CUDA_ADAMW"] = fused
    p = jt.array(p0)
    opt = optim.AdamW([{"params": [p], "regularized": True}], lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        opt.backward((p * jt.array(g0)).sum() + (p * p).sum())
        opt.step()
    res[fused] = p.numpy()
d = np.abs(res["1"] - res["0"]).max(); print("adamw fused vs plain max diff", d); assert d < 1e-6
# LayerNorm and softmax: fast path vs plain path, fp32 and bf16 input
from models.layers.fast_norm import layer_norm
from models.layers.attention import softmax_last, scaled_dot_product_attention
x = jt.array(rng.standard_normal((8, 197, 384)).astype("float32")); w = jt.ones(384); b = jt.zeros(384)
for dt in ("float32", "bfloat16"):
    xi = x if dt == "float32" else x.bfloat16()
    with perf.fast_kernels(True):
        a1 = layer_norm(xi, w, b).numpy(); s1 = softmax_last(xi).float32().numpy()
    with perf.fast_kernels(False):
        a2 = layer_norm(xi, w, b).numpy(); s2 = softmax_last(xi).float32().numpy()
    print(dt, "layernorm diff", np.abs(a1 - a2).max(), "softmax diff", np.abs(s1 - s2).max())
    assert np.abs(a1 - a2).max() < 1e-4 and np.abs(s1 - s2).max() < 1e-2
q = jt.array(rng.standard_normal((4, 6, 197, 64)).astype("float32"))
o32 = scaled_dot_product_attention(q, q, q).numpy()
o16 = scaled_dot_product_attention(q.bfloat16(), q.bfloat16(), q.bfloat16()).float32().numpy()
print("attention bf16 vs fp32 max diff", np.abs(o32 - o16).max()); assert np.abs(o32 - o16).max() < 5e-2
print("kernels ok")
PY
step amp-tests 420 env JHSSL_DEVICE=cuda python3 -m pytest -q -x tests/test_amp.py

# 4. short demo runs, AMP off and on (Fashion-MNIST demo recipe), then ViT-S/16 via the benchmark
step demo-fp32 300 python3 run/train.py --config configs/demo.yaml --max-iters 30 --no-progress \
    output_dir="$OUT/demo_fp32" device=cuda amp=false eval_every=0
step demo-bf16 300 python3 run/train.py --config configs/demo.yaml --max-iters 30 --no-progress \
    output_dir="$OUT/demo_bf16" device=cuda amp=true eval_every=0
step demo-fp16 300 python3 run/train.py --config configs/demo.yaml --max-iters 30 --no-progress \
    output_dir="$OUT/demo_fp16" device=cuda amp=true amp_dtype=float16 eval_every=0

# 5. two MPI ranks sharing the one GPU (NCCL off by design when shared; CPU MPI all-reduce)
step mpi-2-ranks-1-gpu 300 env JHSSL_GPU_SHARING=1 mpirun --allow-run-as-root --oversubscribe -np 2 \
    -x JHSSL_GPU_SHARING -x PATH -x LD_LIBRARY_PATH python3 run/train.py --config configs/demo.yaml \
    --max-iters 10 --no-progress output_dir="$OUT/demo_mpi" device=cuda amp=true eval_every=0
# more ranks than GPUs without sharing must be a clear startup error
step mpi-oversubscribed-is-an-error 120 bash -c 'out=$(mpirun --allow-run-as-root --oversubscribe -np 2 \
    python3 -c "import jhssl" 2>&1); echo "$out"; echo "$out" | grep -q "MPI ranks on this node but only 1 GPU"'

# 6. memory high-water mark over 200 steps (no per-step jt.gc on the GPU): must be flat
step memory-200-steps 420 python3 benchmarks/gpu.py --memory-steps 200 --arch vit_small --batch 16 --out "$OUT"

# 7. the benchmark: ViT-S/16 iBOT+HSSL vs iBOT, batch 64, 2x224 + 10x96, fp32 and bf16
if [ "$QUICK" = "quick" ]; then
  step gpu-benchmark 600 python3 benchmarks/gpu.py --iters 5 --warmup 3 --out "$OUT"
else
  step gpu-benchmark 900 python3 benchmarks/gpu.py --out "$OUT"
fi
cat "$SUMMARY"
