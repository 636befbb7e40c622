"""Projection heads (DINO/iBOT style MLP + weight-normalised prototype layer)."""
from jhssl import bootstrap  # noqa: F401

import math

import jittor as jt

from jittor import nn

from jhssl import amp
from models.layers.activation import GELU  # fused CPU kernel, same values as nn.GELU


def _trunc_normal(var, std=0.02):
    jt.init.trunc_normal_(var, std=std)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation: ``W = g * v / ||v||`` per output row.

    This is what ``torch.nn.utils.weight_norm(nn.Linear(in, out, bias=False))`` computes
    (norm over the input dimension of each output unit), written out because Jittor has
    no weight-norm wrapper. State-dict keys are ``weight_g`` (out, 1) and ``weight_v``
    (out, in), the same names and shapes as the official DINO/iBOT checkpoints.

    ``fix_g=True`` is DINO's ``norm_last_layer``: ``g`` stays 1 and is never optimised
    (it is a stop-grad Var, so the optimizer skips it), i.e. the prototypes are unit vectors.
    """

    def __init__(self, in_dim, out_dim, fix_g=True):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # PyTorch's default Linear init, which DINO keeps for this layer
        self.weight_v = jt.init.uniform((out_dim, in_dim), "float32", -bound, bound)
        self.weight_g = jt.ones((out_dim, 1))
        self.fix_g = fix_g
        if fix_g:
            self.weight_g.stop_grad()

    def weight(self):
        norm = jt.sqrt((self.weight_v * self.weight_v).sum(dim=1, keepdims=True))
        return self.weight_v * (self.weight_g / norm)

    def execute(self, x):
        # x @ W^T without materialising W^T (oneDNN's GEMM reads W transposed); under mixed
        # precision (jhssl.amp) the prototype logits are computed in fp32 from fp32 weights
        return nn.matmul_transpose(amp.fp32(x), self.weight())


class _TokenBatchNorm(nn.Module):
    """BatchNorm1d over the last axis of (B, C) or (B, N, C) input (iBOT's CustomSequential)."""

    def __init__(self, dim):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def execute(self, x):
        if x.ndim == 2:
            return self.bn(x)
        shape = x.shape
        return self.bn(x.reshape((-1, shape[-1]))).reshape(shape)


class ProjectionMLP(nn.Module):
    """``nlayers`` linear layers with GELU in between, ending in the bottleneck, then L2 normalisation.

    Keys: ``mlp.0``, ``mlp.2``, ``mlp.4`` for nlayers=3 (DINOHead's layout)."""

    def __init__(self, in_dim, hidden_dim=2048, bottleneck_dim=256, nlayers=3, use_bn=False, act="gelu"):
        super().__init__()
        nlayers = max(int(nlayers), 1)
        if act not in ("gelu", "relu"):
            raise ValueError(f"projection activation must be 'gelu' or 'relu', got {act!r}")

        def hidden(d_in):
            layers = [nn.Linear(d_in, hidden_dim)]
            if use_bn:
                layers.append(_TokenBatchNorm(hidden_dim))
            layers.append(GELU() if act == "gelu" else nn.ReLU())
            return layers

        if nlayers == 1:
            layers = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = hidden(in_dim)
            for _ in range(nlayers - 2):
                layers += hidden(hidden_dim)
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        # BatchNorm makes a token's output depend on the other tokens in the batch
        self.batch_dependent = bool(use_bn)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                _trunc_normal(m.weight, 0.02)
                if m.bias is not None:
                    m.bias.assign(jt.zeros_like(m.bias))

    def execute(self, x):
        x = self.mlp(x)
        norm = jt.sqrt((x * x).sum(dim=-1, keepdims=True))
        return x / jt.maximum(norm, 1e-12)
