"""Small reusable Jittor building blocks shared by the base models and the auxiliary heads.

``attention.scaled_dot_product_attention`` is the single attention entry point
(owned by the performance work); everything here calls it rather than doing
attention math itself.
"""
from .drop import DropPath, drop_path  # noqa: F401
from .mlp import Mlp  # noqa: F401
from .patch_embed import PatchEmbed, to_2tuple  # noqa: F401
from .pos_embed import bicubic_matrix, resample_abs_pos_embed, sincos_2d_pos_embed  # noqa: F401
from .weight_init import init_conv_like_torch, init_linear_and_norm, trunc_normal_  # noqa: F401
from .mask import apply_mask_token  # noqa: F401
