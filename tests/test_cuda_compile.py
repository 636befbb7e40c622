"""Compile-only checks of CUDA code with the nvcc found on this machine (no GPU needed):
run/patch_jittor.py's fixes for CUDA 12/13 and jhssl's own CUDA kernels. Skipped without nvcc."""
import importlib.util
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, rel):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


patch_jittor = _load("patch_jittor_under_test", "run/patch_jittor.py")
cuda_detect = _load("cuda_detect_for_compile", "models/cuda_detect.py")
NVCC = cuda_detect.find_nvcc({k: v for k, v in os.environ.items() if k != "nvcc_path"})
JITTOR = patch_jittor.installed_jittor()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="no nvcc on this machine")
needs_jittor = pytest.mark.skipif(JITTOR is None, reason="jittor not installed")


def _nvcc(tmp_path, source, *flags):
    cu = tmp_path / "t.cu"
    cu.write_text(source)
    home = cuda_detect.toolkit_root(NVCC)
    cmd = [NVCC, "-c", "-std=c++17", "-arch=sm_80", f"-I{home}/include", f"-I{home}/include/cccl",
           *flags, str(cu), "-o", str(tmp_path / "t.o")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture
def patched_copy(tmp_path):
    """The files run/patch_jittor.py touches, copied from the installed Jittor and patched."""
    root = tmp_path / "jittor"
    for rel in list(patch_jittor.PATCHES) + ["extern/cuda/inc/helper_string.h"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(JITTOR, rel), root / rel)
    return root


@needs_jittor
def test_patch_is_idempotent_and_recorded(patched_copy):
    before = (patched_copy / "compiler.py").read_text()
    assert patch_jittor.patch_tree(str(patched_copy), check_only=True)["compiler.py"] == "unpatched"
    report = patch_jittor.patch_tree(str(patched_copy))
    assert all(report[rel] == "patched" for rel in patch_jittor.PATCHES), report
    assert report["compiler.py:sha256"]["before"] == patch_jittor.sha256(before)
    again = patch_jittor.patch_tree(str(patched_copy))
    assert all(again[rel] == "already" for rel in patch_jittor.PATCHES)
    # a file of another content is left alone and reported
    (patched_copy / "depthwise_conv.py").write_text("# something else\n")
    assert "not patched" in patch_jittor.patch_tree(str(patched_copy))["depthwise_conv.py"]
    # the patched Python files still parse
    for rel in ("compiler.py", "compile_extern.py", "other/code_softmax.py"):
        compile((patched_copy / rel).read_text(), rel, "exec")


@needs_nvcc
@needs_jittor
@pytest.mark.slow
def test_helper_cuda_compiles_with_this_nvcc_only_when_patched(tmp_path, patched_copy):
    src = '#include "utils/log.h"\n#include "helper_cuda.h"\nint jt_probe() { return gpuGetMaxGflopsDeviceId(); }\n'
    inc_src = f"-I{JITTOR}/src"  # Jittor compiles its CUDA code with -DIS_CUDA
    orig = _nvcc(tmp_path, src, f"-I{JITTOR}/extern/cuda/inc", inc_src, "-DIS_CUDA")
    patch_jittor.patch_tree(str(patched_copy))
    fixed = _nvcc(tmp_path, src, f"-I{patched_copy}/extern/cuda/inc", f"-I{JITTOR}/extern/cuda/inc", inc_src, "-DIS_CUDA")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    version = subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout
    if "release 13" in version:  # the failure the patch fixes (CUDA 13 removed the fields)
        assert orig.returncode != 0 and "computeMode" in orig.stderr


@needs_nvcc
@needs_jittor
@pytest.mark.slow
def test_patched_cub_constructs_compile_with_cccl(tmp_path, patched_copy):
    """The replacements for cub::Max (softmax) and cub::LaneId (depthwise conv), in kernels shaped
    like Jittor's, compile against this toolkit's CUB with -std=c++17."""
    patch_jittor.patch_tree(str(patched_copy))
    softmax = (patched_copy / "other/code_softmax.py").read_text()
    dw = (patched_copy / "depthwise_conv.py").read_text()
    reduce_line = next(line for line in softmax.splitlines() if "jhssl-patch" in line).strip()
    reduce_line = reduce_line.replace("{{", "{").replace("}}", "}")  # an f-string in Jittor
    lane_lines = [line for line in dw.splitlines() if "lane_id" in line]
    src = ("#include <cub/cub.cuh>\n"
           "__global__ void softmax_max(const float* x, float* out) {\n"
           "  typedef cub::BlockReduce<float, 256> BlockReduce;\n"
           "  __shared__ typename BlockReduce::TempStorage temp_storage;\n"
           "  float v1 = x[threadIdx.x];\n"
           f"  {reduce_line}\n"
           "  if (threadIdx.x == 0) out[0] = tmp;\n}\n"
           "template <typename T> __device__ void warp_add(T* sum, T value) {\n"
           "  typedef cub::WarpReduce<T> WarpReduce;\n"
           "  __shared__ typename WarpReduce::TempStorage temp_storage;\n"
           "  value = WarpReduce(temp_storage).Sum(value);\n" + "\n".join(lane_lines) + "\n"
           "    atomicAdd(sum, value);\n}\n"
           "__global__ void dw(float* s, const float* v) { warp_add(s, v[threadIdx.x]); }\n")
    out = _nvcc(tmp_path, src)
    assert out.returncode == 0, out.stderr[-3000:]


@needs_nvcc
@pytest.mark.slow
def test_jhssl_adamw_cuda_kernel_compiles(tmp_path):
    """jhssl.optim's CUDA AdamW kernel, with its launch written as jt.code generates it."""
    import ast
    tree = ast.parse(open(os.path.join(ROOT, "jhssl/optim.py")).read())
    consts = {t.targets[0].id: t.value.value for t in tree.body
              if isinstance(t, ast.Assign) and isinstance(t.targets[0], ast.Name)
              and t.targets[0].id in ("ADAMW_CUDA_HEADER", "ADAMW_CUDA_SRC")}
    launch = consts["ADAMW_CUDA_SRC"].replace("in0->num", "n_elems")
    for key in ("decay", "step", "b0", "b1", "rsqrt_bc2", "eps"):
        launch = launch.replace(f'data["{key}"]', f"d_{key}")
    src = (consts["ADAMW_CUDA_HEADER"] +
           "void launch(const float* in0_p, const float* in1_p, const float* in2_p, const float* in3_p,\n"
           "            float* out0_p, float* out1_p, float* out2_p, long long n_elems, float d_decay,\n"
           "            float d_step, float d_b0, float d_b1, float d_rsqrt_bc2, float d_eps) {\n"
           + launch + "}\n")
    out = _nvcc(tmp_path, src)
    assert out.returncode == 0, out.stderr[-3000:]


_JT_CODE_MOCK = """
#include <map>
#include <string>
#include <vector>
#include <cuda_bf16.h>
struct MockVar { std::vector<long long> shape; long long num; };
"""


def _jt_code_harness(header, src, in_types, out_types):
    """A host function that runs ``src`` the way jt.code's generated op does: in<i>/out<i> Vars,
    typed in<i>_p/out<i>_p pointers and the ``data`` map."""
    params = [f"const {t}* in{i}_p" for i, t in enumerate(in_types)] + \
             [f"{t}* out{i}_p" for i, t in enumerate(out_types)]
    return (_JT_CODE_MOCK + header + "void launch(" + ", ".join(params) +
            ", MockVar* in0, std::map<std::string, double>& data) {\n" + src + "}\n")


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("x_type", ["float", "__nv_bfloat16"])
def test_fused_layer_norm_cuda_kernels_compile(tmp_path, x_type):
    import ast
    tree = ast.parse(open(os.path.join(ROOT, "models/layers/cuda_layer_norm.py")).read())
    c = {t.targets[0].id: t.value.value for t in tree.body
         if isinstance(t, ast.Assign) and isinstance(t.targets[0], ast.Name) and isinstance(t.value, ast.Constant)}
    h = c["CUDA_HEADER"]
    for name, ins, outs in (("FORWARD_CUDA", [x_type, "float", "float"], [x_type, "float", "float"]),
                            ("GRAD_X_CUDA", [x_type, "float", "float", "float", x_type], ["float"]),
                            ("GRAD_WB_CUDA", [x_type, "float", "float", x_type], ["float", "float"])):
        out = _nvcc(tmp_path, _jt_code_harness(h, c[name], ins, outs))
        assert out.returncode == 0, (name, out.stderr[-3000:])
