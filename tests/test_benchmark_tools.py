"""The FLOP count the benchmark suite reports (benchmarks/run.py) against hand-counted FLOPs."""
import pytest

from tests._torch import require


@pytest.mark.parametrize("groups", [1, 8])
def test_conv_flops_count_forward_and_both_gradients_with_groups(groups):
    torch = require("torch")
    from benchmarks.run import _TorchFlops
    N, C, H, W, k = 2, 8, 5, 5, 3
    conv = torch.nn.Conv2d(C, C, k, padding=1, groups=groups, bias=False)
    x = torch.randn(N, C, H, W, requires_grad=True)
    forward = 2 * N * C * H * W * (C // groups) * k * k  # each output: a (C/groups * k * k)-long dot product
    counter = _TorchFlops(lambda: conv(x).sum().backward())
    counter()
    assert counter.flops == 3 * forward  # forward, input gradient, weight gradient
    x.requires_grad_(False)  # no input gradient requested: forward + weight gradient
    counter()
    assert counter.flops == 2 * forward
