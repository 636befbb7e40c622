"""A small safetensors reader/writer in pure numpy (no ``safetensors`` or torch dependency).

The format (https://github.com/huggingface/safetensors, "Format" section):

* 8 bytes: ``N``, the length of the header, little-endian unsigned 64-bit;
* ``N`` bytes: a UTF-8 JSON object ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``,
  plus an optional ``"__metadata__": {str: str}``; writers pad it with spaces to a multiple of 8;
* the raw little-endian tensor bytes; ``data_offsets`` are relative to the start of this buffer.

Safetensors holds no code, so unlike pickled ``.pth``/``.pkl`` checkpoints it is safe to load
files from untrusted sources: it is the format we prefer when we write weights.
"""
import json
import os
import struct
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from .fileio import atomic_write
from .errors import CorruptFileError

# safetensors dtype name -> numpy dtype (little-endian). BF16 has no numpy dtype: see _decode_bf16.
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dt: name for name, dt in _DTYPES.items()}
_ITEMSIZE = {name: dt.itemsize for name, dt in _DTYPES.items()}
_ITEMSIZE["BF16"] = 2
# A header larger than this is not a real safetensors file (the reference implementation caps it at 100 MB).
_MAX_HEADER = 100 * 1024 * 1024


def _dtype_name(arr: np.ndarray) -> str:
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    for known, name in _NAMES.items():
        if dt == known:
            return name
    raise TypeError(f"safetensors cannot store dtype {arr.dtype}; supported: {', '.join(sorted(_DTYPES))}")


def save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write a flat ``{name: array}`` dict to ``path`` atomically (temp file, then ``os.replace``)."""
    header: Dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata must map str to str; bad entries: {bad}")
        header["__metadata__"] = dict(metadata)
    arrays = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r}")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved in safetensors and cannot name a tensor")
        arr = np.asarray(value)
        dtype = _dtype_name(arr)
        # np.asarray(order="C") keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d).
        arr = np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        arrays.append(arr)
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # align the data buffer to 8 bytes, as the reference writer does

    def write(f):
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())

    atomic_write(path, write)


def read_header(path: str) -> Tuple[Dict[str, dict], Dict[str, str], int]:
    """Return ``(tensor entries, metadata, data start)`` after validating them against the file size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"{path}: truncated safetensors file ({size} bytes, shorter than the 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:
            raise CorruptFileError(f"{path}: not a safetensors file (header length {n} is implausible)")
        if 8 + n > size:
            raise CorruptFileError(f"{path}: truncated safetensors file (header needs {8 + n} bytes, file has {size})")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    data_len = size - data_start
    end_max = 0
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CorruptFileError(f"{path}: malformed safetensors entry for '{name}': {entry!r}") from None
        if dtype not in _ITEMSIZE:
            raise CorruptFileError(f"{path}: tensor '{name}' has unsupported dtype {dtype!r}")
        expected = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE[dtype]
        if end - begin != expected or begin < 0:
            raise CorruptFileError(f"{path}: tensor '{name}' offsets [{begin}, {end}) do not match "
                                   f"shape {shape} x {dtype} ({expected} bytes)")
        end_max = max(end_max, end)
    if end_max > data_len:
        raise CorruptFileError(f"{path}: truncated safetensors file (tensors need {end_max} data bytes, "
                               f"file has {data_len}); re-download or re-export it")
    return header, metadata, data_start


def _decode_bf16(raw: bytes, shape) -> np.ndarray:
    # bfloat16 is the upper half of a float32: widen exactly by shifting the bits up.
    bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return bits.view(np.float32).reshape(tuple(shape))


def load_file(path: str) -> Dict[str, np.ndarray]:
    """Read every tensor of a safetensors file into numpy arrays (BF16 is widened to float32)."""
    return load_file_with_metadata(path)[0]


def load_file_with_metadata(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    header, metadata, data_start = read_header(path)
    out: Dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        # Sorted by offset so that the file is read sequentially.
        for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = entry["data_offsets"]
            f.seek(data_start + begin)
            raw = f.read(end - begin)
            if entry["dtype"] == "BF16":
                out[name] = _decode_bf16(raw, entry["shape"])
            else:
                out[name] = np.frombuffer(raw, dtype=_DTYPES[entry["dtype"]]).reshape(tuple(entry["shape"])).copy()
    # Keep the order in which the tensors were listed in the header.
    return {name: out[name] for name in header}, dict(metadata)


def is_safetensors(path: str) -> bool:
    """Cheap sniff: a plausible header length followed by a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= _MAX_HEADER and head[8:9] == b"{"
