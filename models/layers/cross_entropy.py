"""Cross-entropy of logits against soft targets (DINO / iBOT's teacher distributions).

``soft_cross_entropy(p, s)`` is ``-sum_k p_k log softmax(s)_k`` over the last axis, one value per
row. On the CPU with fast kernels on (``models.perf.fast_kernels``) forward and backward are one op
each (``kernels/cpu_soft_cross_entropy_op.cc``) instead of Jittor's log-softmax, product and sum
and their gradients; elsewhere (GPU, fast kernels off, other dtypes) the plain Jittor expression.
The target ``p`` gets no gradient on either path.
"""
from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from . import kernels


def soft_cross_entropy(target_probs: jt.Var, logits: jt.Var) -> jt.Var:
    """Per-row ``-sum_k p_k log softmax(logits)_k``: (..., K) and (..., K) -> (...)."""
    if tuple(target_probs.shape) != tuple(logits.shape) or logits.ndim < 2:
        raise ValueError(f"soft_cross_entropy: target {tuple(target_probs.shape)} and logits "
                         f"{tuple(logits.shape)} must be one shape (..., K)")
    target_probs = target_probs.detach()
    ops = (kernels.enabled_cpu_ops() if logits.dtype == jt.float32 and target_probs.dtype == jt.float32
           and logits.numel() > 0 else None)
    if ops is None:
        return -(target_probs * nn.log_softmax(logits, dim=-1)).sum(dim=-1)
    return ops.cpu_soft_cross_entropy(target_probs, logits)
