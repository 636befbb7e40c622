"""MAE (He et al., CVPR 2022) and MAE + HSSL (paper Appendix D, Table VI), ``method: mae``.

MAE (``hssl: null``, the baseline), as facebookresearch/mae (models_mae.py, main_pretrain.py):

* one view per image (RandomResizedCrop scale 0.2-1, flip; no colour augmentation, no multi-crop);
* 75 % of the patches masked per image, exactly ``N - int(N * 0.25)`` (argsort of uniform noise,
  :class:`jhssl.data.masking.RandomPatchMask`); the masks are drawn by the data loader from the
  sample's seeded generator so that MPI ranks and resumed runs see the same masks;
* the encoder runs on the CLS token + visible patches only (``VisionTransformer.forward_visible``),
  with fixed 2-D sin-cos position embeddings; MAE's initialisation (``models.mae.init_mae_weights``);
* a lightweight decoder (:class:`models.mae.MAEDecoder`: own mask token, fixed sin-cos positions,
  ``mae.decoder_depth`` blocks of width ``mae.decoder_embed_dim``); target: per-patch normalised
  pixels (``norm_pix_loss``), MSE on the masked patches only;
* AdamW lr 1.5e-4 x batch / 256, betas (0.9, 0.95), weight decay 0.05 (constant), 40 warm-up
  epochs then cosine to 0, no gradient clipping, no EMA teacher (the configs set these).

MAE + HSSL. The paper: "the base model reconstructs the representations learned by the auxiliary
head, and the auxiliary head reconstructs RGB values, where the two targets use two independent
decoders". Per image and step::

    enc    = base encoder on the visible patches
    grid   = enc's visible pre-norm tokens re-laid on the patch grid, the masked positions holding
             the head's own mask token + the fixed sin-cos position of the position     (1)
    h      = head(grid)                                                    (HSSL head, e.g. ConvNext)
    L_pix  = norm-pix MSE of pixel_decoder(h) on the masked patches        (head reconstructs RGB)
    target = LN(head(base encoder on ALL patches)), no gradient            (2), (3)
    L_feat = MSE of feature_decoder(enc) against ``target`` on the masked patches
                                                                           (base reconstructs the head)
    loss   = L_feat + L_pix                                                (Eq. 1: terms summed)

The three choices the paper leaves open:

(1) The head reads the encoder's visible tokens re-laid on the full 2-D grid, the masked positions
    filled with a learnable head mask token plus their fixed sin-cos position (MAE's decoder input;
    SimMIM and ConvNeXt V2's FCMAE also give a convolutional network a dense grid with the masked
    positions filled). A ConvNext/ResNet head needs a dense grid, and reading the base *decoder's*
    output instead would make the head a third decoder rather than a head on the base's features.
(2) The representation target is the online head's output, computed with a stop-gradient on the
    unmasked image, not an EMA copy: MAE has no teacher, and CAE (Chen et al., 2023) aligns its
    latent predictions to the same online encoder's representations of the masked patches under a
    stop-gradient. Collapse is prevented because the head is anchored by its pixel loss (in
    data2vec / iBOT, with no pixel anchor, an EMA teacher is needed). The unmasked pass gives the
    target information about the masked content (as data2vec's and CAE's targets); a target from
    the masked pass would be a function of the visible tokens only.
(3) The target is the head's final output tokens (after its LayerNorm: what every other method
    uses as the head's representation), normalised once more per token by a LayerNorm without
    affine parameters: the head's learnable norm could otherwise shrink the target's scale and the
    loss with it (data2vec normalises its targets per token the same way; MAE's norm_pix_loss is
    that normalisation on pixels; MaskFeat's HOG targets are likewise locally normalised).

The discrepancy D logged per epoch (``discrepancy_batch``): the feature-reconstruction loss itself on
held-out images (fixed masks), i.e. the mean squared distance between what the base predicts for the
masked patches and the head's normalised representation of them. It is the counterpart of Eq. 5's
KL between base and head outputs in this method's own loss space; linear CKA and Procrustes between
the base's CLS feature and the head's pooled feature are logged beside it, as for the other methods.

MFF (``mae.fusion_layers``; the zh version's MFF [81] and MFF + HSSL rows, ViT-B/16, 300 epochs):
Liu et al., "Improving Pixel-based MIM by Reducing Wasted Modeling Capability" (ICCV 2023,
arXiv 2308.00261; official code: open-mmlab/mmpretrain ``mmpretrain/models/selfsup/mff.py`` and
``configs/mff/``). Pixel reconstruction makes MAE's last block spend capacity on low-level detail;
MFF gives the decoder the shallow blocks' outputs as well. As ``MFFViT``:

* the outputs of the listed encoder blocks (0-based, the encoder's last block last; MMPretrain's
  ViT-B configs fuse ``[1, 3, 5, 7, 9, 11]`` at 300 epochs and ``[0, 2, 4, 6, 8, 11]`` at 800), CLS
  token included, are taken pre-norm on the visible tokens during the one encoder pass;
* each shallower block goes through its own Linear(C, C), the last block is not projected;
* they are summed with softmax-normalised learned weights (one logit per block, initialised to 1);
* the encoder's final LayerNorm is applied to the sum, which the decoder then embeds as usual.

The fusion is pretraining-only (``MFFViT`` without a mask is the plain ViT): its parameters
(``fusion.*``) sit on the decoder side of :class:`MAENetwork`, are checkpointed, and are dropped by
the base-model export. Recipe (MMPretrain's MFF ViT-B/16 300-epoch config = its MAE config):
norm_pix_loss, 75 % masking, decoder 8 x 512 (16 heads), batch 4096, lr 1.5e-4 x batch / 256, AdamW
(0.9, 0.95), weight decay 0.05, 40 warm-up epochs then cosine. With ``fusion_layers`` = the last
block alone the fusion is the identity and the run is plain MAE.

MFF + HSSL: the fused tokens replace the encoder's output everywhere in pretraining: the base's
feature decoder reads LN(fused) and the head reads the fused pre-norm tokens (in the masked pass and
in the unmasked target pass alike). Why: in MFF the fused tokens *are* the encoder's pretraining
output and HSSL puts the head serially after the base's output; the pixel reconstruction MFF was
designed for runs through the head in MAE + HSSL, so it is the pixel path that must see the shallow
features for MFF to relieve the last block; and the target pass feeds the head the same kind of
input as the masked pass, or the head's target would come from inputs it is not trained on. Outside
pretraining (k-NN of the head's features, visualisation) the head reads the last block's tokens: the
fusion parameters are not part of the evaluated network.

Declared in :mod:`jhssl.methods.registry`: one view (crop + flip), loader-drawn random masks, no EMA
teacher, the ``mae`` config section. Loss parts: ``pix_base`` (baseline) or ``pix_head`` and
``feat_base`` (HSSL); with MFF also ``mff_w<block>``, the fusion weights (logged, not summed).
Checkpoints hold the student network only (``teacher: None``): ``backbone.*``, ``decoder.*``,
with MFF ``fusion.*`` and, with HSSL, ``aux_head.*``, ``aux_mask_token``, ``aux_decoder.*``. Nothing
but the parameters is synchronised across ranks (the masks come from the data).
"""
from jhssl import bootstrap  # noqa: F401

import numpy as np
import jittor as jt
from jittor import nn

from .base import Method

__all__ = ["MAE", "MAENetwork", "MAELoss", "masking_rows", "norm_pix_target", "masked_mse", "layer_norm_target",
           "build"]

NORM_PIX_EPS = 1e-6   # MAE forward_loss: (target - mean) / (var + 1e-6) ** 0.5
TARGET_LN_EPS = 1e-6


# ----------------------------------------------------------------------------- masking on the host
def masking_rows(mask):
    """MAE's ``ids_keep`` / ``ids_restore`` of a batch of masks, as flat row indices.

    ``mask``: (B, H, W) or (B, N) bool (True: masked), the same masked count in every image. Returns
    ``(keep_rows, restore_rows, mask_flat, num_keep)``: (B * K,) int32 rows of the visible patches
    (raster order, ``b * N + i``); (B * N,) int32 rows into each image's ``[visible, mask tokens]``
    sequence that restore raster order (``b * N + ids_restore[b, i]``); (B, N) float32 0/1 mask.
    ``ids_shuffle`` is the stable argsort of the mask (visible first): the encoder adds the position
    embeddings before dropping patches, so the visible tokens' order is immaterial.
    """
    m = np.asarray(mask.numpy() if isinstance(mask, jt.Var) else mask).astype(bool)
    m = m.reshape(m.shape[0], -1)
    B, N = m.shape
    counts = m.sum(axis=1)
    if (counts != counts[0]).any():
        raise ValueError(f"MAE needs the same number of masked patches in every image, got counts "
                         f"{sorted(set(counts.tolist()))}")
    K = N - int(counts[0])
    if K < 1:
        raise ValueError(f"every one of the {N} patches is masked: MAE's encoder needs at least one visible patch")
    ids_shuffle = np.argsort(m, axis=1, kind="stable")
    ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
    offsets = (np.arange(B) * N)[:, None]
    keep = (ids_shuffle[:, :K] + offsets).reshape(-1)
    restore = (ids_restore + offsets).reshape(-1)
    return (jt.array(keep.astype(np.int32)).stop_grad(), jt.array(restore.astype(np.int32)).stop_grad(),
            m.astype(np.float32), K)


# ----------------------------------------------------------------------------- losses (pure functions)
def norm_pix_target(rows):
    """MAE's ``norm_pix_loss`` target: each patch row minus its mean, over sqrt(unbiased var + 1e-6)
    (``torch.var``'s default is the unbiased estimate, which MAE uses)."""
    n = rows.shape[-1]
    mean = rows.mean(dim=-1, keepdims=True)
    var = ((rows - mean) ** 2).sum(dim=-1, keepdims=True) / max(n - 1, 1)
    return (rows - mean) / jt.sqrt(var + NORM_PIX_EPS)


def layer_norm_target(x):
    """Per-token LayerNorm without affine parameters (biased variance, eps 1e-6)."""
    mean = x.mean(dim=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdims=True)
    return (x - mean) / jt.sqrt(var + TARGET_LN_EPS)


def masked_mse(pred, target, mask):
    """MAE's loss: per-patch mean squared error, averaged over the masked patches only.
    ``pred``/``target`` (B, N, D); ``mask`` (B, N) 0/1 (1: masked)."""
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MAELoss(nn.Module):
    """Pixel and feature reconstruction terms. No state (nothing to checkpoint or synchronise)."""

    def __init__(self, patch_size, norm_pix_loss=True):
        super().__init__()
        self.patch_size = int(patch_size)
        self.norm_pix_loss = bool(norm_pix_loss)

    def pixel_target(self, imgs):
        from models.mae import patchify
        rows = patchify(imgs, self.patch_size)
        return norm_pix_target(rows) if self.norm_pix_loss else rows

    def pixel(self, pred, imgs, mask):
        return masked_mse(pred, self.pixel_target(imgs).detach(), mask)

    def feature(self, pred, target, mask):
        return masked_mse(pred, target.detach(), mask)


# ----------------------------------------------------------------------------- the network
class MAENetwork(nn.Module):
    """Base encoder + decoder(s), and with HSSL the auxiliary head, its mask token and its decoder.

    ``decoder`` predicts pixels (baseline) or the head's representation (HSSL); ``aux_decoder``
    predicts the head's pixels (HSSL only). ``fusion_layers`` (MFF): the encoder blocks whose
    outputs :class:`models.mae.MultiLevelFusion` (``fusion``) fuses into the encoder's output for
    the decoder and the head; None: the last block's (plain MAE). See the module docstring."""

    def __init__(self, backbone, patch_size, decoder_kw, aux_head=None, fusion_layers=None):
        super().__init__()
        from models.mae import MAEDecoder, MultiLevelFusion
        self.backbone = backbone  # initialised by init_mae_encoder (build() does it first)
        self.aux_head = aux_head
        dim = backbone.num_features
        pix_dim = int(patch_size) ** 2 * 3
        if aux_head is None:
            self.decoder = MAEDecoder(dim, pix_dim, **decoder_kw)
        else:
            self.decoder = MAEDecoder(dim, aux_head.out_dim, **decoder_kw)
            self.aux_mask_token = jt.init.gauss((1, 1, dim), "float32", 0.0, 0.02)
            # the head's output covers the whole grid: its decoder needs no mask token
            self.aux_decoder = MAEDecoder(aux_head.out_dim, pix_dim, use_mask_token=False, **decoder_kw)
        # built last, so that the encoder and decoders of one seed are those of plain MAE
        self.fusion_layers = tuple(fusion_layers) if fusion_layers else ()
        self.fusion = MultiLevelFusion(dim, len(self.fusion_layers)) if self.fusion_layers else None

    def encode(self, imgs, keep_rows=None, num_keep=None):
        """The encoder's output as the decoders and the head read it, on the visible patches when
        ``keep_rows`` is given, else on the whole image: ``tokens`` (B, 1 + K, C) the normed CLS +
        patch tokens (the base decoder's input), ``head_input`` (B, K, C) the pre-norm patch tokens,
        ``grid``, and ``base_cls`` the base model's own feature (the last block's normed CLS, what
        is exported). With MFF, ``tokens`` and ``head_input`` come from the fused block outputs
        (the final norm applied after the fusion, as MMPretrain's ``MFFViT``); the blocks run once."""
        bb = self.backbone
        if keep_rows is None:
            enc = bb.forward_features(imgs, layers=self.fusion_layers)
        else:
            enc = bb.forward_visible(imgs, keep_rows, num_keep, layers=self.fusion_layers)
        out = {"grid": enc["grid"], "base_cls": enc["cls"]}
        if self.fusion is None:
            out.update(tokens=jt.concat([enc["cls"][:, None], enc["patch"]], dim=1), head_input=enc["head_input"])
        else:
            fused = self.fusion(enc["layers"])
            out.update(tokens=bb.norm(fused), head_input=fused[:, 1:])
        return out

    def head_grid(self, visible_tokens, restore_rows, mask, grid):
        """(1): visible (B, K, C) tokens on the full grid, masked positions = mask token + position."""
        from models.mae import fixed_sincos_pos_embed, unshuffle
        B, _, C = visible_tokens.shape
        N = int(grid[0]) * int(grid[1])
        x = unshuffle(visible_tokens, self.aux_mask_token, restore_rows, N)
        pos = fixed_sincos_pos_embed(C, grid, cls_token=False)
        return x + pos * jt.array(mask).reshape((B, N, 1)).stop_grad()

    def head_target(self, imgs):
        """(2)+(3): LN(head output tokens) on the unmasked image, no gradient; (B, N, C_head)."""
        with jt.no_grad():
            full = self.encode(imgs)
            return layer_norm_target(self.aux_head(full["head_input"], full["grid"])["patch"]).detach()

    def execute(self, imgs, keep_rows, restore_rows, mask, num_keep):
        """Predictions of one batch: ``pix_base`` (baseline) or ``pix_head`` and ``feat_base`` (HSSL),
        each (B, N, D), plus ``grid``; ``target`` (HSSL) the head's representation target."""
        enc = self.encode(imgs, keep_rows, num_keep)
        grid = enc["grid"]
        base_pred = self.decoder(enc["tokens"], grid, restore_rows)
        if self.aux_head is None:
            return {"pix_base": base_pred, "grid": grid}
        h = self.aux_head(self.head_grid(enc["head_input"], restore_rows, mask, grid), grid)
        pix = self.aux_decoder(jt.concat([h["cls"][:, None], h["patch"]], dim=1), grid)
        return {"pix_head": pix, "feat_base": base_pred, "target": self.head_target(imgs), "grid": grid}


# ----------------------------------------------------------------------------- the method
class MAE(Method):
    """MAE / MAE + HSSL: no teacher (``momentum_schedule`` is None), one view, loader masks."""

    name = "mae"

    def __init__(self, cfg, student, loss):
        super().__init__(cfg, student, None, loss)
        self.hssl = student.aux_head is not None

    # -- loss ------------------------------------------------------------------------------------
    def forward(self, imgs, mask, net=None):
        if not isinstance(imgs, jt.Var):
            imgs = jt.array(np.asarray(imgs, dtype=np.float32))
        keep, restore, mask_np, k = masking_rows(mask)
        out = (net or self.student)(imgs, keep, restore, mask_np, k)
        return imgs, jt.array(mask_np).stop_grad(), out

    def loss_terms(self, imgs, mask, out):
        if not self.hssl:
            parts = {"pix_base": self.loss.pixel(out["pix_base"], imgs, mask)}
        else:
            parts = {"pix_head": self.loss.pixel(out["pix_head"], imgs, mask),
                     "feat_base": self.loss.feature(out["feat_base"], out["target"], mask)}
        total = 0.0
        for v in parts.values():
            total = total + v
        parts["loss"] = total
        fusion = self.student.fusion
        if fusion is not None and fusion.num_layers > 1:  # logged, as MMPretrain's MFF logs weight_i
            w = fusion.fusion_weights().detach()
            for i, layer in enumerate(self.student.fusion_layers):
                parts[f"mff_w{layer}"] = w[i]
        return parts

    def compute_loss(self, crops, masks, epoch):
        """``crops``: [one (B, 3, H, W) view]; ``masks``: [its (B, H, W) MAE mask]."""
        if len(crops) != 1 or not masks or len(masks) != 1:
            raise ValueError(f"MAE takes one view and one mask per image, got {len(crops)} views and "
                             f"{len(masks) if masks else 0} masks")
        imgs, mask, out = self.forward(crops[0], masks[0])
        return self.loss_terms(imgs, mask, out)

    # -- evaluation ------------------------------------------------------------------------------
    def eval_masks(self, n, grid_hw, seed=0):
        """Fixed masks for held-out images (the same every epoch)."""
        from jhssl.data.masking import RandomPatchMask
        gen = RandomPatchMask(1, self.cfg.mae.mask_ratio)
        rng = np.random.default_rng([int(seed), 0x3AE])
        return np.stack([gen(grid_hw, rng) for _ in range(n)])

    def discrepancy_batch(self, net, x, epoch=None):
        """Per-image D of one batch (fixed masks), and the base's CLS / the head's pooled features:
        ``(d_rows (B,), base_feats (B, C), head_feats (B, C_head))`` numpy arrays. D is logged in
        the ``kl`` column, where the clustering methods log Eq. 5's KL."""
        if net.aux_head is None:
            raise ValueError("discrepancy needs an auxiliary head: this network has none (hssl: null?)")
        grid = net.backbone.patch_embed.check_img_size(x.shape[-2], x.shape[-1])
        with jt.no_grad():
            imgs, mask, out = self.forward(x, self.eval_masks(int(x.shape[0]), grid[0]), net=net)
            per_patch = ((out["feat_base"] - out["target"]) ** 2).mean(dim=-1)
            d = (per_patch * mask).sum(dim=1) / mask.sum(dim=1)
            full = net.encode(imgs)  # the head reads its training input (the fused tokens with MFF)
            h = net.aux_head(full["head_input"], full["grid"])
            return d.numpy(), full["base_cls"].numpy(), h["cls"].numpy()

    def reconstruct(self, x):
        """(input, masked input, reconstruction with the visible patches pasted back) as numpy
        (B, 3, H, W) in the input's normalised space; the prediction is un-normalised per patch
        with the input patch's own mean/std when ``norm_pix_loss`` (MAE's demo notebook)."""
        from models.mae import patchify, unpatchify
        net = self.student
        grid = net.backbone.patch_embed.check_img_size(x.shape[-2], x.shape[-1])
        masks = self.eval_masks(len(x), grid[0])
        p = self.loss.patch_size
        was_training = net.is_training()
        net.eval()
        try:
            with jt.no_grad():
                imgs, mask, out = self.forward(x, masks)
                pred = (out["pix_head"] if self.hssl else out["pix_base"]).numpy().astype(np.float64)
                rows = patchify(imgs, p).numpy().astype(np.float64)
        finally:
            if was_training:
                net.train()
        if self.loss.norm_pix_loss:
            mean = rows.mean(-1, keepdims=True)
            std = np.sqrt(rows.var(-1, ddof=1, keepdims=True) + NORM_PIX_EPS)
            pred = pred * std + mean
        m = masks.reshape(len(x), -1, 1).astype(np.float64)
        masked = unpatchify(rows * (1 - m), p, grid)
        recon = unpatchify(rows * (1 - m) + pred * m, p, grid)
        return np.asarray(x, np.float64), masked, recon

    def write_reconstruction_png(self, path, images, mean, std, n=8):
        """Rows of (input, masked, reconstructed) for the first ``n`` images, as MAE's demo notebook."""
        from PIL import Image
        from jhssl.fileio import atomic_output
        x = np.asarray(images[:n], dtype=np.float32)
        triples = self.reconstruct(x)
        mean = np.asarray(mean, np.float64).reshape(1, 3, 1, 1)
        std = np.asarray(std, np.float64).reshape(1, 3, 1, 1)
        tiles = [np.clip((t * std + mean) * 255.0, 0, 255).astype(np.uint8) for t in triples]
        B, _, H, W = tiles[0].shape
        pad = 2
        canvas = np.full((B * (H + pad) + pad, 3 * (W + pad) + pad, 3), 255, np.uint8)
        for i in range(B):
            for j, t in enumerate(tiles):
                top, left = pad + i * (H + pad), pad + j * (W + pad)
                canvas[top:top + H, left:left + W] = t[i].transpose(1, 2, 0)
        img = Image.fromarray(canvas)
        scale = max(1, 96 // H)  # small images (Fashion-MNIST) are enlarged for viewing
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        with atomic_output(path) as tmp:
            img.save(tmp, format="PNG")
        return path


def init_mae_encoder(backbone):
    """MAE's initialisation of the encoder, with its position embeddings fixed to the 2-D sin-cos
    table (MAE: requires_grad=False)."""
    from models.mae import fixed_sincos_pos_embed, init_mae_weights
    init_mae_weights(backbone)
    backbone.pos_embed.assign(fixed_sincos_pos_embed(backbone.num_features, backbone.patch_embed.grid_size))
    backbone.pos_embed.stop_grad()


def fusion_blocks(layers, depth, arch):
    """``mae.fusion_layers`` checked against the encoder's ``depth`` blocks (the schema has checked
    the list's form): None when off, else the tuple of block indices."""
    from jhssl.config import ConfigError
    if not layers:
        return None
    if layers[-1] != depth - 1:
        bad = [i for i in layers if not 0 <= i < depth]
        raise ConfigError(f"config key 'mae.fusion_layers' = {list(layers)}: "
                          + (f"block {bad[0]} is out of range for {arch!r} (blocks 0..{depth - 1})" if bad else
                             f"the last entry must be the encoder's last block, {depth - 1} for {arch!r} "
                             f"(MFF fuses shallower blocks into the output block)"))
    return tuple(int(i) for i in layers)


def build(cfg):
    """MAE (``hssl: null``) or MAE + HSSL from ``cfg``; ``mae.init_from`` loads a (converted) encoder."""
    from .selfdistill import build_aux_head_for, build_base_model
    from jhssl.config import ConfigError
    a = cfg.mae
    backbone = build_base_model(cfg, use_mask_token=False)
    if not hasattr(backbone, "forward_visible"):
        raise ConfigError(f"config key 'model.arch' = {cfg.model.arch!r}: method: mae needs a ViT base model"
                          + (" (and mae.fusion_layers fuses ViT blocks)" if a.fusion_layers else ""))
    fusion_layers = fusion_blocks(a.fusion_layers, len(backbone.blocks), cfg.model.arch)
    # before anything else draws from the RNG, so that the plain-MAE and MAE + HSSL runs of one seed
    # start from the same encoder (their untrained k-NN and the comparison depend on it)
    init_mae_encoder(backbone)
    aux = build_aux_head_for(cfg, backbone, teacher=False)
    decoder_kw = dict(embed_dim=a.decoder_embed_dim, depth=a.decoder_depth, num_heads=a.decoder_num_heads)
    student = MAENetwork(backbone, cfg.model.patch_size, decoder_kw, aux, fusion_layers)
    if a.init_from:
        from jhssl import zoo
        report = zoo.load_into(backbone, a.init_from, arch=cfg.model.arch, verbose=False)
        backbone.pos_embed.stop_grad()  # stays fixed (MAE's released table is the same sin-cos one)
        fresh = (["decoder"] + (["aux_head", "aux_mask_token", "aux_decoder"] if aux is not None else [])
                 + (["fusion"] if fusion_layers else []))
        print(f"mae.init_from={a.init_from}: base encoder loaded ({len(report.loaded)} tensors"
              + (f", dropped {len(report.dropped)}: {', '.join(sorted(set(report.dropped.values())))}"
                 if report.dropped else "")
              + f"); starting fresh: {', '.join(fresh)}")
    return MAE(cfg, student, MAELoss(cfg.model.patch_size, a.norm_pix_loss))


build_mae = build
