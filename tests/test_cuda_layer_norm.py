"""The fused LayerNorm Function of models/layers/cuda_layer_norm.py, through its CPU twin of the
CUDA ops (same inputs, outputs and formulas): forward and the three gradients against Jittor's
LayerNorm. The CUDA sources themselves are compile-checked in tests/test_cuda_compile.py."""
import numpy as np

from _train_helpers import ROOT  # noqa: F401  (sys.path + jhssl bootstrap)

import jittor as jt
from jittor import nn

from models.layers.cuda_layer_norm import fused_layer_norm


def test_fused_layer_norm_matches_jittor_forward_and_gradients():
    jt.flags.use_cuda = 0
    rng = np.random.default_rng(0)
    x = jt.array(rng.standard_normal((3, 5, 24)).astype(np.float32) * 3 + 1)
    w = jt.array(rng.standard_normal(24).astype(np.float32))
    b = jt.array(rng.standard_normal(24).astype(np.float32))
    dy = jt.array(rng.standard_normal((3, 5, 24)).astype(np.float32))
    y = fused_layer_norm(x, w, b, 1e-6)
    ref = nn.layer_norm(x, (24,), w, b, 1e-6)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), atol=2e-5)
    got = jt.grad((y * dy).sum(), [x, w, b])
    exp = jt.grad((ref * dy).sum(), [x, w, b])
    for g, e in zip(got, exp):
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=5e-5, rtol=1e-4)
