"""Small layers used by the ResNet / ResMLP / PVT-v2 bases and by the auxiliary heads.

* :class:`Affine` - ResMLP's ``alpha * x + beta`` "norm" (keys ``alpha``/``beta``, shape (1, 1, C)).
* :class:`BatchNorm2d` - Jittor's BatchNorm plus timm's ``num_batches_tracked`` buffer, so a
  ResNet's state dict has exactly timm's keys. Jittor's BatchNorm (``jittor/nn.py``) averages the
  batch mean and mean-of-squares over ranks with ``mpi_all_reduce`` when ``sync=True`` (the default)
  and ``jt.in_mpi``: under ``mpirun`` it is a synchronised BatchNorm.
* :class:`CrossPatchLinear` - ResMLP's token-mixing linear layer that also runs on smaller grids.
"""
import numpy as np

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from .drop import DropPath, drop_path  # noqa: F401  (re-exported for the bases and heads)
from .patch_embed import to_2tuple  # noqa: F401


class Affine(nn.Module):
    """ResMLP's per-channel affine transform used in place of LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = jt.ones((1, 1, dim))
        self.beta = jt.zeros((1, 1, dim))

    def execute(self, x):
        # Parameters are (1, 1, C); reshape so they broadcast on (B, N, C) and (B, H, W, C).
        c = self.alpha.shape[-1]
        return x * self.alpha.reshape((c,)) + self.beta.reshape((c,))


class BatchNorm2d(nn.BatchNorm):
    """``jittor.nn.BatchNorm`` (MPI-synchronised, see module docstring) with timm's extra buffer."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        # Jittor has no 0-d Vars: this is shape (1,), timm's is shape ().
        self.num_batches_tracked = jt.zeros((1,), dtype="int64").stop_grad()

    def execute(self, x):
        if self.is_train:
            self.num_batches_tracked.update(self.num_batches_tracked + 1)
        return super().execute(x)


class CrossPatchLinear(nn.Linear):
    """ResMLP's cross-patch (token-mixing) linear layer, usable on grids up to its build grid.

    The weight is ``(N0, N0)`` for the build grid ``(H0, W0)`` (``N0 = H0 * W0``, timm's key
    ``linear_tokens.weight``). ResMLP's mixing is absolute-position, so a grid of another size needs
    a rule. Multi-crop training feeds global crops (e.g. 14x14 tokens) and local crops (6x6) through
    the *same* layer, so one set of weights must serve both. We take the **centred sub-grid**: the
    ``(h, w)`` tokens are identified with the centre ``h x w`` window of the build grid, and the
    layer uses the rows and columns of those positions (``W[idx][:, idx]``, ``b[idx]``).

    Why crop and not interpolate: the token weights of a trained ResMLP are mostly a function of
    the offset between two tokens (local, conv-like). Cropping keeps the offset in token units
    exactly, so a neighbour stays a neighbour; bilinear resampling of the 4-D weight from 14 to 6
    would put adjacent tokens 2.6 build-grid steps apart and wash the local structure out. A lazily
    sized layer per N would give global and local crops unrelated weights (and change the
    parameter set during training). Grids larger than the build grid raise ``ValueError``: build
    the layer for the largest grid it will see.
    """

    def __init__(self, grid):
        self.grid = (int(grid[0]), int(grid[1]))
        n = self.grid[0] * self.grid[1]
        super().__init__(n, n)
        self._index_cache = {}

    def _index(self, h, w):
        key = (h, w)
        if key not in self._index_cache:
            H0, W0 = self.grid
            r0, c0 = (H0 - h) // 2, (W0 - w) // 2
            rows = np.arange(r0, r0 + h)[:, None] * W0 + np.arange(c0, c0 + w)[None, :]
            self._index_cache[key] = rows.reshape(-1).astype("int32")
        return jt.array(self._index_cache[key])

    def execute(self, x, grid):
        """x: (B, N, C) tokens in row-major order of ``grid``; mixes along N."""
        h, w = int(grid[0]), int(grid[1])
        H0, W0 = self.grid
        if h > H0 or w > W0:
            raise ValueError(f"cross-patch layer built for a {H0}x{W0} token grid cannot run on a larger "
                             f"{h}x{w} grid; build it with a grid of at least {h}x{w}")
        if x.shape[1] != h * w:
            raise ValueError(f"got {x.shape[1]} tokens for a {h}x{w} grid")
        weight, bias = self.weight, self.bias
        if (h, w) != (H0, W0):
            idx = self._index(h, w)
            weight = weight[idx][:, idx]
            bias = bias[idx]
        # out[b, i, c] = sum_j W[i, j] x[b, j, c] + bias[i]
        y = jt.matmul(x.transpose(0, 2, 1), weight.transpose(1, 0)) + bias
        return y.transpose(0, 2, 1)


def check_image(x, multiple: int, name: str):
    """Raise a clear error unless x is (B, 3-ish, H, W) with H, W divisible by ``multiple``."""
    if x.ndim != 4:
        raise ValueError(f"{name} expects images of shape (B, C, H, W), got {tuple(x.shape)}")
    H, W = int(x.shape[2]), int(x.shape[3])
    if H % multiple or W % multiple or H == 0 or W == 0:
        raise ValueError(f"{name} needs an input size divisible by {multiple}, got {H}x{W}")
    return H, W
