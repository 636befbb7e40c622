"""Pictures of what a pretrained network learned.

* CLS self-attention of the last block, one map per head (DINO ``visualize_attention.py``): the
  softmax row of the CLS query over the patch tokens, reshaped to the patch grid, each head scaled
  to [0, 1] and shown with a colour map, upsampled (nearest) to the image size.
  Hierarchical bases (Swin, ResNet, ...) have no CLS token: the attention panel is replaced by a
  clear message and only the PCA pictures are written.
* PCA of the patch features (DINOv2's figures): the first three principal components of the
  patch tokens of all given images together, each component min-max scaled to [0, 1], as RGB.
* HSSL checkpoints: the same PCA for the auxiliary head's output tokens, beside the base's.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

import jhssl  # noqa: F401

__all__ = ["load_image", "cls_attention_maps", "pca_rgb", "colormap", "visualize"]

# A perceptually ordered colour map (dark blue -> purple -> orange -> yellow, like 'inferno').
_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                     [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def colormap(x: np.ndarray) -> np.ndarray:
    """[0, 1] values (H, W) -> uint8 RGB (H, W, 3)."""
    t = np.clip(x, 0.0, 1.0) * (len(_ANCHORS) - 1)
    i = np.minimum(t.astype(int), len(_ANCHORS) - 2)
    f = (t - i)[..., None]
    return (_ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f).astype(np.uint8)


def _unit(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def load_image(path: str, size: int, multiple: int, mean, std):
    """(PIL RGB image S x S, normalized (1, 3, S, S) array): shorter side resized to ``size``, centre
    crop to a square whose side is a multiple of ``multiple``."""
    from jhssl.data.transforms import BICUBIC, to_normalized_array
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    img = img.convert("RGB")
    side = max(multiple, (size // multiple) * multiple)
    W, H = img.size
    s = side / min(W, H)
    nw, nh = max(side, round(W * s)), max(side, round(H * s))
    img = img.resize((nw, nh), BICUBIC)
    left, top = (nw - side) // 2, (nh - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img, to_normalized_array(img, mean, std)[None]


def cls_attention_maps(backbone, x) -> np.ndarray:
    """(B, heads, h, w): the last block's attention of the CLS query on every patch token."""
    import jittor as jt
    if not hasattr(backbone, "get_last_selfattention"):
        raise NotImplementedError(f"{type(backbone).__name__} has no CLS token (windowed or convolutional "
                                  f"stages): CLS attention maps exist for ViT bases only")
    with jt.no_grad():
        attn = backbone.get_last_selfattention(jt.array(x)).numpy()
    ps = backbone.patch_size if isinstance(backbone.patch_size, int) else backbone.patch_size[0]
    h, w = x.shape[-2] // ps, x.shape[-1] // ps
    return attn[:, :, 0, 1:].reshape(attn.shape[0], attn.shape[1], h, w)


def pca_rgb(tokens: list) -> list:
    """First 3 principal components of all images' patch tokens together -> one (h, w, 3) [0, 1]
    image per input ``(h, w, C)`` array."""
    flat = np.concatenate([t.reshape(-1, t.shape[-1]) for t in tokens]).astype(np.float64)
    flat = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    comps = vt[:3]
    if comps.shape[0] < 3:  # fewer than 3 channels or tokens: pad with zeros
        comps = np.concatenate([comps, np.zeros((3 - comps.shape[0], flat.shape[1]))])
    proj = flat @ comps.T
    proj = np.stack([_unit(proj[:, i]) for i in range(3)], axis=1)
    out, s = [], 0
    for t in tokens:
        n = t.shape[0] * t.shape[1]
        out.append(proj[s:s + n].reshape(t.shape[0], t.shape[1], 3))
        s += n
    return out


def _grid(n: int, grid):
    if grid and grid[0] * grid[1] == n:
        return tuple(grid)
    r = int(round(np.sqrt(n)))
    if r * r != n:
        raise ValueError(f"cannot lay out {n} tokens on a square grid")
    return r, r


def _upsample(arr: np.ndarray, side: int) -> Image.Image:
    img = Image.fromarray(arr if arr.dtype == np.uint8 else (np.clip(arr, 0, 1) * 255).astype(np.uint8))
    return img.resize((side, side), Image.NEAREST)


def _row(images, side) -> Image.Image:
    out = Image.new("RGB", (side * len(images), side), "white")
    for i, im in enumerate(images):
        out.paste(im, (i * side, 0))
    return out


def visualize(network, image_paths, output_dir: str, size: int, mean, std, log=print) -> list:
    """Write ``<name>_attention.png`` (image + one map per head; ViT only) and ``<name>_pca.png``
    (image + base PCA [+ auxiliary-head PCA]) per image; returns the written paths."""
    import jittor as jt
    from jhssl.fileio import atomic_output
    backbone = network.backbone
    aux = getattr(network, "aux_head", None)
    multiple = int(getattr(backbone, "feature_stride", 16))
    loaded = [load_image(p, size, multiple, mean, std) for p in image_paths]
    side = loaded[0][0].size[0]
    base_tokens, head_tokens, attn = [], [], []
    has_attn = hasattr(backbone, "get_last_selfattention")
    if not has_attn and log:
        log(f"attention maps: {type(backbone).__name__} has no CLS token (hierarchical stages), so there is no "
            f"CLS self-attention to show; writing the PCA pictures only")
    with jt.no_grad():
        for _, x in loaded:
            out = backbone.forward_features(jt.array(x))
            gh, gw = out["grid"]
            patch = out["patch"].numpy()[0]
            base_tokens.append(patch.reshape(*_grid(patch.shape[0], (gh, gw)), -1))
            if aux is not None:
                hp = aux(out["head_input"], out["grid"])["patch"].numpy()[0]
                head_tokens.append(hp.reshape(*_grid(hp.shape[0], (gh, gw)), -1))
            if has_attn:
                attn.append(cls_attention_maps(backbone, x)[0])
    base_pca = pca_rgb(base_tokens)
    head_pca = pca_rgb(head_tokens) if head_tokens else None
    os.makedirs(output_dir, exist_ok=True)
    written, used = [], set()
    for i, (path, (img, _)) in enumerate(zip(image_paths, loaded)):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in used:
            stem = f"{stem}_{i}"
        used.add(stem)
        if has_attn:
            panels = [img] + [_upsample(colormap(_unit(a)), side) for a in attn[i]]
            p = os.path.join(output_dir, f"{stem}_attention.png")
            with atomic_output(p) as tmp:
                _row(panels, side).save(tmp)
            written.append(p)
        panels = [img, _upsample(base_pca[i], side)] + ([_upsample(head_pca[i], side)] if head_pca else [])
        p = os.path.join(output_dir, f"{stem}_pca.png")
        with atomic_output(p) as tmp:
            _row(panels, side).save(tmp)
        written.append(p)
    return written
