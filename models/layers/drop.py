"""Stochastic depth (drop path), per sample."""
from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn


def drop_path(x: jt.Var, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True) -> jt.Var:
    """Zero the whole residual branch for a random subset of samples.

    Each sample of the batch keeps its branch with probability ``1 - drop_prob``;
    kept branches are divided by the keep probability so the expectation is
    unchanged (as in timm/DINO). Identity in eval mode or with ``drop_prob == 0``.
    """
    if drop_prob == 0.0 or not training:
        return x
    if not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = (jt.rand(shape, dtype=x.dtype) < keep_prob).cast(x.dtype).stop_grad()
    if scale_by_keep:
        keep = keep / keep_prob
    return x * keep


class DropPath(nn.Module):
    """Module wrapper of :func:`drop_path` that follows ``train()`` / ``eval()``."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def execute(self, x):
        return drop_path(x, self.drop_prob, self.is_training(), self.scale_by_keep)

    def extra_repr(self):
        return f"drop_prob={self.drop_prob:.3f}"
