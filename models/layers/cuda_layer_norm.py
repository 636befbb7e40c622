"""Fused LayerNorm over the last axis through ``jt.code``: forward, d/dx and d/d(weight, bias).

CUDA: one block per row for the forward and d/dx (two block reductions each, fp32 statistics,
any input dtype read as float), and a column-parallel d/dweight, d/dbias with row chunks combined
by atomicAdd. Each op has a CPU twin (``cpu_src``) with the same inputs, outputs and formulas, so
the Function's wiring (saved mean/rstd, the three gradients) is tested on the CPU against Jittor's
LayerNorm (tests/test_cuda_layer_norm.py); the CUDA sources are compile-checked with nvcc
(tests/test_cuda_compile.py). Used by ``models.layers.fast_norm`` on CUDA only with
``JHSSL_CUDA_LAYERNORM=1`` until it has been checked on a GPU (benchmarks/gpu_check.sh).
"""
from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt

CUDA_HEADER = r"""
#ifndef JHSSL_LN_HEADER
#define JHSSL_LN_HEADER
__device__ __forceinline__ float jhssl_block_sum(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    const int n_warps = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < n_warps) ? shared[threadIdx.x] : 0.f;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    v = shared[0];
    __syncthreads();
    return v;
}

template <typename T, typename TO>
__global__ void jhssl_ln_forward(const T* __restrict__ x, const float* __restrict__ w,
        const float* __restrict__ b, TO* __restrict__ y, float* __restrict__ mean_out,
        float* __restrict__ rstd_out, int cols, float eps) {
    __shared__ float shared[32];
    const long long row = blockIdx.x;
    const T* xr = x + row * cols;
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += float(xr[c]);
    const float mean = jhssl_block_sum(s, shared) / cols;
    float q = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) { const float d = float(xr[c]) - mean; q += d * d; }
    const float rstd = rsqrtf(jhssl_block_sum(q, shared) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        y[row * cols + c] = TO((float(xr[c]) - mean) * rstd * w[c] + b[c]);
    if (threadIdx.x == 0) { mean_out[row] = mean; rstd_out[row] = rstd; }
}

template <typename T, typename TG>
__global__ void jhssl_ln_grad_x(const T* __restrict__ x, const float* __restrict__ w,
        const float* __restrict__ mean, const float* __restrict__ rstd, const TG* __restrict__ dy,
        float* __restrict__ dx, int cols) {
    __shared__ float shared[32];
    const long long row = blockIdx.x;
    const float m = mean[row], r = rstd[row];
    float sg = 0.f, sgx = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = float(dy[row * cols + c]) * w[c];
        sg += g;
        sgx += g * (float(x[row * cols + c]) - m) * r;
    }
    const float mg = jhssl_block_sum(sg, shared) / cols;
    const float mgx = jhssl_block_sum(sgx, shared) / cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float xh = (float(x[row * cols + c]) - m) * r;
        dx[row * cols + c] = r * (float(dy[row * cols + c]) * w[c] - mg - xh * mgx);
    }
}

template <typename T, typename TG>
__global__ void jhssl_ln_grad_wb(const T* __restrict__ x, const float* __restrict__ mean,
        const float* __restrict__ rstd, const TG* __restrict__ dy, float* __restrict__ dw,
        float* __restrict__ db, long long rows, int cols, long long rows_per_chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const long long r0 = blockIdx.y * rows_per_chunk;
    const long long r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    float sw = 0.f, sb = 0.f;
    for (long long r = r0; r < r1; r++) {
        const float g = float(dy[r * cols + c]);
        sw += g * (float(x[r * cols + c]) - mean[r]) * rstd[r];
        sb += g;
    }
    atomicAdd(dw + c, sw);
    atomicAdd(db + c, sb);
}
#endif
"""

# out0 = y (input dtype), out1 = mean (R), out2 = rstd (R); in0 = x (R, C), in1 = w, in2 = b
FORWARD_CUDA = r"""
    const int cols = in0->shape[in0->shape.size() - 1];
    const long long rows = in0->num / cols;
    jhssl_ln_forward<<<rows, 256>>>(in0_p, in1_p, in2_p, out0_p, out1_p, out2_p, cols, (float)data["eps"]);
"""
FORWARD_CPU = r"""
    const int cols = in0->shape[in0->shape.size() - 1];
    const long long rows = in0->num / cols;
    const float eps = data["eps"];
    for (long long r = 0; r < rows; r++) {
        float s = 0.f, q = 0.f;
        for (int c = 0; c < cols; c++) s += float(in0_p[r * cols + c]);
        const float mean = s / cols;
        for (int c = 0; c < cols; c++) { const float d = float(in0_p[r * cols + c]) - mean; q += d * d; }
        const float rstd = 1.f / std::sqrt(q / cols + eps);
        for (int c = 0; c < cols; c++)
            out0_p[r * cols + c] = (float(in0_p[r * cols + c]) - mean) * rstd * in1_p[c] + in2_p[c];
        out1_p[r] = mean; out2_p[r] = rstd;
    }
"""
# out0 = dx (float32); in0 = x, in1 = w, in2 = mean, in3 = rstd, in4 = dy
GRAD_X_CUDA = r"""
    const int cols = in0->shape[in0->shape.size() - 1];
    const long long rows = in0->num / cols;
    jhssl_ln_grad_x<<<rows, 256>>>(in0_p, in1_p, in2_p, in3_p, in4_p, out0_p, cols);
"""
GRAD_X_CPU = r"""
    const int cols = in0->shape[in0->shape.size() - 1];
    const long long rows = in0->num / cols;
    for (long long r = 0; r < rows; r++) {
        const float m = in2_p[r], rs = in3_p[r];
        float sg = 0.f, sgx = 0.f;
        for (int c = 0; c < cols; c++) {
            const float g = float(in4_p[r * cols + c]) * in1_p[c];
            sg += g; sgx += g * (float(in0_p[r * cols + c]) - m) * rs;
        }
        const float mg = sg / cols, mgx = sgx / cols;
        for (int c = 0; c < cols; c++) {
            const float xh = (float(in0_p[r * cols + c]) - m) * rs;
            out0_p[r * cols + c] = rs * (float(in4_p[r * cols + c]) * in1_p[c] - mg - xh * mgx);
        }
    }
"""
# out0 = dw, out1 = db (C,); in0 = x, in1 = mean, in2 = rstd, in3 = dy
GRAD_WB_CUDA = r"""
    const int cols = in0->shape[in0->shape.size() - 1];
    const long long rows = in0->num / cols;
    cudaMemsetAsync(out0_p, 0, cols * sizeof(float));
    cudaMemsetAsync(out1_p, 0, cols * sizeof(float));
    const long long chunk = 256;
    dim3 grid((cols + 255) / 256, (unsigned)((rows + chunk - 1) / chunk));
    jhssl_ln_grad_wb<<<grid, 256>>>(in0_p, in1_p, in2_p, in3_p, out0_p, out1_p, rows, cols, chunk);
"""
GRAD_WB_CPU = r"""
    const int cols = in0->shape[in0->shape.size() - 1];
    const long long rows = in0->num / cols;
    for (int c = 0; c < cols; c++) { out0_p[c] = 0.f; out1_p[c] = 0.f; }
    for (long long r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            const float g = float(in3_p[r * cols + c]);
            out0_p[c] += g * (float(in0_p[r * cols + c]) - in1_p[r]) * in2_p[r];
            out1_p[c] += g;
        }
"""


class FusedLayerNorm(jt.Function):
    """y = (x - mean) * rstd * weight + bias over the last axis; fp32 statistics and gradients."""

    def execute(self, x, weight, bias, eps=1e-5):
        rows = [x.numel() // x.shape[-1]]
        y, mean, rstd = jt.code([x.shape, rows, rows], [x.dtype, "float32", "float32"], [x, weight, bias],
                                cuda_header=CUDA_HEADER, cuda_src=FORWARD_CUDA, cpu_src=FORWARD_CPU,
                                data={"eps": float(eps)})
        self.saved = (x, weight, mean, rstd)
        return y

    def grad(self, dy):
        x, weight, mean, rstd = self.saved
        dx = jt.code(x.shape, "float32", [x, weight, mean, rstd, dy],
                     cuda_header=CUDA_HEADER, cuda_src=GRAD_X_CUDA, cpu_src=GRAD_X_CPU)
        dw, db = jt.code([weight.shape, weight.shape], ["float32", "float32"], [x, mean, rstd, dy],
                         cuda_header=CUDA_HEADER, cuda_src=GRAD_WB_CUDA, cpu_src=GRAD_WB_CPU)
        return dx.cast(x.dtype), dw, db


def fused_layer_norm(x, weight, bias, eps=1e-5):
    return FusedLayerNorm.apply(x, weight, bias, eps)
