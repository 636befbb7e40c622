"""Custom Jittor ops behind :mod:`models.layers.attention`.

The C++ ops in this folder are compiled by Jittor's JIT the first time they
are needed (never at import), with the same oneDNN that Jittor itself uses
for ``mkl_matmul``. Jittor's compile cache keeps the build, so later
processes only load it. If the build fails (no oneDNN, no compiler, Jittor
built with ``use_mkl=0``) the callers fall back to the plain Jittor path and
one warning says why.
"""
import glob
import os
import threading
import warnings

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt

from models import perf

_HERE = os.path.dirname(os.path.abspath(__file__))
_OP_FILES = ("dnnl_bmm_op.h", "dnnl_bmm_op.cc", "cpu_softmax_op.h", "cpu_softmax_op.cc",
             "cpu_softmax_backward_op.h", "cpu_softmax_backward_op.cc",
             "cpu_layer_norm_op.h", "cpu_layer_norm_op.cc",
             "cpu_layer_norm_grad_x_op.h", "cpu_layer_norm_grad_x_op.cc",
             "cpu_layer_norm_grad_wb_op.h", "cpu_layer_norm_grad_wb_op.cc",
             "cpu_gelu_op.h", "cpu_gelu_op.cc", "cpu_gelu_backward_op.h", "cpu_gelu_backward_op.cc",
             "cpu_dwconv_nhwc_op.h", "cpu_dwconv_nhwc_op.cc",
             "cpu_dwconv_nhwc_grad_x_op.h", "cpu_dwconv_nhwc_grad_x_op.cc",
             "cpu_dwconv_nhwc_grad_w_op.h", "cpu_dwconv_nhwc_grad_w_op.cc",
             "cpu_attention_op.h", "cpu_attention_op.cc",
             "cpu_attention_backward_op.h", "cpu_attention_backward_op.cc",
             "cpu_soft_cross_entropy_op.h", "cpu_soft_cross_entropy_op.cc",
             "cpu_soft_cross_entropy_backward_op.h", "cpu_soft_cross_entropy_backward_op.cc",
             "cpu_row_stats.h",   # shared by the three LayerNorm ops (not an op itself)
             "cpu_gelu_math.h",   # shared by the two GELU ops
             "cpu_dwconv_nhwc.h",  # shared by the depthwise-conv ops
             "cpu_attention.h",    # shared by the two attention ops
             "cpu_soft_cross_entropy.h",  # shared by the two soft-target cross-entropy ops
             "cpu_exp.h",          # e^z for z <= 0: GELU, the attention softmax, the cross-entropy
             "cpu_column_sums.h")  # bias gradients summed inside the GELU and attention backward ops
_lock = threading.Lock()
_ops = None
_failed = False


def _onednn_paths():
    """(include dir, lib dir) of the oneDNN Jittor was set up with."""
    inc, lib = os.environ.get("mkl_include_path"), os.environ.get("mkl_lib_path")
    if inc and lib:
        return inc, lib
    root = os.path.join(os.path.expanduser("~"), ".cache", "jittor", "mkl")
    homes = sorted(d for d in glob.glob(os.path.join(root, "dnnl*")) if os.path.isdir(d))
    if not homes:
        raise RuntimeError(f"no oneDNN found under {root} (Jittor's use_mkl setup did not run)")
    return os.path.join(homes[-1], "include"), os.path.join(homes[-1], "lib")


def _build():
    if jt.compile_extern.mkl_ops is None:
        raise RuntimeError("Jittor runs without oneDNN (use_mkl=0 or its setup failed)")
    inc, lib = _onednn_paths()
    if not os.path.isfile(os.path.join(inc, "dnnl.hpp")):
        raise RuntimeError(f"oneDNN header dnnl.hpp missing in {inc}")
    files = [os.path.join(_HERE, f) for f in _OP_FILES]
    flags = f' -I"{inc}" -L"{lib}" -lmkldnn -Wl,-rpath,"{lib}" '
    return jt.compile_custom_ops(files, extra_flags=flags, gen_name_="jhssl_cpu_kernels")


def enabled_cpu_ops():
    """The compiled CPU ops when the models should use them (on the CPU, fast kernels on), else None.
    Every fast CPU path asks this; the callers check only what is their own (dtypes, shapes)."""
    if jt.flags.use_cuda or not perf.fast_kernels_enabled():
        return None
    return cpu_ops()


def cpu_ops():
    """The compiled CPU ops module, or None when they cannot be built."""
    global _ops, _failed
    if _ops is not None or _failed:
        return _ops
    with _lock:
        if _ops is None and not _failed:
            try:
                _ops = _build()
            except Exception as exc:  # any build/load failure means: use the plain path
                _failed = True
                warnings.warn(f"jhssl fast CPU kernels unavailable, using plain Jittor ops: {exc}",
                              RuntimeWarning, stacklevel=3)
    return _ops
