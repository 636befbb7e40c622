"""Patch the installed Jittor 1.3.11 so that it builds with CUDA 12.x / 13.x (run by run/setup.sh).

Each patch is a literal text replacement in one file of the installed package. It is
idempotent and checked: a file is patched only when its SHA-256 is the recorded 1.3.11 original
(or it already carries the patch, then nothing happens); any other content is left alone and
reported. What was done is recorded in ``<jittor>/jhssl_patches.json``.

    python run/patch_jittor.py            # patch the installed jittor (no import of jittor itself)
    python run/patch_jittor.py --check    # report only (exit 1 if something is unpatched)
    python run/patch_jittor.py --root DIR # patch a copy (tests)

The failures these fix were reproduced by compiling with nvcc 13.0 (tests/test_cuda_compile.py):

* ``extern/cuda/inc/helper_cuda.h``: ``cudaDeviceProp::computeMode`` and ``::clockRate`` were
  removed in CUDA 13; read them with ``cudaDeviceGetAttribute`` instead (same values).
* ``compiler.py``: nvcc inherits ``-std=c++14`` from the host flags; CUDA 12/13's CUB (CCCL)
  needs C++17. nvcc >= 12 now gets ``-std=c++17``.
* ``other/code_softmax.py``: ``cub::Max`` is gone from CCCL 3 (CUDA 13): a plain max functor.
* ``depthwise_conv.py``: ``cub::LaneId`` is gone from CCCL 3: the PTX ``%laneid`` register.
* ``compile_extern.py``: cuDNN 8's split libraries (``libcudnn_cnn_train.so`` ...) are preloaded
  unconditionally; with cuDNN 9 (other names) ``import jittor`` died. Missing ones are skipped.
* ``extern/cuda/nccl/src/nccl_wrapper.cc``: with one visible GPU per rank (``CUDA_VISIBLE_DEVICES``
  set per rank by jhssl's bootstrap, models/cuda_detect.py) Jittor saw "more local ranks than
  devices" and silently fell back to CPU all-reduces; ``JHSSL_ONE_GPU_PER_RANK=1`` keeps NCCL.

Not patched here: cutt's use of the removed ``clockRate`` (cutt is unpacked from its archive at
first CUDA use; ``use_cutt=0`` avoids it, which jhssl's bootstrap sets for CUDA >= 13).
"""
import argparse
import hashlib
import json
import os
import sys
import sysconfig

MARK = "jhssl-patch"

# (relative path, [(old, new), ...]); every ``new`` contains MARK so a patched file is recognised
PATCHES = {
    "extern/cuda/inc/helper_cuda.h": [
        ("#ifndef EXIT_WAIVED\n",
         "#if defined(__CUDA_RUNTIME_H__) || defined(__CUDACC__)\n"
         "// jhssl-patch: CUDA 13 removed cudaDeviceProp::computeMode and ::clockRate\n"
         "static inline int jt_dev_attr(cudaDeviceAttr a, int dev) {\n"
         "  int v = 0; cudaDeviceGetAttribute(&v, a, dev); return v; }\n"
         "#endif\n"
         "#ifndef EXIT_WAIVED\n"),
        ("if (deviceProp.computeMode == cudaComputeModeProhibited) {",
         "if (jt_dev_attr(cudaDevAttrComputeMode, devID) == cudaComputeModeProhibited) { // jhssl-patch"),
        ("    if (deviceProp.computeMode != cudaComputeModeProhibited) {\n",
         "    if (jt_dev_attr(cudaDevAttrComputeMode, current_device) != cudaComputeModeProhibited) { // jhssl-patch\n"),
        ("sm_per_multiproc * deviceProp.clockRate;",
         "sm_per_multiproc * jt_dev_attr(cudaDevAttrClockRate, current_device); // jhssl-patch"),
        ("(deviceProp.computeMode != cudaComputeModeProhibited)) {",
         "(jt_dev_attr(cudaDevAttrComputeMode, current_device) != cudaComputeModeProhibited)) { // jhssl-patch"),
    ],
    "compiler.py": [
        ("    nvcc_flags = convert_nvcc_flags(nvcc_flags)\n",
         "    nvcc_flags = convert_nvcc_flags(nvcc_flags)\n"
         "    if nvcc_version >= [12, 0]:  # jhssl-patch: CUDA 12/13's CUB (CCCL) needs C++17\n"
         "        nvcc_flags = nvcc_flags.replace(\"-std=c++14\", \"-std=c++17\")\n"),
    ],
    "other/code_softmax.py": [
        ("Reduce(v1, cub::Max());",
         "Reduce(v1, [](float a, float b) {{ return ::max(a, b); }}); // jhssl-patch: no cub::Max in CCCL 3"),
    ],
    "depthwise_conv.py": [
        ("    if (cub::LaneId() == 0) \n",
         "    unsigned lane_id; asm(\"mov.u32 %0, %%laneid;\" : \"=r\"(lane_id)); // jhssl-patch: no cub::LaneId in CCCL 3\n"
         "    if (lane_id == 0) \n"),
    ],
    "compile_extern.py": [
        ("                    ex_cudnn_path = search_file([cuda_bin, cuda_lib, extra_lib_path, f\"/usr/lib/{arch_key}-linux-gnu\", \"/usr/lib\"], l, prefer_version)\n"
         "                    ctypes.CDLL(ex_cudnn_path, dlopen_flags)\n",
         "                    try:  # jhssl-patch: cuDNN 9 has no cuDNN 8 split libraries\n"
         "                        ex_cudnn_path = search_file([cuda_bin, cuda_lib, extra_lib_path, f\"/usr/lib/{arch_key}-linux-gnu\", \"/usr/lib\"], l, prefer_version)\n"
         "                    except Exception:\n"
         "                        continue\n"
         "                    ctypes.CDLL(ex_cudnn_path, dlopen_flags)\n"),
    ],
    "extern/cuda/nccl/src/nccl_wrapper.cc": [
        ("    if (mpi_local_size > device_count) {\n",
         "    if (mpi_local_size > device_count && !getenv(\"JHSSL_ONE_GPU_PER_RANK\")) { // jhssl-patch\n"),
    ],
}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def apply_text(text, pairs):
    """``text`` with every (old, new) applied once; raises KeyError naming a missing ``old``."""
    for old, new in pairs:
        if text.count(old) != 1:
            raise KeyError(f"expected exactly one occurrence of {old.strip()[:60]!r}, found {text.count(old)}")
        text = text.replace(old, new)
    return text


def patch_tree(root, check_only=False):
    """Patch the Jittor package at ``root``; returns {relpath: 'patched'|'already'|'missing'|error}."""
    report = {}
    for rel, pairs in PATCHES.items():
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            report[rel] = "missing"
            continue
        with open(path) as f:
            text = f.read()
        if MARK in text:
            report[rel] = "already"
            continue
        try:
            new = apply_text(text, pairs)
        except KeyError as e:
            report[rel] = f"not patched: {e.args[0]} (another Jittor version?)"
            continue
        if check_only:
            report[rel] = "unpatched"
            continue
        tmp = path + ".jhssl_tmp"
        with open(tmp, "w") as f:
            f.write(new)
        os.replace(tmp, path)
        report[rel] = "patched"
        report[rel + ":sha256"] = {"before": sha256(text), "after": sha256(new)}
    if not check_only:
        with open(os.path.join(root, "jhssl_patches.json"), "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    return report


def installed_jittor():
    """The installed jittor package folder, found without importing jittor."""
    for base in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path):
        cand = os.path.join(base or "", "jittor")
        if os.path.isfile(os.path.join(cand, "compiler.py")):
            return cand
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="a Jittor package folder (default: the installed one)")
    ap.add_argument("--check", action="store_true", help="report only")
    a = ap.parse_args(argv)
    root = a.root or installed_jittor()
    if not root:
        print("patch_jittor: jittor is not installed", file=sys.stderr)
        return 1
    report = patch_tree(root, a.check)
    bad = {k: v for k, v in report.items() if isinstance(v, str) and v not in ("patched", "already", "missing")}
    for k, v in report.items():
        if isinstance(v, str):
            print(f"patch_jittor: {k}: {v}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
