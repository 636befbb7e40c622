"""Two-layer MLP used by the transformer blocks (keys ``fc1`` / ``fc2`` as timm)."""
from models import env  # noqa: F401  (Jittor's environment before jittor loads)
from jittor import nn

from .activation import GELU, linear_gelu


class Mlp(nn.Module):
    """fc1 -> act -> fc2 on the last axis (act: GELU with the fused CPU kernel, :mod:`.activation`).

    ``nn.Linear`` flattens any leading axes to one 2-D GEMM, which Jittor's
    matmul pass turns into a oneDNN (mkl_matmul) call on CPU and cuBLAS on GPU.
    """

    def __init__(self, in_features, hidden_features=None, out_features=None, act=GELU, bias=True):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)

    def execute(self, x):
        if isinstance(self.act, GELU):  # fc1's bias added inside the GELU kernel where it runs
            return self.fc2(linear_gelu(self.fc1, x))
        return self.fc2(self.act(self.fc1(x)))
