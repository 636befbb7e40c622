"""Weight initialisation helpers matching timm/DINO's schemes."""
import math

from models import env  # noqa: F401  (Jittor's environment before jittor loads)
import jittor as jt
from jittor import nn

from .fast_norm import LayerNorm


def trunc_normal_(var: jt.Var, std: float = 1.0, mean: float = 0.0, a: float = -2.0, b: float = 2.0) -> jt.Var:
    """In-place truncated normal; ``a``/``b`` are absolute cut-offs as in timm (so std=.02 is barely cut)."""
    return jt.init.trunc_normal_(var, mean=mean, std=std, a=a, b=b)


def init_linear_and_norm(module: nn.Module, std: float = 0.02) -> None:
    """timm/DINO default: Linear weights trunc_normal(std), biases 0; LayerNorm weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                m.bias.assign(jt.zeros_like(m.bias))
        elif isinstance(m, LayerNorm) or (isinstance(m, nn.LayerNorm) and m.elementwise_affine):
            m.weight.assign(jt.ones_like(m.weight))
            m.bias.assign(jt.zeros_like(m.bias))


def init_conv_like_torch(conv: nn.Conv2d) -> None:
    """PyTorch's default Conv2d init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    timm leaves the patch-embedding conv at this default; we reproduce it so
    training dynamics match the reference implementations.
    """
    w = conv.weight
    fan_in = int(w.shape[1] * w.shape[2] * w.shape[3])
    bound = 1.0 / math.sqrt(fan_in)
    w.assign(jt.init.uniform(w.shape, "float32", -bound, bound))
    if conv.bias is not None:
        conv.bias.assign(jt.init.uniform(conv.bias.shape, "float32", -bound, bound))
