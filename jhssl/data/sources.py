"""Image sources: an ImageNet-layout folder and Fashion-MNIST IDX files (no jittor needed).

A *source* is indexable: ``len(src)``, ``src.labels`` (int64 array), ``src.classes`` (names),
``src.load(i) -> PIL.Image`` (RGB) and ``src.describe(i)`` (path or id for messages).
Loading may raise :class:`BadImageError`; :class:`SafeLoader` turns that into a skip with a
counted warning (or lets it fail, ``on_bad_image: fail``).
"""
from __future__ import annotations

import gzip
import multiprocessing as mp
import os
import struct
import warnings

import numpy as np
from PIL import Image

__all__ = [
    "BadImageError", "BadImageWarning", "ImageFolderSource", "FashionMNISTSource", "SubsetSource",
    "SafeLoader", "read_idx", "find_idx_file", "select_subset", "FASHION_MNIST_CLASSES",
]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


class BadImageError(RuntimeError):
    """An image file that Pillow cannot decode."""


class BadImageWarning(UserWarning):
    """An unreadable image was skipped."""


def _pil_extensions() -> set[str]:
    Image.init()  # registers every plugin Pillow has, so "any format Pillow reads" holds
    return {ext.lower() for ext in Image.registered_extensions()}


class ImageFolderSource:
    """``root/<class>/<...>/<image>`` (ImageNet layout); classes are the sorted sub-folders."""

    def __init__(self, root: str, classes=None):
        """``classes``: class folder names to keep (e.g. ImageNet-S300's WordNet ids); None: all."""
        if not root:
            raise FileNotFoundError("data.path is not set: expected a folder laid out as "
                                    "root/<class>/<image> (ImageNet layout)")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"dataset folder not found: {root!r}; expected a folder laid out "
                                    f"as root/<class>/<image> (ImageNet layout)")
        self.root = root
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if not self.classes:
            raise FileNotFoundError(f"dataset folder {root!r} has no class sub-folders; expected "
                                    f"root/<class>/<image> (ImageNet layout)")
        if classes is not None:
            missing = sorted(set(classes) - set(self.classes))
            if missing:
                raise FileNotFoundError(f"dataset folder {root!r} lacks {len(missing)} class folder(s) of the "
                                        f"class list, e.g. {missing[0]!r}")
            self.classes = sorted(set(classes))
        exts = _pil_extensions()
        paths, labels = [], []
        for ci, cname in enumerate(self.classes):
            for dirpath, dirnames, fnames in os.walk(os.path.join(root, cname), followlinks=True):
                dirnames.sort()
                for fn in sorted(fnames):
                    if os.path.splitext(fn)[1].lower() in exts:
                        paths.append(os.path.join(dirpath, fn))
                        labels.append(ci)
        if not paths:
            raise FileNotFoundError(f"dataset folder {root!r} has class folders but no image files "
                                    f"Pillow can read (extensions such as .jpg, .png, .JPEG)")
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self):
        return len(self.paths)

    def describe(self, i: int) -> str:
        return self.paths[i]

    def load(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img.load()  # decode now, so a truncated file fails here and not later
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...)
            raise BadImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
        # gray, palette, CMYK, RGBA...: the models take RGB
        return img if img.mode == "RGB" else img.convert("RGB")


# ----------------------------------------------------------------------------- IDX (MNIST family)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array of its declared shape."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4]!r})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    count = int(np.prod(shape)) if ndim else 1
    offset = 4 + 4 * ndim
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX header declares shape {shape} ({count * dtype.itemsize} bytes) "
                         f"but the file holds {len(raw) - offset} bytes of data")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def find_idx_file(root: str, split: str, kind: str) -> str:
    """Locate ``train-images-idx3-ubyte[.gz]`` / ``t10k-labels-idx1-ubyte[.gz]`` (either naming style)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    nd = 3 if kind == "images" else 1
    for name in (f"{prefix}-{kind}-idx{nd}-ubyte", f"{prefix}-{kind}.idx{nd}-ubyte"):
        for cand in (name + ".gz", name):
            p = os.path.join(root, cand)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(f"Fashion-MNIST {split} {kind} not found in {root!r}: expected "
                            f"{prefix}-{kind}-idx{nd}-ubyte[.gz]")


class FashionMNISTSource:
    """Fashion-MNIST (or MNIST) from its IDX files; images come out as 28x28 RGB (gray replicated)."""

    def __init__(self, root: str, split: str = "train"):
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(f"Fashion-MNIST directory not found: {root!r}; expected a folder "
                                    f"with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                                    f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz")
        if split not in ("train", "test"):
            raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        self.root, self.split = root, split
        self.images = read_idx(find_idx_file(root, split, "images"))
        self.labels = read_idx(find_idx_file(root, split, "labels")).astype(np.int64)
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"Fashion-MNIST images in {root!r} must be uint8 (N, H, W), got "
                             f"{self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"Fashion-MNIST {split}: {len(self.images)} images but {len(self.labels)} labels")
        n_cls = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.classes = list(FASHION_MNIST_CLASSES[:n_cls]) if n_cls <= 10 else [str(i) for i in range(n_cls)]

    def __len__(self):
        return len(self.images)

    def describe(self, i: int) -> str:
        return f"{self.root}:{self.split}[{i}]"

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i], mode="L").convert("RGB")


# ----------------------------------------------------------------------------- subsets
def select_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices keeping ``fraction`` of every class (at least one each), chosen by ``seed``.

    Per class, so a 10% subset keeps the class balance of the full set.
    """
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"subset fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    if fraction >= 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng([int(seed), 0x5B5E7])
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = max(1, int(round(fraction * len(idx))))
        keep.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(keep))


def read_class_list(path: str):
    """Class folder names (WordNet ids), one per line; blank lines and ``#`` comments are skipped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.class_list file not found: {path!r} (one WordNet id per line)")
    with open(path) as f:
        names = [ln.split("#", 1)[0].strip() for ln in f]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"data.class_list file {path!r} names no class")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"data.class_list file {path!r} names {dup[0]!r} twice")
    return names


class SubsetSource:
    """A view on ``indices`` of another source."""

    def __init__(self, base, indices):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = base.labels[self.indices]
        self.classes = base.classes

    def __len__(self):
        return len(self.indices)

    def describe(self, i: int) -> str:
        return self.base.describe(int(self.indices[i]))

    def load(self, i: int):
        return self.base.load(int(self.indices[i]))


# ----------------------------------------------------------------------------- skipping bad images
class SafeLoader:
    """Loads from a source; an unreadable image is skipped (next index) with a counted warning.

    The bookkeeping lives in shared memory (created before Jittor forks its loader workers), so
    the count is global over the main process and every worker of this rank.
    """

    def __init__(self, source, on_bad_image: str = "skip", max_consecutive: int = 100):
        if on_bad_image not in ("skip", "fail"):
            raise ValueError(f"on_bad_image must be 'skip' or 'fail', got {on_bad_image!r}")
        self.source = source
        self.on_bad_image = on_bad_image
        self.max_consecutive = max_consecutive
        self._bad = mp.Array("b", len(source), lock=False)  # 1 byte per file: known-bad flags
        self._count = mp.Value("i", 0)

    @property
    def num_skipped(self) -> int:
        return int(self._count.value)

    def skipped_indices(self) -> np.ndarray:
        return np.flatnonzero(np.frombuffer(self._bad, dtype=np.int8))

    def load(self, i: int):
        """Return ``(image, label, index_used)``."""
        n = len(self.source)
        j = i
        for _ in range(min(n, self.max_consecutive)):
            if not self._bad[j]:
                try:
                    return self.source.load(j), int(self.source.labels[j]), j
                except BadImageError as e:
                    if self.on_bad_image == "fail":
                        raise BadImageError(f"{e} (data.on_bad_image=fail; set data.on_bad_image=skip "
                                            f"to skip unreadable files)") from e
                    with self._count.get_lock():
                        if not self._bad[j]:
                            self._bad[j] = 1
                            self._count.value += 1
                        count = self._count.value
                    warnings.warn(f"skipped unreadable image ({e}); {count} file(s) skipped so far",
                                  BadImageWarning, stacklevel=2)
            j = (j + 1) % n
        raise BadImageError(f"{self.max_consecutive} consecutive unreadable images starting at "
                            f"{self.source.describe(i)}; is the dataset path right?")
