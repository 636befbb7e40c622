"""iBOT's masks for masked image modelling: block-wise (BEiT style) or random patch masks.

Facts taken from iBOT's ``ImageFolderMask`` (re-implemented, vectorised):
* ``pred_ratio`` is a float or a list; with a list one entry is chosen uniformly per mask,
  each entry r with its variance v giving a ratio uniform in [r - v, r + v] (v = 0: exactly r);
* before ``pred_start_epoch`` every mask is empty;
* ``block``: repeatedly place rectangles of random area (at least (min(H, W) // 3)^2 patches
  where room is left) and log-uniform aspect ratio in ``pred_aspect_ratio``, never exceeding
  the target count; up to 10 tries per rectangle and stop when no try adds a patch (so a block
  mask may end slightly below its target);
* ``rand``: exactly int(ratio * H * W) patches chosen uniformly.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["MaskGenerator", "RandomPatchMask"]


class MaskGenerator:
    def __init__(self, patch_size: int, pred_ratio=0.3, pred_ratio_var=0.0, pred_shape="block",
                 pred_aspect_ratio=(0.3, 1 / 0.3), pred_start_epoch=0):
        ratios = list(pred_ratio) if isinstance(pred_ratio, (list, tuple)) else [pred_ratio]
        vars_ = (list(pred_ratio_var) if isinstance(pred_ratio_var, (list, tuple))
                 else [pred_ratio_var] * len(ratios))
        if len(ratios) != len(vars_) or not ratios:
            raise ValueError(f"pred_ratio {pred_ratio} and pred_ratio_var {pred_ratio_var} must match in length")
        for r, v in zip(ratios, vars_):
            if not (0 <= v <= r and r + v <= 1):
                raise ValueError(f"need 0 <= pred_ratio_var <= pred_ratio, pred_ratio + var <= 1; got {r}, {v}")
        if pred_shape not in ("block", "rand"):
            raise ValueError(f"pred_shape must be 'block' or 'rand', got {pred_shape!r}")
        self.patch_size = int(patch_size)
        self.ratios, self.vars = [float(r) for r in ratios], [float(v) for v in vars_]
        self.pred_shape = pred_shape
        self.log_aspect = (math.log(pred_aspect_ratio[0]), math.log(pred_aspect_ratio[1]))
        self.pred_start_epoch = int(pred_start_epoch)

    @classmethod
    def from_config(cls, mask_cfg, patch_size):
        return cls(patch_size, mask_cfg.pred_ratio, mask_cfg.pred_ratio_var, mask_cfg.pred_shape,
                   mask_cfg.pred_aspect_ratio, mask_cfg.pred_start_epoch)

    def sample_ratio(self, rng: np.random.Generator, epoch: int) -> float:
        if epoch < self.pred_start_epoch:
            return 0.0
        i = int(rng.integers(len(self.ratios))) if len(self.ratios) > 1 else 0
        r, v = self.ratios[i], self.vars[i]
        return float(rng.uniform(r - v, r + v)) if v > 0 else r

    def grid(self, crop_size: int) -> tuple[int, int]:
        return crop_size // self.patch_size, crop_size // self.patch_size

    def __call__(self, crop_size: int, rng: np.random.Generator, epoch: int) -> np.ndarray:
        """A bool (H, W) mask over the patch grid of a ``crop_size`` square crop."""
        H, W = self.grid(crop_size)
        target = self.sample_ratio(rng, epoch) * H * W
        if self.pred_shape == "rand":
            n = int(target)
            mask = np.zeros(H * W, dtype=bool)
            mask[rng.permutation(H * W)[:n]] = True
            return mask.reshape(H, W)
        return self._block(H, W, target, rng)

    def _block(self, H, W, target, rng):
        mask = np.zeros((H, W), dtype=bool)
        count = 0
        min_area = (min(H, W) // 3) ** 2
        while count < target:
            room = target - count
            added = 0
            for _ in range(10):
                # As in BEiT/iBOT: when room < min_area this draws from [room, min_area].
                area = rng.uniform(min(min_area, room), max(min_area, room))
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h = int(round(math.sqrt(area * aspect)))
                w = int(round(math.sqrt(area / aspect)))
                if w < W and h < H:
                    top = int(rng.integers(0, H - h + 1))
                    left = int(rng.integers(0, W - w + 1))
                    region = mask[top:top + h, left:left + w]
                    new = h * w - int(region.sum())
                    if 0 < new <= room:
                        region[...] = True
                        added = new
                if added > 0:
                    break
            if added == 0:
                break
            count += added
        return mask


class RandomPatchMask:
    """MAE's per-image random masking (``random_masking`` of facebookresearch/mae, models_mae.py).

    Uniform noise per patch, sorted: the ``int(N * (1 - mask_ratio))`` patches with the smallest
    noise are kept, all others masked, so every image of a batch has exactly the same count (MAE
    relies on it to batch the visible tokens). Drawn here, from the sample's own generator (seeded by
    seed, epoch and index), not inside the model: masks are then identical under MPI and after a
    resume. The call signature is :class:`MaskGenerator`'s.
    """

    def __init__(self, patch_size: int, mask_ratio: float = 0.75):
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.patch_size = int(patch_size)
        self.mask_ratio = float(mask_ratio)

    def num_keep(self, num_patches: int) -> int:
        return int(num_patches * (1 - self.mask_ratio))

    def __call__(self, crop_size: int, rng: np.random.Generator, epoch: int = 0) -> np.ndarray:
        """A bool (H, W) mask over the patch grid of a ``crop_size`` square crop (True: masked)."""
        H = W = crop_size // self.patch_size
        ids_shuffle = np.argsort(rng.random(H * W), kind="stable")  # ascending: small noise is kept
        mask = np.ones(H * W, dtype=bool)
        mask[ids_shuffle[:self.num_keep(H * W)]] = False
        return mask.reshape(H, W)
