"""Read and write weight files of every kind we meet, as numpy, without needing torch or jittor.

Supported inputs (detected from the file's bytes, not its name):

* safetensors (``.safetensors``): read by :mod:`jhssl.safetensors_io`; holds no code.
* PyTorch zip checkpoints (``.pth``/``.pt``/``.bin``, torch >= 1.6): read from the zip archive with a
  restricted unpickler; tensors become numpy arrays; torch is not needed.
* PyTorch legacy (pre-1.6) checkpoints: read with torch (``weights_only``) when it is installed.
* ``jt.save`` pickles (``.pkl``, the authors' ``checkpoint.pth.tar``): pickle protocol 4 followed by a
  SHA-1 of the pickle and the tag ``HCAJSLHD``; the checksum is verified, so a truncated or damaged
  file is reported as such; ``jittor.Var`` objects become numpy arrays, jittor is not needed.
* plain pickles of dicts of numpy arrays.

Security: pickled checkpoints (``.pth``, ``.pkl``, ``.pth.tar``) can run arbitrary code when they are
unpickled. Load only files you trust. By default the loaders here unpickle through an allow-list
(containers, numpy arrays, jittor Vars, torch tensors/storages, ``argparse.Namespace``) and refuse any
other global with :class:`UnsafePickleError`; pass ``trusted=True`` only for files from a trusted source.
When we write weights we prefer safetensors, which cannot carry code.

Every writer here is atomic: the bytes go to a temporary file in the destination directory, which is
then renamed over the destination with ``os.replace``; on any error the temporary file is removed,
so a partial file is never left under the destination name.
"""
import argparse
import codecs
import collections
import hashlib
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Dict, Optional

import numpy as np

from .errors import CorruptFileError, TorchMissingError, UnsafePickleError  # noqa: F401  (re-exported)
from . import safetensors_io  # no cycle: both take their error types from the leaf jhssl.errors
from .fileio import atomic_write  # noqa: F401  (re-exported: weights_io.atomic_write)

JITTOR_TAG = b"HCAJSLHD"  # trailer jt.save appends after the pickle and its 20-byte SHA-1
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def save_jittor_pickle(obj: Any, path: str) -> None:
    """Write ``obj`` in ``jt.save``'s format (``jt.load`` reads it back), atomically.

    Arrays should be numpy (convert jittor Vars with :func:`to_numpy_tree`) so the file loads without jittor.
    The pickle is streamed to the file (the same bytes as ``pickle.dumps(obj, 4)``, hashed on the
    way): ``jt.save`` builds it in memory and then copies it once more to append the trailer, three
    times the file's size at its peak (~350 MB for the demo's 118 MB checkpoint).
    """
    def write(f):
        hashing = _HashingWriter(f)
        pickle.dump(obj, hashing, protocol=4)
        f.write(hashing.sha1.digest())
        f.write(JITTOR_TAG)
    atomic_write(path, write)


class _HashingWriter:
    """A file's ``write`` that also feeds a SHA-1 of everything written."""

    def __init__(self, f):
        self.f, self.sha1 = f, hashlib.sha1()

    def write(self, data):
        self.sha1.update(data)
        return self.f.write(data)


def output_kind(path: str) -> str:
    """'safetensors', 'torch' (.pth/.pt/.bin) or 'jittor' (.pkl and anything else: jt.save's format)."""
    p = path.lower()
    if p.endswith(".safetensors"):
        return "safetensors"
    if p.endswith((".pth", ".pt", ".bin")):
        return "torch"
    return "jittor"


def write_weights(tree: Any, path: str, metadata: Optional[Dict[str, str]] = None) -> str:
    """Write weights by extension (.safetensors / .pth / else jt.save .pkl), atomically; returns the kind.

    safetensors cannot nest, so nested dicts are flattened with '.' (``teacher.backbone.x``), which
    :func:`jhssl.convert.unwrap` undoes.
    """
    kind = output_kind(path)
    if kind == "safetensors":
        safetensors_io.save_file(flat_arrays(tree), path, metadata=metadata)
    elif kind == "torch":
        save_torch(tree, path)
    else:
        save_jittor_pickle(tree, path)
    return kind


def torch_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def save_torch(obj: Any, path: str) -> None:
    """``torch.save`` a tree of numpy arrays as torch tensors, atomically. Needs torch."""
    if not torch_available():
        raise TorchMissingError.writing_pth(path)
    import torch

    def convert(x):
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.array(x, order="C", copy=True))  # keeps 0-d arrays 0-d
        if isinstance(x, dict):
            return type(x)((k, convert(v)) for k, v in x.items()) if isinstance(x, collections.OrderedDict) \
                else {k: convert(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(convert(v) for v in x)
        return x

    tree = convert(obj)
    atomic_write(path, lambda f: torch.save(tree, f))


# --------------------------------------------------------------------------------------------------
# numpy conversion


def to_numpy_tree(obj: Any) -> Any:
    """Replace jittor Vars and torch tensors anywhere in a nested dict/list by numpy arrays."""
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, dict):
        return {k: to_numpy_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_numpy_tree(v) for v in obj)
    mod = type(obj).__module__ or ""
    if mod.startswith("jittor") and hasattr(obj, "numpy"):
        return np.asarray(obj.numpy())
    if mod.startswith("torch") and hasattr(obj, "detach"):
        t = obj.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return obj


# --------------------------------------------------------------------------------------------------
# restricted unpickling


class _TorchStorageType:
    """Stands in for ``torch.FloatStorage`` etc. inside a torch pickle."""

    _DTYPES = {
        "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
        "BFloat16Storage": "bf16", "LongStorage": np.int64, "IntStorage": np.int32,
        "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    }

    def __init__(self, name: str):
        self.name = name
        self.dtype = self._DTYPES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    size, stride = tuple(size), tuple(stride)
    if not isinstance(storage, np.ndarray):
        raise CorruptFileError(f"tensor without storage data ({type(storage).__name__})")
    # Bounds-check the view before as_strided, which would otherwise read outside the buffer.
    last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride)) if all(size) else storage_offset - 1
    if storage_offset < 0 or any(st < 0 for st in stride) or len(stride) != len(size) or last >= storage.size:
        raise CorruptFileError(f"tensor view (offset {storage_offset}, size {size}, stride {stride}) lies "
                               f"outside its storage of {storage.size} elements: the file is corrupted")
    if not size:  # a 0-d tensor (BatchNorm's num_batches_tracked): a 0-d array, not a numpy scalar
        return storage[storage_offset:storage_offset + 1].reshape(()).copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=tuple(s * itemsize for s in stride))
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_state):
    return data


def _jittor_var(data, *_ignored):
    # jittor pickles a Var as (Var, (ndarray,)): the array is the value.
    return np.asarray(data)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
    ("builtins", "complex"): complex, ("builtins", "bytearray"): bytearray,
    ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "tuple"): tuple,
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    ("jittor", "jittor_core.Var"): _jittor_var, ("jittor_core", "Var"): _jittor_var,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    ("torch.serialization", "_get_layout"): lambda name: name,
    ("torch", "device"): str,
    ("pathlib", "PosixPath"): str, ("pathlib", "WindowsPath"): str, ("pathlib", "Path"): str,
}
for _m in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_m, "_reconstruct")] = np.core.multiarray._reconstruct
    _ALLOWED[(_m, "scalar")] = np.core.multiarray.scalar
for _name in _TorchStorageType._DTYPES:
    _ALLOWED[("torch", _name)] = (lambda n: (lambda: _TorchStorageType(n)))(_name)


def _numpy_scalar_type(module: str, name: str):
    # numpy scalar and dtype classes (numpy.float64, numpy.dtypes.Float32DType, ...) are harmless.
    if module in ("numpy", "numpy.dtypes"):
        obj = getattr(np, name, None) if module == "numpy" else getattr(getattr(np, "dtypes", None), name, None)
        if isinstance(obj, type) and (issubclass(obj, np.generic) or issubclass(obj, np.dtype)):
            return obj
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str, trusted: bool, persistent_load=None):
        super().__init__(file)
        self._path = path
        self._trusted = trusted
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module, name):
        key = (module, name)
        if key in _ALLOWED:
            target = _ALLOWED[key]
            # Storage markers are looked up as classes but must be instances for persistent_load.
            return target() if module == "torch" and name in _TorchStorageType._DTYPES else target
        scalar = _numpy_scalar_type(module, name)
        if scalar is not None:
            return scalar
        if self._trusted:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._path}: refusing to unpickle '{module}.{name}': pickled checkpoints can run code when "
            "loaded, and this global is not on the allow-list. If you trust this file, load it with "
            "trusted=True (command line: --trust-pickle).")


def _unpickle(data: bytes, path: str, trusted: bool, persistent_load=None) -> Any:
    try:
        return _RestrictedUnpickler(io.BytesIO(data), path, trusted, persistent_load).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, IndexError, struct.error) as e:
        raise CorruptFileError(f"{path}: truncated or corrupted pickle ({type(e).__name__}: {e}); "
                               "re-download or re-create the file") from None


# --------------------------------------------------------------------------------------------------
# format readers


def _load_torch_zip(path: str, trusted: bool) -> Any:
    try:
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptFileError(f"{path}: truncated or corrupted PyTorch zip checkpoint ({e}); "
                               "re-download or re-create the file") from None
    with zf:
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CorruptFileError(f"{path}: zip file without data.pkl: not a PyTorch checkpoint")
        prefix = pkl[0][: -len("data.pkl")]
        big_endian = False
        if prefix + "byteorder" in names:
            big_endian = zf.read(prefix + "byteorder").strip() == b"big"
        storages: Dict[str, np.ndarray] = {}

        def persistent_load(saved_id):
            if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] in ("storage", b"storage")):
                raise CorruptFileError(f"{path}: unknown persistent id {saved_id!r}")
            storage_type, key, _location, numel = saved_id[1:5]
            key = key.decode() if isinstance(key, bytes) else str(key)
            if key not in storages:
                try:
                    raw = zf.read(f"{prefix}data/{key}")
                except (KeyError, zipfile.BadZipFile, EOFError, OSError) as e:
                    raise CorruptFileError(f"{path}: tensor data '{key}' unreadable ({e}); the file is "
                                           "truncated or corrupted") from None
                if not isinstance(storage_type, _TorchStorageType):
                    raise CorruptFileError(f"{path}: unsupported storage type {storage_type!r}")
                if storage_type.dtype == "bf16":
                    arr = (np.frombuffer(raw, dtype=">u2" if big_endian else "<u2").astype(np.uint32) << 16)
                    arr = arr.view(np.float32)
                else:
                    dt = np.dtype(storage_type.dtype).newbyteorder(">" if big_endian else "<")
                    arr = np.frombuffer(raw, dtype=dt).astype(np.dtype(storage_type.dtype).newbyteorder("="))
                storages[key] = arr
            return storages[key]

        try:
            data = zf.read(pkl[0])
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise CorruptFileError(f"{path}: truncated or corrupted PyTorch checkpoint ({e})") from None
        return _unpickle(data, path, trusted, persistent_load)


def _load_torch_legacy(path: str, trusted: bool) -> Any:
    if not torch_available():
        raise TorchMissingError(f"{path}: legacy (pre-1.6) PyTorch checkpoint; reading it needs torch, "
                                "which is not installed. Re-save it with a recent torch or as safetensors.")
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except (EOFError, RuntimeError, pickle.UnpicklingError) as e:
        if not trusted and "weights only" in str(e).lower():
            raise UnsafePickleError(f"{path}: refusing to unpickle a legacy PyTorch checkpoint with globals outside "
                                    "torch's weights-only allow-list: pickled checkpoints can run code when loaded. "
                                    "If you trust this file, load it with trusted=True (command line: "
                                    "--trust-pickle).") from None
        raise CorruptFileError(f"{path}: truncated or corrupted PyTorch checkpoint ({e})") from None
    return to_numpy_tree(obj)


def load_checkpoint(path: str, trusted: bool = False) -> Any:
    """Load any supported checkpoint file into a nested structure whose tensors are numpy arrays.

    Only load files you trust: see the module docstring. ``trusted=False`` (default) refuses
    pickled globals outside a small allow-list; ``trusted=True`` unpickles anything.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CorruptFileError(f"{path}: empty file (an interrupted download or write?)")
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return _load_torch_zip(path, trusted)
    if safetensors_io.is_safetensors(path):
        return safetensors_io.load_file(path)
    with open(path, "rb") as f:
        data = f.read()
    if data.endswith(JITTOR_TAG):
        body, checksum = data[:-28], data[-28:-8]
        if hashlib.sha1(body).digest() != checksum:
            raise CorruptFileError(f"{path}: jt.save checksum mismatch: the file is corrupted")
        return _unpickle(body, path, trusted)
    if head[:1] == b"\x80":
        # A protocol-2 pickle starting with torch's legacy magic number is an old torch.save file.
        if head[:2] == b"\x80\x02" and head[2:3] == b"\x8a":
            try:  # the first of the legacy format's pickles is just the magic number
                first = _RestrictedUnpickler(io.BytesIO(data), path, False).load()
            except Exception:
                first = None
            if first == _TORCH_LEGACY_MAGIC:
                return _load_torch_legacy(path, trusted)
        # jt.save always appends its tag; a pickle without it is a plain pickle, or a jt.save file
        # cut short (the tag is the last thing written), which unpickling reports as truncated.
        return _unpickle(data, path, trusted)
    raise CorruptFileError(f"{path}: unrecognised file format (not safetensors, a PyTorch checkpoint, "
                           "or a jt.save/pickle file)")


def flat_arrays(tree: Any, prefix: str = "") -> Dict[str, np.ndarray]:
    """Flatten nested dicts to ``{'a.b.c': array}``; non-array leaves are dropped."""
    out: Dict[str, np.ndarray] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flat_arrays(v, f"{prefix}{k}."))
    elif isinstance(tree, np.ndarray):
        out[prefix[:-1]] = tree
    return out


def sha256sum(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()

