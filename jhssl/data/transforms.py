"""DINO/iBOT multi-crop augmentation and the evaluation transform, in numpy + Pillow.

Every random choice draws from a ``numpy.random.Generator`` passed in by the caller. The
pretraining dataset seeds it from (seed, epoch, index), so a sample's views are the same in any
worker process, on any MPI rank and after a resume.

What follows DINO's ``DataAugmentationDINO`` (and iBOT's copy of it):
  global view 1: RandomResizedCrop(global size, global scale, bicubic) -> flip p=0.5 ->
                 colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8 -> grayscale p=0.2 -> blur p=1.0
  global view 2: the same, blur p=0.1, then solarization p=0.2
  local views:   RandomResizedCrop(local size, local scale) -> flip/jitter/grayscale -> blur p=0.5
then ToTensor + Normalize(mean, std): float32 CHW arrays.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

__all__ = ["random_resized_crop", "color_jitter", "is_gray", "gaussian_blur", "solarize", "to_normalized_array",
           "MultiCropAugmentation", "EvalTransform"]

BICUBIC = Image.BICUBIC


def random_resized_crop(img: Image.Image, size: int, scale, rng: np.random.Generator,
                        ratio=(3.0 / 4.0, 4.0 / 3.0)) -> Image.Image:
    """torchvision's RandomResizedCrop: 10 tries at a random area/aspect box, else a centre crop."""
    W, H = img.size
    area = W * H
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            top = int(rng.integers(0, H - h + 1))
            left = int(rng.integers(0, W - w + 1))
            break
    else:  # fall back to the largest centred box whose aspect lies within ``ratio``
        in_ratio = W / H
        if in_ratio < ratio[0]:
            w, h = W, int(round(W / ratio[0]))
        elif in_ratio > ratio[1]:
            h, w = H, int(round(H * ratio[1]))
        else:
            w, h = W, H
        top, left = (H - h) // 2, (W - w) // 2
    return img.resize((size, size), BICUBIC, box=(left, top, left + w, top + h))


def _adjust_hue(img: Image.Image, factor: float) -> Image.Image:
    # Shift the hue channel in HSV space, wrapping around (as torchvision does for PIL images).
    h, s, v = img.convert("HSV").split()
    h_arr = np.asarray(h, dtype=np.uint8)
    h_arr = (h_arr.astype(np.int16) + int(round(factor * 255))) % 256
    h = Image.fromarray(h_arr.astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(img: Image.Image, rng: np.random.Generator, brightness=0.4, contrast=0.4,
                 saturation=0.2, hue=0.1, gray=False) -> Image.Image:
    """ColorJitter: the four adjustments in a random order, each with a uniform random factor.

    ``gray=True`` says every pixel has R = G = B (Fashion-MNIST): saturation blends the image with
    its own grayscale and the hue shift rotates a hue that has no saturation, so both return the
    image unchanged (bit for bit, tested) and are skipped; their random draws are still made."""
    b = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
    c = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
    s = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
    hf = rng.uniform(-hue, hue)
    for op in rng.permutation(4):
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(b)
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(c)
        elif gray:
            continue
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(s)
        else:
            img = _adjust_hue(img, hf)
    return img


def is_gray(img: Image.Image) -> bool:
    """True when an RGB image has R = G = B everywhere (then every view made from it stays so:
    crops, flips, brightness, contrast, blur and solarization act on the channels alike)."""
    r, g, b = img.split()
    return r.tobytes() == g.tobytes() == b.tobytes()


def gaussian_blur(img: Image.Image, rng: np.random.Generator, sigma=(0.1, 2.0)) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(sigma[0], sigma[1])))


def solarize(img: Image.Image) -> Image.Image:
    return ImageOps.solarize(img, threshold=128)


def normalize_uint8(a: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W), (x / 255 - mean) / std: one image or a batch,
    with the same float32 arithmetic per element either way."""
    x = np.asarray(a, dtype=np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def to_normalized_array(img: Image.Image, mean, std) -> np.ndarray:
    """uint8 HWC image -> float32 CHW, (x / 255 - mean) / std."""
    return normalize_uint8(np.asarray(img.convert("RGB")), mean, std)


class MultiCropAugmentation:
    """``n_global`` (2, or 1) global + ``local_crops_number`` local views of one image (DINO/iBOT
    multi-crop; MoCo v3's two views are the two global ones: BYOL's asymmetric blur/solarisation)."""

    def __init__(self, global_crops_scale=(0.25, 1.0), local_crops_scale=(0.05, 0.25),
                 local_crops_number=10, global_crop_size=224, local_crop_size=96,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), blur_sigma=(0.1, 2.0), n_global=2):
        if n_global not in (1, 2):
            raise ValueError(f"n_global must be 1 or 2, got {n_global}")
        self.n_global = int(n_global)
        self.global_crops_scale = tuple(global_crops_scale)
        self.local_crops_scale = tuple(local_crops_scale)
        self.local_crops_number = int(local_crops_number)
        self.global_crop_size = int(global_crop_size)
        self.local_crop_size = int(local_crop_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.blur_sigma = tuple(blur_sigma)
        # (crop size, crop scale, blur p, solarize p) per view, in DINO's order.
        # False: views are normalized float32 CHW; True: uint8 HWC, normalized later by the
        # caller with normalize_uint8 (the pretraining loader's uint8 transport, jhssl.perf)
        self.uint8_output = False
        self.views = ([(self.global_crop_size, self.global_crops_scale, 1.0, 0.0),
                       (self.global_crop_size, self.global_crops_scale, 0.1, 0.2)][:self.n_global]
                      + [(self.local_crop_size, self.local_crops_scale, 0.5, 0.0)] * self.local_crops_number)

    @classmethod
    def from_config(cls, data_cfg, n_global=2, local_crops_number=None):
        """``local_crops_number``: default ``data_cfg.local_crops_number`` (0 for a method without
        multi-crop)."""
        n_local = data_cfg.local_crops_number if local_crops_number is None else local_crops_number
        return cls(data_cfg.global_crops_scale, data_cfg.local_crops_scale, n_local,
                   data_cfg.global_crop_size, data_cfg.local_crop_size, data_cfg.mean, data_cfg.std,
                   data_cfg.blur_sigma, n_global=n_global)

    @property
    def num_crops(self) -> int:
        return len(self.views)

    def _view(self, img, rng, size, scale, p_blur, p_solar, trace, gray=False):
        applied = {}
        img = random_resized_crop(img, size, scale, rng)
        applied["flip"] = rng.random() < 0.5
        if applied["flip"]:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        applied["jitter"] = rng.random() < 0.8
        if applied["jitter"]:
            img = color_jitter(img, rng, gray=gray)
        applied["gray"] = rng.random() < 0.2
        if applied["gray"]:
            img = img.convert("L").convert("RGB")
        # Draw even when p is 0 or 1 so that every view consumes the same random stream length.
        applied["blur"] = rng.random() < p_blur
        if applied["blur"]:
            img = gaussian_blur(img, rng, self.blur_sigma)
        applied["solarize"] = rng.random() < p_solar
        if applied["solarize"]:
            img = solarize(img)
        if trace is not None:
            trace.append(applied)
        if self.uint8_output:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
        return to_normalized_array(img, self.mean, self.std)

    def __call__(self, img: Image.Image, rng: np.random.Generator, trace: list | None = None):
        """Return the list of views (float32 CHW); ``trace`` (a list) receives each view's ops."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        gray = is_gray(img)
        return [self._view(img, rng, *v, trace, gray) for v in self.views]


class CropFlipAugmentation:
    """MAE's pretraining view: RandomResizedCrop (bicubic) + horizontal flip + normalize, one view
    per image (main_pretrain.py: scale (0.2, 1.0), no colour augmentation)."""

    n_global = 1
    num_crops = 1

    def __init__(self, crop_size=224, scale=(0.2, 1.0), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.crop_size, self.scale = int(crop_size), tuple(scale)
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def from_config(cls, data_cfg):
        return cls(data_cfg.global_crop_size, data_cfg.global_crops_scale, data_cfg.mean, data_cfg.std)

    def __call__(self, img: Image.Image, rng: np.random.Generator, trace: list | None = None):
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = random_resized_crop(img, self.crop_size, self.scale, rng)
        flip = rng.random() < 0.5
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if trace is not None:
            trace.append({"flip": flip})
        return [to_normalized_array(img, self.mean, self.std)]


class EvalTransform:
    """Resize the shorter side to ``resize_size`` (bicubic), centre-crop ``img_size``, normalize."""

    def __init__(self, img_size=224, resize_size=None, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.img_size = int(img_size)
        # DINO evaluates with Resize(256) + CenterCrop(224): keep that ratio at other sizes.
        self.resize_size = int(resize_size) if resize_size else int(round(img_size * 256 / 224))
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img: Image.Image) -> np.ndarray:
        if img.mode != "RGB":
            img = img.convert("RGB")
        W, H = img.size
        s = self.resize_size / min(W, H)
        nw, nh = max(self.resize_size, int(round(W * s))), max(self.resize_size, int(round(H * s)))
        img = img.resize((nw, nh), BICUBIC)
        left, top = (nw - self.img_size) // 2, (nh - self.img_size) // 2
        if left < 0 or top < 0:
            raise ValueError(f"eval resize_size {self.resize_size} is smaller than img_size {self.img_size}")
        img = img.crop((left, top, left + self.img_size, top + self.img_size))
        return to_normalized_array(img, self.mean, self.std)
