"""DINO / iBOT self-distillation losses with HSSL's heterogeneous terms (paper Eqs. 1-2).

Notation (paper): ``z1`` is the teacher's output for one view, ``z2`` the student's output for
another view; ``b`` the base model, ``h`` the auxiliary head. HSSL replaces the baseline's
``L(z1b, z2b)`` by ``L(z1h, z2b) + L(z1h, z2h)``: the *teacher head* is the target of both the
student base and the student head. ``L(t, s) = -sum_k softmax((t - c) / T_t)_k log softmax(s / T_s)_k``.

How the terms are combined follows the official iBOT code (``iBOTLoss``) and DINO (``DINOLoss``)
where the papers are silent:

* CLS terms are cross-view: every (teacher global crop q, student crop v) pair with ``v != q``,
  each averaged over the batch, then averaged over the pairs (DINO/iBOT divide by the number
  of pairs). Local crops feed the student only.
* Masked-patch terms (iBOT) are same-view (``v == q``, global crops only): per image the
  token losses are averaged over its masked tokens (``sum(mask * l) / max(sum(mask), 1)``),
  then averaged over the batch and over the global crops. Computed as a weighted sum over the
  masked tokens only (:mod:`jhssl.methods.masked_rows`), so the unmasked ones need no projection. Before iBOT's MIM start epoch the
  masks are empty and the term is 0 (official code, not stated in the paper).
* total = lambda1 * (sum of CLS terms) + lambda2 * (sum of patch terms). For HSSL the base and
  head terms are *summed* (paper Eq. 1). The authors' Jittor code instead takes
  0.5 * (cls_base + cls_head) and only the base patch term; the ``average_cls_terms`` argument gives
  that weighting of the CLS terms (not in the config schema) and ``hssl.patch_level: base`` its patch term.
* Teacher centering (momentum 0.9 for both centers, iBOT) uses the teacher outputs that are the
  targets: with HSSL image-level supervision the CLS center is the running mean of the
  *teacher head's* CLS projections; the patch center is the running mean of the patch target
  (teacher head or teacher base patches), averaged over all patch tokens (masked or not, as
  iBOT does), then over the global batch (MPI mean across ranks). Centers are updated after the
  loss is computed, so the current step uses the previous center (DINO).
* The teacher temperature warms up linearly per epoch (CLS: warmup_teacher_temp ->
  teacher_temp; patches: warmup_teacher_patch_temp -> teacher_patch_temp, held at the
  warm-up value until the MIM start epoch, as iBOT's code does). Student temperature 0.1.
"""
from jhssl import bootstrap  # noqa: F401

import jittor as jt
from jittor import nn

from jhssl import amp, dist, monitors
from jhssl.schedules import teacher_temp_schedule
from models.layers.attention import softmax_last
from models.layers.cross_entropy import soft_cross_entropy

from .masked_rows import MaskedRows


def _teacher_probs(logits, center, temp):
    """``softmax((t - c) / T)`` over the prototypes, no gradient (the fused row softmax on the CPU)."""
    return softmax_last((logits - center) / temp).detach()


class SelfDistillationLoss(nn.Module):
    """DINO (``use_patch=False``) or iBOT (``use_patch=True``) loss, with any number of student
    outputs supervised by one teacher target (the HSSL base and head outputs).

    ``execute`` takes:
      student_cls: dict name -> (n_crops * B, K) student CLS logits (global crops first);
      student_patch: dict name -> (n_global * B, N, Kp) student patch logits of the global crops
        (or (M, Kp) masked rows when ``masks`` is a MaskedRows);
      teacher_cls: (n_global * B, K) teacher CLS logits (the target);
      teacher_patch: (n_global * B, N, Kp) teacher patch logits (the target; (M, Kp) rows with a
        MaskedRows) or None;
      masks: list of n_global bool/float (B, N) or (B, H, W) masks, a MaskedRows, or None;
      epoch: int, picks the teacher temperature.
    It returns a dict with ``loss`` and one ``cls_<name>`` / ``patch_<name>`` entry per term.
    """

    def __init__(self, out_dim, patch_out_dim, n_global, n_local, epochs,
                 warmup_teacher_temp=0.04, teacher_temp=0.04,
                 warmup_teacher_patch_temp=0.04, teacher_patch_temp=0.07,
                 warmup_teacher_temp_epochs=30, student_temp=0.1,
                 center_momentum=0.9, patch_center_momentum=0.9,
                 lambda1=1.0, lambda2=1.0, use_patch=True, mim_start_epoch=0,
                 average_cls_terms=False):
        super().__init__()
        self.n_global = int(n_global)
        self.n_crops = int(n_global) + int(n_local)
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.patch_center_momentum = float(patch_center_momentum)
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)
        self.use_patch = bool(use_patch)
        self.average_cls_terms = bool(average_cls_terms)
        self.teacher_temps = teacher_temp_schedule(warmup_teacher_temp, teacher_temp,
                                                   warmup_teacher_temp_epochs, epochs)
        self.teacher_patch_temps = teacher_temp_schedule(
            warmup_teacher_patch_temp, teacher_patch_temp, warmup_teacher_temp_epochs, epochs,
            start_epoch=mim_start_epoch)
        # Running centers: state (saved in checkpoints), never optimised.
        self.center = jt.zeros((1, out_dim)).stop_grad()
        self.center_patch = jt.zeros((1, 1, patch_out_dim)).stop_grad() if self.use_patch else None

    def _temps(self, epoch):
        e = min(int(epoch), len(self.teacher_temps) - 1)
        return float(self.teacher_temps[e]), float(self.teacher_patch_temps[e])

    def cls_term(self, teacher_probs_chunks, student_logits):
        chunks = (student_logits / self.student_temp).chunk(self.n_crops, dim=0)
        if len(chunks) != self.n_crops:
            raise ValueError(f"student CLS output has {student_logits.shape[0]} rows, "
                             f"not divisible into {self.n_crops} crops")
        total, n = 0.0, 0
        for q, t in enumerate(teacher_probs_chunks):
            for v, s in enumerate(chunks):
                if v == q:
                    continue
                total = total + soft_cross_entropy(t, s).mean()
                n += 1
        if n == 0:
            raise ValueError("DINO/iBOT CLS loss needs at least two crops (one teacher, one other student view)")
        return total / n

    def patch_term(self, teacher_probs, student_logits, rows):
        """iBOT's masked-patch term on masked rows: ``sum_r w_r * L(t_r, s_r)`` (see MaskedRows)."""
        if student_logits.shape[0] != rows.weight.shape[0]:
            raise ValueError(f"student patch output has {student_logits.shape[0]} rows but "
                             f"{rows.weight.shape[0]} tokens are masked")
        return (soft_cross_entropy(teacher_probs, student_logits / self.student_temp) * rows.weight).sum()

    def execute(self, student_cls, student_patch, teacher_cls, teacher_patch, masks, epoch,
                teacher_patch_mean=None):
        """``masks``: the global crops' masks (a list) with full patch outputs (R, N, K), or a
        :class:`MaskedRows` with patch outputs already reduced to its rows (M, K) and the teacher's
        mean patch logits ``teacher_patch_mean`` (1, K) for the center."""
        # mixed precision (jhssl.amp): the logits may be bf16/fp16; softmaxes, cross-entropies and centers are fp32
        student_cls, student_patch, teacher_cls, teacher_patch, teacher_patch_mean = amp.to_fp32(
            student_cls, student_patch, teacher_cls, teacher_patch, teacher_patch_mean)
        temp, patch_temp = self._temps(epoch)
        teacher_cls = teacher_cls.detach()
        t_cls = _teacher_probs(teacher_cls, self.center, temp)
        t_cls_chunks = t_cls.chunk(self.n_global, dim=0)

        parts = {}
        # collapse monitors of this step (lazy; the trainer reads them when it logs)
        self.monitors = monitors.teacher_stats(t_cls, next(iter(student_cls.values())), self.n_global, self.n_crops)
        cls_sum = 0.0
        for name, logits in student_cls.items():
            parts["cls_" + name] = self.cls_term(t_cls_chunks, logits)
            cls_sum = cls_sum + parts["cls_" + name]
        if self.average_cls_terms and len(student_cls) > 1:
            cls_sum = cls_sum / len(student_cls)
        loss = self.lambda1 * cls_sum

        if self.use_patch and student_patch:
            if teacher_patch is None or masks is None:
                raise ValueError("iBOT patch terms need the teacher patch target and the masks")
            teacher_patch = teacher_patch.detach()
            if isinstance(masks, MaskedRows):
                rows = masks
                if teacher_patch_mean is None:
                    raise ValueError("patch outputs given as masked rows need teacher_patch_mean for the center")
            else:  # full outputs: reduce them to the masked rows here (one formula for both forms)
                rows = MaskedRows(masks)
                for name, logits in student_patch.items():
                    rows.check_tokens(logits)
                rows.check_tokens(teacher_patch)
                teacher_patch_mean = teacher_patch.reshape((-1, teacher_patch.shape[-1])).mean(0, keepdims=True)
                teacher_patch = rows.take(teacher_patch)
                student_patch = {name: rows.take(logits) for name, logits in student_patch.items()}
            center = self.center_patch.reshape((1, -1))
            t_patch = _teacher_probs(teacher_patch, center, patch_temp)
            patch_sum = 0.0
            for name, logits in student_patch.items():
                parts["patch_" + name] = self.patch_term(t_patch, logits, rows)
                patch_sum = patch_sum + parts["patch_" + name]
            loss = loss + self.lambda2 * patch_sum

        self.update_centers(teacher_cls, teacher_patch_mean.detach() if teacher_patch_mean is not None else None)
        parts["loss"] = loss
        return parts

    def update_centers(self, teacher_cls, teacher_patch_mean=None):
        """EMA of the batch mean of the teacher targets (global batch under MPI).

        ``teacher_patch_mean``: (1, K) mean of the teacher's patch logits over every global-crop
        token of this rank (equal token counts per rank, so the mean over ranks is the global one)."""
        with jt.no_grad():
            batch_center = dist.all_reduce_mean(teacher_cls.mean(dim=0, keepdims=True))
            m = self.center_momentum
            self.center.update((self.center * m + batch_center * (1 - m)).stop_grad())
            if teacher_patch_mean is not None and self.center_patch is not None:
                patch_center = dist.all_reduce_mean(teacher_patch_mean).reshape(self.center_patch.shape)
                mp = self.patch_center_momentum
                self.center_patch.update((self.center_patch * mp + patch_center * (1 - mp)).stop_grad())
