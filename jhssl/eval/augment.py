"""Fine-tuning augmentation of the BEiT/DeiT recipe (timm's ``create_transform`` + ``Mixup``), in
numpy + Pillow. Every random draw comes from a ``numpy.random.Generator`` the caller seeds, so a
sample's augmentation is the same in any worker, on any MPI rank and after a resume.

Train transform: RandomResizedCrop (bicubic, scale (0.08, 1)) -> horizontal flip p=0.5 ->
RandAugment ``rand-m9-mstd0.5-inc1`` -> normalize -> random erasing p=0.25 ('pixel' mode).

RandAugment: 2 ops per image, each applied with p=0.5, drawn (with replacement) from timm's
"increasing" list: AutoContrast, Equalize, Invert, Rotate, Posterize, Solarize, SolarizeAdd, Color,
Contrast, Brightness, Sharpness, ShearX, ShearY, TranslateX, TranslateY. The magnitude (9 of 10)
gets Gaussian noise (std 0.5) per op, clipped to [0, 10]; signed ops flip sign with p=0.5;
geometric ops fill with the dataset mean colour. One simplification: geometric ops always
resample bicubically (timm picks bilinear or bicubic at random).

Mixup / CutMix (timm ``Mixup``, mode 'batch'): with probability ``prob`` the batch is mixed with
its reverse, by CutMix with probability ``switch_prob`` (else mixup), lambda ~ Beta(alpha, alpha);
CutMix's lambda is corrected to the pasted box's area. Targets are label-smoothed one-hots mixed
with the same lambda (each row sums to 1).
"""
from __future__ import annotations

import math
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from jhssl.data.transforms import BICUBIC, random_resized_crop, to_normalized_array

__all__ = ["parse_rand_augment", "RandAugment", "random_erasing", "mixup_cutmix", "ClassifierTrainTransform",
           "RAND_AUGMENT_OPS"]

_MAX_LEVEL = 10.0


def parse_rand_augment(spec: str) -> dict:
    """``'rand-m9-mstd0.5-inc1'`` -> {'magnitude': 9, 'mstd': 0.5, 'num_ops': 2, 'increasing': True}."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec must start with 'rand-', got {spec!r}")
    out = {"magnitude": 10.0, "mstd": 0.0, "num_ops": 2, "increasing": False}
    for p in parts[1:]:
        m = re.fullmatch(r"(mstd|m|n|inc)([0-9.]+)", p)
        if not m:
            raise ValueError(f"unknown RandAugment option {p!r} in {spec!r} (known: m, mstd, n, inc)")
        key, val = m.group(1), float(m.group(2))
        if key == "m":
            out["magnitude"] = val
        elif key == "mstd":
            out["mstd"] = val
        elif key == "n":
            out["num_ops"] = int(val)
        else:
            out["increasing"] = bool(val)
    if not out["increasing"]:
        raise ValueError(f"only the 'inc1' op list is implemented (the BEiT/iBOT recipe), got {spec!r}")
    return out


# ----------------------------------------------------------------------------- the ops
def _signed(v, rng):
    return -v if rng.random() < 0.5 else v


def _affine(img, matrix, fill):
    return img.transform(img.size, Image.AFFINE, matrix, resample=BICUBIC, fillcolor=fill)


def _rotate(img, level, rng, fill):
    return img.rotate(_signed(level / _MAX_LEVEL * 30.0, rng), resample=BICUBIC, fillcolor=fill)


def _shear_x(img, level, rng, fill):
    return _affine(img, (1, _signed(level / _MAX_LEVEL * 0.3, rng), 0, 0, 1, 0), fill)


def _shear_y(img, level, rng, fill):
    return _affine(img, (1, 0, 0, _signed(level / _MAX_LEVEL * 0.3, rng), 1, 0), fill)


def _translate_x(img, level, rng, fill):
    return _affine(img, (1, 0, _signed(level / _MAX_LEVEL * 0.45, rng) * img.size[0], 0, 1, 0), fill)


def _translate_y(img, level, rng, fill):
    return _affine(img, (1, 0, 0, 0, 1, _signed(level / _MAX_LEVEL * 0.45, rng) * img.size[1]), fill)


def _enhance(cls):
    def op(img, level, rng, fill):
        return cls(img).enhance(1.0 + _signed(level / _MAX_LEVEL * 0.9, rng))
    return op


def _posterize(img, level, rng, fill):
    # timm's increasing posterize keeps 4 - int(level / 10 * 4) bits: 0 at the top level, which the
    # magnitude noise (mstd) reaches after clipping; Pillow >= 9 refuses 0 bits, so keep at least 1
    return ImageOps.posterize(img, max(1, 4 - int(level / _MAX_LEVEL * 4)))


def _solarize(img, level, rng, fill):
    return ImageOps.solarize(img, 256 - int(level / _MAX_LEVEL * 256))


def _solarize_add(img, level, rng, fill):
    add = int(level / _MAX_LEVEL * 110)
    a = np.asarray(img).astype(np.int16)
    a = np.where(a < 128, np.minimum(a + add, 255), a)
    return Image.fromarray(a.astype(np.uint8), img.mode)


RAND_AUGMENT_OPS = {
    "AutoContrast": lambda img, level, rng, fill: ImageOps.autocontrast(img),
    "Equalize": lambda img, level, rng, fill: ImageOps.equalize(img),
    "Invert": lambda img, level, rng, fill: ImageOps.invert(img),
    "Rotate": _rotate,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
}


class RandAugment:
    def __init__(self, spec: str = "rand-m9-mstd0.5-inc1", mean=(0.485, 0.456, 0.406), prob: float = 0.5):
        p = parse_rand_augment(spec)
        self.magnitude, self.mstd, self.num_ops = p["magnitude"], p["mstd"], p["num_ops"]
        self.prob = prob
        self.fill = tuple(min(255, int(round(255 * m))) for m in mean)
        self.names = list(RAND_AUGMENT_OPS)

    def __call__(self, img: Image.Image, rng: np.random.Generator, trace: list | None = None) -> Image.Image:
        for i in rng.integers(0, len(self.names), self.num_ops):
            if rng.random() >= self.prob:
                continue
            level = self.magnitude
            if self.mstd > 0:
                level = float(np.clip(rng.normal(level, self.mstd), 0.0, _MAX_LEVEL))
            name = self.names[int(i)]
            img = RAND_AUGMENT_OPS[name](img, level, rng, self.fill)
            if trace is not None:
                trace.append((name, level))
        return img


def random_erasing(x: np.ndarray, rng: np.random.Generator, prob: float = 0.25, area=(0.02, 1 / 3),
                   log_ratio=(math.log(0.3), math.log(1 / 0.3)), attempts: int = 10) -> np.ndarray:
    """timm's RandomErasing, mode 'pixel', one box: on a normalized CHW array, a random box is
    replaced by N(0, 1) noise with probability ``prob``."""
    if rng.random() >= prob:
        return x
    C, H, W = x.shape
    for _ in range(attempts):
        target = H * W * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_ratio))
        h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < h < H and 0 < w < W:
            top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            x = x.copy()
            x[:, top:top + h, left:left + w] = rng.standard_normal((C, h, w)).astype(x.dtype)
            return x
    return x


def mixup_cutmix(images: np.ndarray, labels: np.ndarray, num_classes: int, rng: np.random.Generator,
                 mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, smoothing: float = 0.1):
    """(mixed images (B, C, H, W), soft targets (B, num_classes), lambda): timm's ``Mixup``, batch mode."""
    labels = np.asarray(labels, dtype=np.int64)
    B = len(labels)
    lam, use_cutmix = 1.0, False
    if (mixup_alpha > 0 or cutmix_alpha > 0) and rng.random() < prob:
        use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
        alpha = cutmix_alpha if use_cutmix else mixup_alpha
        lam = float(rng.beta(alpha, alpha))
    x = images
    if lam < 1.0:
        flipped = images[::-1]
        if use_cutmix:
            H, W = images.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(H * cut), int(W * cut)
            cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
            y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, H)
            x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, W)
            x = images.copy()
            x[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (H * W)
        else:
            x = (images * lam + flipped * (1.0 - lam)).astype(images.dtype)
    off = smoothing / num_classes
    onehot = np.full((B, num_classes), off, dtype=np.float32)
    onehot[np.arange(B), labels] = 1.0 - smoothing + off
    target = lam * onehot + (1.0 - lam) * onehot[::-1]
    return x, target.astype(np.float32), lam


class ClassifierTrainTransform:
    """RandomResizedCrop + flip [+ RandAugment] + normalize [+ random erasing].

    Shaped like a one-view :class:`~jhssl.data.transforms.MultiCropAugmentation` (``num_crops``,
    ``n_global``, returns a list), so :class:`~jhssl.data.datasets.PretrainDataset` serves it
    with its epoch-seeded, resumable sample order.
    """
    num_crops = 1
    n_global = 1

    def __init__(self, size: int, scale=(0.08, 1.0), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 rand_augment: str | None = None, reprob: float = 0.0):
        self.size, self.scale = int(size), tuple(scale)
        self.mean, self.std = tuple(mean), tuple(std)
        self.rand_augment = RandAugment(rand_augment, mean) if rand_augment else None
        self.reprob = float(reprob)

    def __call__(self, img: Image.Image, rng: np.random.Generator, trace: list | None = None):
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = random_resized_crop(img, self.size, self.scale, rng)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rng, trace)
        x = to_normalized_array(img, self.mean, self.std)
        if self.reprob > 0:
            x = random_erasing(x, rng, self.reprob)
        return [x]
