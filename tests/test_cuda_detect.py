"""CUDA detection and one-GPU-per-rank selection (models/cuda_detect.py) in faked environments:
fake /proc and /dev trees, fake nvcc binaries and wrapper scripts in tmp dirs. No jittor import."""
import importlib.util
import os
import stat
import subprocess
import sys

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "cuda_detect.py")
_spec = importlib.util.spec_from_file_location("cuda_detect_under_test", _PATH)
cd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cd)


def _no_which(_name):
    return None


def _fail_run(*a, **k):
    raise AssertionError("no subprocess expected")


def _toolkit(root, name="cuda-13.0", lib="lib64"):
    """A fake toolkit: an ELF-looking bin/nvcc and <lib>/libcudart.so."""
    home = root / "usr" / "local" / name
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_bytes(b"\x7fELF fake")
    nvcc.chmod(0o755)
    (home / lib).mkdir()
    (home / lib / "libcudart.so").write_bytes(b"")
    return nvcc


def _script(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _gpus(root, n):
    for i in range(n):
        (root / "proc" / "driver" / "nvidia" / "gpus" / f"0000:0{i}:00.0").mkdir(parents=True)


# ----------------------------------------------------------------------------- driver
def test_gpus_counted_from_proc_dev_or_nvidia_smi(tmp_path):
    assert cd.gpu_ids(str(tmp_path), _fail_run, _no_which) == []
    (tmp_path / "dev").mkdir()
    for n in ("nvidiactl", "nvidia0", "nvidia1", "nvidia-uvm"):
        (tmp_path / "dev" / n).write_text("")
    assert cd.gpu_ids(str(tmp_path), _fail_run, _no_which) == [0, 1]
    _gpus(tmp_path, 3)
    assert cd.gpu_ids(str(tmp_path), _fail_run, _no_which) == [0, 1, 2]

    class Out:
        returncode, stdout = 0, "GPU 0: NVIDIA H200 (UUID: GPU-a)\nGPU 1: NVIDIA H200 (UUID: GPU-b)\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cd.gpu_ids(str(empty), lambda *a, **k: Out(), lambda n: "/usr/bin/nvidia-smi") == [0, 1]
    Out.returncode = 9  # nvidia-smi present but no driver loaded
    assert cd.gpu_ids(str(empty), lambda *a, **k: Out(), lambda n: "/usr/bin/nvidia-smi") == []


def test_visible_gpus_honours_cuda_visible_devices():
    assert cd.visible_gpus({}, [0, 1]) == ["0", "1"]
    assert cd.visible_gpus({"CUDA_VISIBLE_DEVICES": "1"}, [0, 1]) == ["1"]
    assert cd.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, [0, 1]) == []
    assert cd.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, [0, 1]) == []
    assert cd.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b"}, [0, 1]) == ["GPU-a", "GPU-b"]


# ----------------------------------------------------------------------------- toolkit
def test_nvcc_found_off_path_and_wrapper_resolved(tmp_path):
    real = _toolkit(tmp_path)
    os.symlink(real.parent.parent, tmp_path / "usr" / "local" / "cuda")
    # not on PATH: /usr/local/cuda/bin/nvcc is found, resolved through the symlink
    assert cd.find_nvcc({}, _no_which, _fail_run, str(tmp_path)) == str(real)
    # a wrapper script on PATH (this machine's /usr/local/bin/nvcc): the exec'd target
    wrapper = _script(tmp_path / "usr" / "bin" / "nvcc", f'#!/bin/sh\nexec {real} "$@"\n')
    assert cd.resolve_nvcc(str(wrapper), _fail_run) == str(real)
    # wrapper of a wrapper
    outer = _script(tmp_path / "opt" / "bin" / "nvcc", f'#!/bin/sh\nexec "{wrapper}" "$@"\n')
    assert cd.resolve_nvcc(str(outer), _fail_run) == str(real)
    # a wrapper that hides the path (environment module style): nvcc -dryrun tells _HERE_
    opaque = _script(tmp_path / "mod" / "nvcc", '#!/bin/sh\nexec "$CUDA_BIN/nvcc" "$@"\n')

    class Out:
        stdout, stderr = "", f"#$ _NVVM_BRANCH_=nvvm\n#$ _HERE_={real.parent}\n#$ _THERE_={real.parent}\n"
    assert cd.resolve_nvcc(str(opaque), lambda *a, **k: Out()) == str(real)
    # PATH's wrapper is tried before the defaults and resolves to the real toolkit
    assert cd.find_nvcc({}, lambda n: str(wrapper), _fail_run, str(tmp_path)) == str(real)


def test_nvcc_search_order_and_runtime_check(tmp_path):
    old = _toolkit(tmp_path, "cuda-12.4")
    new = _toolkit(tmp_path, "cuda-13.0", lib="lib")  # lib64 -> lib, as in CUDA 13 pip-style layouts
    assert cd.find_nvcc({}, _no_which, _fail_run, str(tmp_path)) == str(new)  # newest versioned folder
    assert cd.find_nvcc({"CUDA_HOME": str(old.parent.parent)}, _no_which, _fail_run, str(tmp_path)) == str(old)
    assert cd.find_nvcc({"nvcc_path": str(old)}, _no_which, _fail_run, str(tmp_path)) == str(old)
    # a toolkit without the runtime library is skipped (Jittor would die loading libcudart.so)
    os.remove(old.parent.parent / "lib64" / "libcudart.so")
    assert cd.find_nvcc({"CUDA_HOME": str(old.parent.parent)}, _no_which, _fail_run, str(tmp_path)) == str(new)


def test_this_machines_wrapper_resolves_to_the_real_toolkit():
    if not os.path.isfile("/usr/local/bin/nvcc") or not os.path.isdir("/usr/local/cuda/bin"):
        pytest.skip("no nvcc wrapper on this machine")
    real = cd.resolve_nvcc("/usr/local/bin/nvcc")
    assert real and real.endswith("/bin/nvcc") and cd.has_runtime(cd.toolkit_root(real))
    assert not real.startswith("/usr/local/bin")


# ----------------------------------------------------------------------------- decision
def test_cpu_unless_a_driver_shows_a_gpu(tmp_path):
    _toolkit(tmp_path)
    env = {}
    assert cd.prepare_environ(env, str(tmp_path), _no_which, _fail_run, sys_path=[]) is False  # nvcc but no driver
    assert env["nvcc_path"] == ""
    with pytest.raises(cd.CudaSetupError, match="no NVIDIA driver"):
        cd.prepare_environ({"JHSSL_DEVICE": "cuda"}, str(tmp_path), _no_which, _fail_run, sys_path=[])
    with pytest.raises(cd.CudaSetupError, match="JHSSL_DEVICE='gpu'"):
        cd.prepare_environ({"JHSSL_DEVICE": "gpu"}, str(tmp_path), _no_which, _fail_run, sys_path=[])


def test_cuda_with_driver_and_toolkit_off_path(tmp_path):
    real = _toolkit(tmp_path)
    _gpus(tmp_path, 2)
    env = {}
    assert cd.prepare_environ(env, str(tmp_path), _no_which, _fail_run, sys_path=[]) is True
    assert env["nvcc_path"] == str(real) and "CUDA_VISIBLE_DEVICES" not in env  # not under mpirun
    env = {"JHSSL_DEVICE": "cpu"}
    assert cd.prepare_environ(env, str(tmp_path), _no_which, _fail_run, sys_path=[]) is False and env["nvcc_path"] == ""
    # a driver but no toolkit: cpu (auto) or a one-line error (cuda)
    bare = tmp_path / "bare"
    _gpus(bare, 1)
    assert cd.prepare_environ({}, str(bare), _no_which, _fail_run, sys_path=[]) is False
    with pytest.raises(cd.CudaSetupError, match="no CUDA toolkit"):
        cd.prepare_environ({"JHSSL_DEVICE": "cuda"}, str(bare), _no_which, _fail_run, sys_path=[])


# ----------------------------------------------------------------------------- ranks
def _mpi(rank, size, **extra):
    return {"OMPI_COMM_WORLD_LOCAL_RANK": str(rank), "OMPI_COMM_WORLD_LOCAL_SIZE": str(size), **extra}


@pytest.mark.parametrize("n_gpus", [2, 4, 8])
def test_each_rank_gets_its_own_gpu(tmp_path, n_gpus):
    _toolkit(tmp_path)
    _gpus(tmp_path, n_gpus)
    chosen = []
    for r in range(n_gpus):
        env = _mpi(r, n_gpus)
        assert cd.prepare_environ(env, str(tmp_path), _no_which, _fail_run, sys_path=[])
        chosen.append(env["CUDA_VISIBLE_DEVICES"])
        assert env["JHSSL_ONE_GPU_PER_RANK"] == "1" and "use_nccl" not in env
    assert chosen == [str(i) for i in range(n_gpus)]
    # fewer ranks than GPUs: ranks take the first ones
    assert cd.rank_gpu(_mpi(1, 2), ["0", "1", "2", "3"]) == "1"
    # the scheduler's CUDA_VISIBLE_DEVICES list is indexed by local rank
    assert cd.rank_gpu(_mpi(1, 2, CUDA_VISIBLE_DEVICES="5,7"), ["5", "7"]) == "7"


def test_more_ranks_than_gpus_is_a_startup_error(tmp_path):
    with pytest.raises(cd.CudaSetupError, match="3 MPI ranks on this node but 2 GPUs"):
        cd.rank_gpu(_mpi(2, 3), ["0", "1"])
    with pytest.raises(cd.CudaSetupError, match="2 MPI ranks on this node but only 1 GPU"):
        cd.rank_gpu(_mpi(1, 2), ["0"])
    # explicit sharing: round-robin, NCCL off
    _toolkit(tmp_path)
    _gpus(tmp_path, 1)
    for r in range(2):
        env = _mpi(r, 2, JHSSL_GPU_SHARING="1")
        assert cd.prepare_environ(env, str(tmp_path), _no_which, _fail_run, sys_path=[])
        assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["use_nccl"] == "0"
        assert "JHSSL_ONE_GPU_PER_RANK" not in env
    # one GPU per rank already bound by the scheduler (1 visible, set from outside): fine
    env = _mpi(1, 4, CUDA_VISIBLE_DEVICES="3")
    assert cd.prepare_environ(env, str(tmp_path), _no_which, _fail_run, sys_path=[])
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["JHSSL_ONE_GPU_PER_RANK"] == "1"


def test_bootstrap_startup_error_is_one_line(tmp_path):
    """A bad JHSSL_DEVICE ends `import jhssl` with one line naming the problem, before jittor loads."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JHSSL_DEVICE": "tpu", "PYTHONPATH": repo}
    out = subprocess.run([sys.executable, "-c", "import jhssl.bootstrap"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == "jhssl: JHSSL_DEVICE='tpu': use one of auto, cpu, cuda"


def test_cuda13_turns_cutt_off_and_nccl_wheel_paths_are_used(tmp_path):
    real = _toolkit(tmp_path)  # cuda-13.0
    _gpus(tmp_path, 1)
    assert cd.toolkit_version(str(real)) == (13, 0)
    site = tmp_path / "site"
    nccl = site / "nvidia" / "nccl"
    (nccl / "include").mkdir(parents=True)
    (nccl / "lib").mkdir()
    (nccl / "lib" / "libnccl.so.2").write_bytes(b"")
    env = {}
    assert cd.prepare_environ(env, str(tmp_path), _no_which, _fail_run, sys_path=[str(site)])
    assert env["use_cutt"] == "0" and "nccl_lib_path" not in env  # no unversioned libnccl.so yet
    os.symlink("libnccl.so.2", nccl / "lib" / "libnccl.so")
    env = {}
    cd.prepare_environ(env, str(tmp_path), _no_which, _fail_run, sys_path=[str(site)])
    assert env["nccl_include_path"] == str(nccl / "include") and env["nccl_lib_path"] == str(nccl / "lib")
    env = {"nccl_lib_path": "/mine", "use_cutt": "1"}  # the user's settings win
    cd.prepare_environ(env, str(tmp_path), _no_which, _fail_run, sys_path=[str(site)])
    assert env["nccl_lib_path"] == "/mine" and env["use_cutt"] == "1"
