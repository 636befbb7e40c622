"""Distributed (MPI) helpers. Without MPI every function is the single-process answer.

Jittor runs data-parallel under ``mpirun -np N python ...`` (OpenMPI; NCCL on GPUs). What Jittor
does by itself, and what is left to us (read in jittor/__init__.py, optim.py, nn.py,
dataset/dataset.py, 1.3.11):

* ``Optimizer.backward`` averages the gradients over ranks (``mpi_all_reduce('mean')``) and, on
  its first step, broadcasts the *trained* parameters from rank 0. Nothing else is synchronised:
  the teacher (EMA copy, never optimised), stop-grad buffers (BatchNorm running statistics, the
  fixed ``weight_g`` of a normalised last layer) and the loss centers are ours.
  :func:`broadcast_module` / :func:`sync_initial_state` send all of them from rank 0 once.
* ``jt.set_global_seed`` offsets the seed by ``rank * 2591``, so each rank builds different
  initial weights: the broadcast is what makes them identical.
* ``jt.nn.BatchNorm`` defaults to ``sync=True``: under MPI its batch mean and mean square are
  all-reduced (mean over ranks, i.e. over the global batch when shards are equal), and the
  gradient flows through that all-reduce correctly (its backward is the all-reduce of the
  upstream gradients divided by N, before the optimizer's own mean).
* A Dataset's ``batch_size`` is global; rank r takes positions ``[r*b, (r+1)*b)`` of each global
  batch, ``b = batch_size / N``. :func:`check_batch_size` rejects a batch N does not divide.
* ``mpi_all_reduce`` / ``mpi_broadcast`` handle float32, float64 and int32 (int64 maps to a wrong
  MPI type), so the numpy helpers below move data as float64 (exact for integers < 2**53).

Failure: an exception on one rank leaves the others blocked in the next all-reduce forever.
:func:`install_failure_handler` (installed when this module is imported under MPI, and called
again by the entry points) makes an uncaught exception print ``rank R failed: ...`` and end the
process with ``os._exit(1)``; mpirun then aborts the whole job (seconds, non-zero).
:func:`exit_process` does the same for an error exit code.
"""
from jhssl import bootstrap  # noqa: F401

import os
import pickle
import sys
import traceback

import numpy as np
import jittor as jt

__all__ = ["world_size", "rank", "is_main", "in_mpi", "all_reduce_mean", "all_reduce_sum", "all_reduce_np",
           "all_gather_rows", "all_gather_var", "broadcast_np", "broadcast_object", "broadcast_module", "sync_initial_state",
           "barrier", "check_batch_size", "install_failure_handler", "exit_process", "max_divergence"]


def in_mpi() -> bool:
    return bool(jt.in_mpi)


def world_size() -> int:
    return jt.world_size if jt.in_mpi else 1


def rank() -> int:
    return jt.rank if jt.in_mpi else 0


def is_main() -> bool:
    return rank() == 0


# ----------------------------------------------------------------------------- Vars
def all_reduce_mean(var):
    """Mean of ``var`` over all MPI ranks (the identity in a single process). Equal-sized
    per-rank batches make the mean of per-rank batch means the global-batch mean."""
    if jt.in_mpi:
        return var.mpi_all_reduce("mean")
    return var


def all_reduce_sum(var):
    """Sum of ``var`` over all MPI ranks (the identity in a single process)."""
    if jt.in_mpi:
        return var.mpi_all_reduce("add")
    return var


# ----------------------------------------------------------------------------- numpy
def _as_float64(arr):
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"only numeric arrays can be reduced across ranks, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def all_reduce_np(arr, op: str = "add") -> np.ndarray:
    """``op`` ('add' | 'mean') of a numpy array over all ranks; returns float64 (a copy in a
    single process). Integers stay exact below 2**53."""
    if op not in ("add", "mean"):
        raise ValueError(f"op must be 'add' or 'mean', got {op!r}")
    x = _as_float64(arr)
    if not jt.in_mpi:
        return x.copy()
    if x.size == 0:
        return x.copy()
    return jt.array(x).mpi_all_reduce(op).numpy()


def all_gather_rows(arr) -> np.ndarray:
    """Concatenate every rank's rows (axis 0) in rank order; ranks may hold different numbers
    of rows, the other axes must agree. Works through a zero-padded buffer and one all-reduce
    'add' (exact: each entry is one rank's value plus zeros). Keeps ``arr``'s dtype."""
    arr = np.asarray(arr)
    if not jt.in_mpi:
        return arr.copy()
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim > 8:
        raise ValueError(f"all_gather_rows: at most 8 dimensions, got {arr.ndim}")
    n, r = world_size(), rank()
    # one all-reduce tells every rank each rank's row count, ndim and trailing shape
    sig = np.zeros((n, 9))
    sig[r, 0], sig[r, 1] = arr.shape[0], arr.ndim
    sig[r, 2:1 + arr.ndim] = arr.shape[1:]
    sig = all_reduce_np(sig)
    if not (sig[:, 1:] == sig[r, 1:]).all():
        raise ValueError(f"all_gather_rows: ranks hold arrays of different trailing shapes "
                         f"(this rank {arr.shape[1:]})")
    counts = sig[:, 0].astype(np.int64)
    offset = int(counts[:r].sum())
    buf = np.zeros((int(counts.sum()),) + arr.shape[1:], dtype=np.float64)
    buf[offset:offset + arr.shape[0]] = _as_float64(arr)
    out = all_reduce_np(buf)
    return out.astype(arr.dtype) if arr.dtype != np.bool_ else out.astype(bool)


def all_gather_var(var):
    """Every rank's rows of ``var`` concatenated in rank order, inside the graph (MoCo's keys).

    All ranks must pass the same shape. Each rank places its rows in a zero buffer and one
    all-reduce 'add' fills the rest (exact). No gradient flows back to the other ranks: use it
    on stop-grad values (as torch's ``concat_all_gather``)."""
    if not jt.in_mpi:
        return var
    n, r, rows = world_size(), rank(), var.shape[0]
    tail = tuple(var.shape[1:])
    pieces = ([jt.zeros((r * rows,) + tail, var.dtype)] if r else []) + [var.detach()] \
        + ([jt.zeros(((n - 1 - r) * rows,) + tail, var.dtype)] if r < n - 1 else [])
    return jt.concat(pieces, dim=0).mpi_all_reduce("add").stop_grad()


def broadcast_np(arr, root: int = 0) -> np.ndarray:
    """Rank ``root``'s array on every rank (float64; the shape must agree on all ranks)."""
    x = _as_float64(arr)
    if not jt.in_mpi or x.size == 0:
        return x.copy()
    return jt.array(x).mpi_broadcast(root).numpy()


def broadcast_object(obj, root: int = 0):
    """Rank ``root``'s picklable ``obj`` on every rank (e.g. the checkpoint path to resume)."""
    if not jt.in_mpi:
        return obj
    payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if rank() == root else np.zeros(0, np.uint8)
    size = int(broadcast_np(np.array([payload.size]), root)[0])
    buf = payload if rank() == root else np.zeros(size, np.uint8)
    data = jt.array(buf).mpi_broadcast(root).numpy()
    return pickle.loads(data.astype(np.uint8).tobytes())


def barrier():
    """Block until every rank got here (an all-reduce of one number)."""
    if jt.in_mpi:
        jt.array(np.ones(1, np.float32)).mpi_all_reduce("add").sync()


# ----------------------------------------------------------------------------- modules
def _state_vars(module):
    """Every Var a module holds, trained or not (parameters, BatchNorm statistics, centers)."""
    return list(module.state_dict().values())


def broadcast_module(module, root: int = 0):
    """Overwrite every Var of ``module`` (parameters *and* stop-grad buffers) with rank
    ``root``'s value; keeps each Var's identity and stop-grad flag."""
    if not jt.in_mpi:
        return
    for v in _state_vars(module):
        if str(v.dtype) in ("float32", "float64", "int32", "uint8"):
            new = v.mpi_broadcast(root)
        else:  # int64 and others have no matching MPI type in Jittor: go through float64
            # (jt.array turns int64 numpy into int32: cast back to the Var's own dtype)
            new = jt.array(broadcast_np(v.numpy(), root)).cast(str(v.dtype))
        # one collective at a time (a precaution): nothing guarantees that a lazy graph of many
        # independent broadcasts runs them in the same order on every rank
        new.sync()
        was_stop = v.is_stop_grad()
        v.update(new.detach())
        if was_stop:
            v.stop_grad()


def sync_initial_state(method, root: int = 0):
    """Identical start on every rank: student, teacher and loss state (centers) from ``root``.
    Call after building the method (and before resuming, which then loads the same file)."""
    mods = method.synced_modules()
    # Materialise the lazy initialisation in one graph first, with or without MPI: Jittor draws
    # random numbers when an op runs, so running the init ops one broadcast at a time would draw
    # them in another order than a single process does (ranks would agree with each other but
    # not with a single-process run of the same seed).
    jt.sync([v for mod in mods for v in _state_vars(mod)])
    for mod in mods:
        broadcast_module(mod, root)


def max_divergence(module) -> float:
    """Largest |value - rank 0's value| over all Vars of ``module`` and all ranks (0.0 alone).
    A collective call: every rank must make it."""
    if not jt.in_mpi:
        return 0.0
    worst = 0.0
    for v in _state_vars(module):
        x = v.numpy().astype(np.float64)
        ref = broadcast_np(x, 0)
        worst = max(worst, float(np.abs(x - ref).max()) if x.size else 0.0)
    return float(np.max(all_gather_rows(np.array([worst]))))


def check_batch_size(batch_size: int, what: str = "batch_size"):
    """``batch_size`` is global: it must split evenly over the ranks (checked before compute)."""
    n = world_size()
    if int(batch_size) % n != 0:
        raise ValueError(f"{what}={batch_size} is the global batch and must be divisible by the number of "
                         f"MPI ranks ({n}); use a multiple of {n}, e.g. {max(n, int(batch_size) // n * n)}")
    return int(batch_size) // n


# ----------------------------------------------------------------------------- failure
_HANDLER_INSTALLED = False


def install_failure_handler():
    """Under MPI, make an uncaught exception on any rank end the whole job instead of hanging it.

    The hook prints ``rank R failed: <error>`` and the traceback to stderr, then ``os._exit(1)``
    (no MPI_Finalize, which would wait for the other ranks): mpirun sees a rank die and kills
    the rest within seconds. Without MPI nothing changes. Idempotent."""
    global _HANDLER_INSTALLED
    if _HANDLER_INSTALLED or not jt.in_mpi:
        return
    _HANDLER_INSTALLED = True

    def hook(exc_type, exc, tb):
        code = 130 if issubclass(exc_type, KeyboardInterrupt) else 1
        try:
            msg = "".join(traceback.format_exception(exc_type, exc, tb))
            sys.stderr.write(f"rank {rank()} failed: {exc_type.__name__}: {exc}\n{msg}"
                             f"rank {rank()} failed: aborting the MPI job\n")
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            os._exit(code)

    sys.excepthook = hook


def exit_process(code: int):
    """End the process with ``code``. Under MPI a non-zero code skips MPI_Finalize (which would
    block on ranks still running) so that mpirun aborts the job at once."""
    code = int(code or 0)
    if code and jt.in_mpi:
        sys.stderr.write(f"rank {rank()} failed: exit code {code}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


# Any process that runs under mpirun and imports this module (the trainer, the losses, k-NN,
# the search all do) gets the handler, so no entry point can forget it; outside MPI: nothing.
install_failure_handler()
