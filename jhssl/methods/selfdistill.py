"""The self-distillation family (DINO, iBOT) with or without HSSL: networks, method class, builder.

``jhssl/methods/dino.py`` and ``ibot.py`` register the two methods on top of this shared code (iBOT
is DINO plus masked patch-token terms). ``build_base_model`` is the one place a base model is built
from a config, for every method.
"""
from jhssl import bootstrap  # noqa: F401

import jittor as jt

from jhssl import perf
from models.heads import run_auxiliary

from .base import Method
from .losses import SelfDistillationLoss
from .masked_rows import MaskedRows
from .network import SSLNetwork


def _models():
    import models  # importing the package registers every model family
    return models


def build_base_model(cfg, drop_path_rate=None, use_mask_token=None):
    """The base model named by ``cfg.model.arch``, with the options it declares (jhssl.base_models)."""
    from jhssl.base_models import build_base_model as build
    return build(cfg, drop_path_rate, use_mask_token)


def build_aux_head_for(cfg, backbone, teacher):
    """HSSL's auxiliary head for ``backbone`` (None for the baseline ``hssl: null``); the teacher's
    has no drop path."""
    from models.heads import build_aux_head
    m, h = cfg.model, cfg.hssl
    aux = None
    if h is not None:
        aux_drop = 0.0 if teacher else (h.drop_path_rate if h.drop_path_rate is not None else m.drop_path_rate)
        head_kw = {}
        if "resmlp" in h.heads:
            # ResMLP's cross-patch layer is sized for the largest token grid it will see: the
            # global crops' (local crops use its centre part).
            crop = m.img_size or cfg.data.global_crop_size
            head_kw["max_grid"] = max(1, crop // backbone.feature_stride)
        if h.head_structure != "full":
            head_kw["structure"] = h.head_structure  # Table XV (ConvNext head)
        if h.connection == "serial":
            aux = build_aux_head(list(h.heads), backbone.num_features, depth=h.depth,
                                 first_shortcut=h.first_shortcut, drop_path=aux_drop, **head_kw)
        else:  # Table XVII (a whole ConvNeXt-T on the images) or Table XIX (deep-to-shallow)
            from models.heads import auxiliary_for_connection
            aux = auxiliary_for_connection(h.connection, backbone, drop_path=aux_drop, shallow_block=h.shallow_block)
    return aux


def _build_network(cfg, teacher, use_patch):
    _models()
    m, h = cfg.model, cfg.hssl
    drop = 0.0 if teacher else m.drop_path_rate
    backbone = build_base_model(cfg, drop_path_rate=drop)
    aux = build_aux_head_for(cfg, backbone, teacher)
    shared = m.shared_last_layer_teacher if teacher else m.shared_last_layer
    return SSLNetwork(
        backbone, aux, out_dim=m.out_dim, patch_out_dim=m.patch_out_dim, hidden_dim=m.head_hidden_dim,
        bottleneck_dim=m.head_bottleneck_dim, nlayers=m.head_nlayers, norm_last_layer=m.norm_last_layer,
        shared_head=shared, use_patch=use_patch,
        share_projection=(h is not None and not h.separate_proj),
        share_last_layer=(h is not None and h.shared_prototypes),
        use_bn=m.use_bn_in_head, act=m.act_in_head)


class SelfDistillation(Method):
    """DINO/iBOT student + EMA teacher + loss; HSSL when ``cfg.hssl`` is a section, baseline when null.

    Which outputs meet in the loss (paper Eqs. 1-2, z1 = teacher, z2 = student):
      baseline:                 CLS  L(z1b, z2b);              patches  L(p1b, p2b)
      hssl.image_level:         CLS  L(z1h, z2b) + L(z1h, z2h)
      hssl.patch_level=head:    patches L(p1h, p2b) + L(p1h, p2h)          (paper)
      hssl.patch_level=base:    patches L(p1b, p2b)   (authors' Jittor code: the teacher *base*
                                patch tokens supervise the student base only; Table XVIII's
                                "image-level only" row)
      hssl.patch_level=none:    no patch terms (iBOT without MIM).
    """

    def __init__(self, cfg, student, teacher, loss, patch_terms=None):
        super().__init__(cfg, student, teacher, loss)
        # iBOT's masked patch terms (the loss knows; the search passes its candidates' setting)
        self.patch_terms = bool(loss.use_patch if patch_terms is None else patch_terms)
        h = cfg.hssl
        self.n_global = 2
        self.n_local = cfg.data.local_crops_number
        self.cls_students = ["base"]
        self.cls_target = "base_cls"
        self.patch_students, self.patch_target = [], None
        if h is not None and h.image_level:
            self.cls_students, self.cls_target = ["base", "head"], "head_cls"
        if self.patch_terms:
            level = "base" if h is None else h.patch_level
            if level == "head":
                self.patch_students, self.patch_target = ["base", "head"], "head_patch"
            elif level == "base":
                self.patch_students, self.patch_target = ["base"], "base_patch"
        # Ablations (paper Sec. 5). Table XIV: head_only (A->A) drops the base's terms; separate
        # (A->A + B->B) has each network supervise itself, the head->head term with its own loss
        # (own centers, loss.head_self). Table XIX: deep-to-shallow, the teacher base (deep) is the target.
        self.head_self = h is not None and h.supervision == "separate"
        self.head_self_patch = self.head_self and self.patch_terms and h.patch_level == "head"
        if h is not None and h.connection == "deep_to_shallow":
            self.cls_target = "base_cls" if h.image_level else self.cls_target
            self.patch_target = "base_patch" if self.patch_target else None
        elif h is not None and h.supervision != "heterogeneous":
            kept = ["head"] if h.supervision == "head_only" else ["base"]
            if h.image_level:
                self.cls_students = kept
                self.cls_target = "head_cls" if kept == ["head"] else "base_cls"
            if self.patch_target == "head_patch":
                self.patch_students = kept
                self.patch_target = "head_patch" if kept == ["head"] else "base_patch"

    # -- forward + loss ------------------------------------------------------------------------
    def forward_pair(self, crops, masks):
        """Teacher outputs on the global crops (no gradient) and student outputs on all crops.

        Returns ``(teacher, student, patch_masks)``: the two networks' output dicts and what the
        loss takes as ``masks``: None without iBOT patch terms; with them a :class:`MaskedRows`
        (patch outputs are the masked rows, the teacher also gives ``<target>_mean``) when
        ``jhssl.perf.masked_projection_enabled()``, else the masks (full patch outputs).
        ``crops``: 2 global + n_local crops; ``masks``: one (B, ...) mask per global crop.
        """
        if len(crops) != self.n_global + self.n_local:
            raise ValueError(f"expected {self.n_global} global + {self.n_local} local crops, got {len(crops)}")
        use_masks = masks if (self.patch_terms and self.patch_target) else None
        rows = None
        if use_masks is not None and perf.masked_projection_enabled():
            rows = MaskedRows(use_masks[:self.n_global])
        want_t = {self.cls_target}
        if self.patch_target:
            want_t |= {self.patch_target} | ({self.patch_target + "_mean"} if rows is not None else set())
        want_s = {c + "_cls" for c in self.cls_students} | {p + "_patch" for p in self.patch_students}
        if self.head_self:
            want_t |= {"head_cls"} | ({"head_patch"} if self.head_self_patch else set())
            want_t |= {"head_patch_mean"} if self.head_self_patch and rows is not None else set()
            want_s |= {"head_cls"} | ({"head_patch"} if self.head_self_patch else set())
        with jt.no_grad():
            t = self.teacher(list(crops[:self.n_global]), n_global=self.n_global, want=want_t, patch_rows=rows)
        s = self.student(list(crops), masks=use_masks, n_global=self.n_global, want=want_s, patch_rows=rows)
        return t, s, (rows if rows is not None else use_masks)

    def loss_terms(self, loss, t, s, patch_masks, epoch):
        """``loss`` (a SelfDistillationLoss) on one teacher/student output pair from :meth:`forward_pair`."""
        patch_mean = t.get(self.patch_target + "_mean") if self.patch_target else None
        out = loss({n: s[n + "_cls"] for n in self.cls_students},
                   {n: s[n + "_patch"] for n in self.patch_students},
                   t[self.cls_target], t[self.patch_target] if self.patch_target else None,
                   patch_masks, epoch, teacher_patch_mean=patch_mean)
        if self.head_self:  # Table XIV A->A + B->B: the head's own term, with its own centers
            p = self.head_self_patch
            extra = loss.head_self({"head": s["head_cls"]}, {"head": s["head_patch"]} if p else {},
                                   t["head_cls"], t["head_patch"] if p else None, patch_masks, epoch,
                                   teacher_patch_mean=t.get("head_patch_mean"))
            out.update({k: v for k, v in extra.items() if k != "loss"})
            out["loss"] = out["loss"] + extra["loss"]
        return out

    def compute_loss(self, crops, masks, epoch):
        """Loss dict for one batch. ``crops``: 2 global + n_local crops; ``masks``: 2 (B, ...) masks."""
        t, s, patch_masks = self.forward_pair(crops, masks)
        return self.loss_terms(self.loss, t, s, patch_masks, epoch)

    # -- what else the trainer asks ----------------------------------------------------------------
    def frozen_parameters(self, epoch):
        """DINO/iBOT keep the prototype (last) layers fixed for ``optim.freeze_last_layer`` epochs."""
        if epoch >= self.cfg.optim.freeze_last_layer:
            return set()
        return {id(p) for n, p in self.student.named_parameters() if "last_layer" in n}

    def discrepancy_batch(self, net, x, epoch):
        """D = KL(z1b || z1h) (paper Eq. 5) per image: teacher probabilities ``softmax((z - c) / T)``
        of the base's and of the head's CLS projections (loss center ``c``, teacher temperature ``T``
        of ``epoch``, the final one when None), in log space; CKA/Procrustes on the unprojected CLS
        features (base: normed CLS; head: its pooled, normed output)."""
        from jhssl.metrics import kl_discrepancy_from_logits
        temps = self.loss.teacher_temps
        temp = float(temps[-1] if epoch is None else temps[min(int(epoch), len(temps) - 1)])
        center = self.loss.center.numpy()
        out = net.backbone.forward_features(x)
        h = run_auxiliary(net.aux_head, out, images=x)  # serial head, or a parallel net on the images
        zb = net.project(out["cls"], "base", "cls").numpy()
        zh = net.project(h["cls"], "head", "cls").numpy()
        d = kl_discrepancy_from_logits(zb, zh, temp, center, center, reduce=False)
        return d, out["cls"].numpy(), h["cls"].numpy()


def build_self_distillation(cfg, cls, use_patch):
    """Student, teacher (a copy of the student) and loss of DINO (``use_patch=False``) or iBOT."""
    m = cfg.model
    if use_patch and m.shared_last_layer != m.shared_last_layer_teacher \
            and m.patch_out_dim != m.out_dim:
        raise ValueError("model.shared_last_layer and model.shared_last_layer_teacher differ, so the "
                         "student and teacher patch outputs must have one size: set model.patch_out_dim "
                         f"({m.patch_out_dim}) = model.out_dim ({m.out_dim})")
    student = _build_network(cfg, teacher=False, use_patch=use_patch)
    teacher = _build_network(cfg, teacher=True, use_patch=use_patch)
    # the patch target's size is the teacher's: its CLS prototypes when it shares them (iBOT)
    patch_dim = m.out_dim if m.shared_last_layer_teacher else m.patch_out_dim
    L = cfg.loss

    def make_loss():
        return SelfDistillationLoss(
            m.out_dim, patch_dim, n_global=2, n_local=cfg.data.local_crops_number, epochs=cfg.epochs,
            warmup_teacher_temp=L.warmup_teacher_temp, teacher_temp=L.teacher_temp,
            warmup_teacher_patch_temp=L.warmup_teacher_patch_temp, teacher_patch_temp=L.teacher_patch_temp,
            warmup_teacher_temp_epochs=L.warmup_teacher_temp_epochs, student_temp=L.student_temp,
            center_momentum=L.center_momentum, patch_center_momentum=L.center_momentum,
            lambda1=L.lambda1, lambda2=L.lambda2, use_patch=use_patch,
            mim_start_epoch=cfg.mask.pred_start_epoch,
            average_cls_terms=(cfg.hssl is not None and cfg.hssl.average_cls_terms))
    loss = make_loss()
    if cfg.hssl is not None and cfg.hssl.supervision == "separate":
        loss.head_self = make_loss()  # a submodule: its centers are checkpointed with the loss
    method = cls(cfg, student, teacher, loss)
    method.copy_student_to_teacher()
    return method


def build_model(cfg):
    """The method object for ``cfg`` (any registered method; see :mod:`jhssl.methods.registry`)."""
    from .registry import build_method
    return build_method(cfg)
