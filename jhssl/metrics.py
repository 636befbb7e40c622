"""Discrepancy and similarity metrics between the base model and an auxiliary head.

Paper references (Li et al., HSSL, TPAMI 2025):

* Eq. 5 / Eq. 8: the model discrepancy ``D = -(z1b)^T log(z1h / z1b) = KL(z1b || z1h)``,
  computed on the *teacher* probabilities (softmax of the projected, centred,
  temperature-scaled outputs) of the base model and the auxiliary head.
* zh extended version, Fig. 4: the training dynamics of D, of linear CKA and of
  orthogonal Procrustes similarity between base and head features.

Everything here is numpy (float64) so the numbers are independent of the
framework; Jittor ``Var`` inputs are accepted and converted. Plots are drawn
with Pillow only (no matplotlib dependency).
"""
import json
import math
import os
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from .fileio import atomic_write_text
from .logging import read_jsonl
from .plots import plot_bars_png, plot_lines_png, plot_panels_png  # noqa: F401  (re-exported)

__all__ = [
    "to_numpy", "kl_discrepancy", "kl_discrepancy_from_logits", "teacher_probs", "teacher_log_probs", "linear_cka", "procrustes_similarity",
    "discrepancy_stats", "DiscrepancyMeter", "DiscrepancyLog", "run_batches", "network_discrepancy",
    "similarity_kl_rows",
    "plot_lines_png", "plot_bars_png",
]


# --------------------------------------------------------------------------- helpers
def to_numpy(x) -> np.ndarray:
    """numpy float64 copy of a numpy array, list or Jittor Var (no jittor import needed)."""
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def _rows(x, name: str) -> np.ndarray:
    """Flatten (..., K) to (M, K) rows; reject empty and non-finite input."""
    a = to_numpy(x)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim < 2 or a.shape[-1] == 0 or a.size == 0:
        raise ValueError(f"{name}: expected a non-empty array of shape (..., K), got shape {a.shape}")
    a = a.reshape(-1, a.shape[-1])
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or Inf")
    return a


# --------------------------------------------------------------------------- KL (Eq. 5)
def kl_discrepancy(p_base, p_head, eps: float = 1e-12, reduce: bool = True):
    """Model discrepancy D = KL(p_base || p_head) (paper Eq. 5), averaged over samples.

    ``p_base`` and ``p_head`` are probability rows of shape (..., K) (all leading
    axes are samples, e.g. (B, K) for CLS or (B, N, K) for patch tokens).
    Per row: ``sum_k pb_k * (log pb_k - log ph_k)``, with the convention
    0 * log 0 = 0 (terms where pb_k == 0 contribute nothing) and ph clipped at
    ``eps`` so that a head probability that underflowed to 0 gives a large but
    finite value. Rows are renormalised to sum 1 (after checking they are
    close to it) so float32 softmax rounding does not bias D.

    Returns the mean over rows (a float), or the per-row values if ``reduce`` is False.
    """
    pb = _rows(p_base, "p_base")
    ph = _rows(p_head, "p_head")
    if pb.shape != ph.shape:
        raise ValueError(f"p_base and p_head must have the same shape, got {pb.shape} and {ph.shape}")
    for name, p in (("p_base", pb), ("p_head", ph)):
        if np.any(p < 0):
            raise ValueError(f"{name}: probabilities must be non-negative")
        s = p.sum(axis=1)
        if np.any(np.abs(s - 1.0) > 1e-3):
            raise ValueError(f"{name}: rows must sum to 1 (found sums in [{s.min():.4g}, {s.max():.4g}]); "
                             "pass probabilities (softmax outputs), not logits")
    pb = pb / pb.sum(axis=1, keepdims=True)
    ph = ph / ph.sum(axis=1, keepdims=True)
    pos = pb > 0
    log_ratio = np.zeros_like(pb)
    log_ratio[pos] = np.log(pb[pos]) - np.log(np.maximum(ph[pos], eps))
    per_row = np.sum(pb * log_ratio, axis=1)
    # KL is >= 0 mathematically; clip tiny negative rounding residue.
    per_row = np.maximum(per_row, 0.0)
    return float(per_row.mean()) if reduce else per_row


def teacher_log_probs(logits, temp: float, center=None) -> np.ndarray:
    """log of the DINO/iBOT teacher probabilities: log_softmax((logits - center) / temp)."""
    if temp <= 0:
        raise ValueError(f"temp must be > 0, got {temp}")
    z = to_numpy(logits)
    if z.size == 0:
        raise ValueError("logits: empty array")
    if center is not None:
        z = z - to_numpy(center)
    z = z / temp
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def teacher_probs(logits, temp: float, center=None) -> np.ndarray:
    """DINO/iBOT teacher probabilities: softmax((logits - center) / temp) over the last axis."""
    return np.exp(teacher_log_probs(logits, temp, center))


def kl_discrepancy_from_logits(logits_base, logits_head, temp: float, center_base=None, center_head=None,
                               temp_head: Optional[float] = None, reduce: bool = True):
    """Eq. 5 computed from teacher *logits* in log space (exact even where a softmax underflows).

    ``D = sum_k pb_k (log pb_k - log ph_k)`` with ``log p = log_softmax((logits - center) / temp)``;
    prefer this over :func:`kl_discrepancy` when the logits are at hand (sharp teacher
    temperatures such as 0.04 push many probabilities below float range).
    """
    lb = teacher_log_probs(logits_base, temp, center_base)
    lh = teacher_log_probs(logits_head, temp if temp_head is None else temp_head, center_head)
    if lb.shape != lh.shape:
        raise ValueError(f"logits_base and logits_head must have the same shape, got {lb.shape} and {lh.shape}")
    lb, lh = lb.reshape(-1, lb.shape[-1]), lh.reshape(-1, lh.shape[-1])
    per_row = np.maximum(np.sum(np.exp(lb) * (lb - lh), axis=1), 0.0)
    return float(per_row.mean()) if reduce else per_row


def similarity_kl_rows(z_base, z_head, temp: float) -> np.ndarray:
    """Per-sample ``KL(p_b(i) || p_h(i))`` of the contrastive predictions within a batch.

    ``p_x(i, j) = softmax_{j != i}(cos(z_x[i], z_x[j]) / temp)``: the distribution over the *other*
    samples of the batch that InfoNCE sharpens (MoCo v3's base and head each give one). This is the
    contrastive counterpart of Eq. 5: where the clustering methods compare two distributions over
    prototypes, a contrastive method's only distribution is over the other samples, so D measures
    how differently base and head arrange the batch. ``z_base`` (B, Cb), ``z_head`` (B, Ch), B >= 2.
    """
    lbs = []
    for name, z in (("z_base", z_base), ("z_head", z_head)):
        a = _rows(z, name)
        if a.shape[0] < 2:
            raise ValueError(f"{name}: need at least 2 samples for a similarity distribution, got {a.shape[0]}")
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        sim = a @ a.T / float(temp)
        np.fill_diagonal(sim, -np.inf)
        sim = sim - sim.max(axis=1, keepdims=True)
        lbs.append(sim - np.log(np.exp(sim).sum(axis=1, keepdims=True)))
    lb, lh = lbs
    if lb.shape != lh.shape:
        raise ValueError(f"z_base and z_head hold different numbers of samples: {lb.shape[0]} vs {lh.shape[0]}")
    off = ~np.eye(lb.shape[0], dtype=bool)  # the diagonal (-inf: a sample is not its own candidate) drops out
    lb, lh = np.where(off, lb, 0.0), np.where(off, lh, 0.0)
    per = (np.where(off, np.exp(lb), 0.0) * (lb - lh)).sum(axis=1)
    return np.maximum(per, 0.0)


# --------------------------------------------------------------------------- CKA
def _features(x, name: str) -> np.ndarray:
    a = to_numpy(x)
    if a.ndim == 3:  # (B, N, C) tokens: every token is a sample
        a = a.reshape(-1, a.shape[-1])
    if a.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (n, d) or (B, N, d), got {a.shape}")
    if a.shape[0] < 2 or a.shape[1] < 1:
        raise ValueError(f"{name}: need at least 2 samples and 1 feature, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or Inf")
    return a


def _paired(x, y) -> Tuple[np.ndarray, np.ndarray]:
    a, b = _features(x, "x"), _features(y, "y")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x and y must have the same number of samples, got {a.shape[0]} and {b.shape[0]}")
    return a - a.mean(axis=0, keepdims=True), b - b.mean(axis=0, keepdims=True)


def linear_cka(x, y) -> float:
    """Linear centred kernel alignment (Kornblith et al., ICML 2019, Eq. for linear HSIC).

    With X (n, p) and Y (n, q) column-centred,
    ``CKA = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)`` in [0, 1].
    Invariant to orthogonal transforms and isotropic scaling of either input;
    widths may differ. Returns NaN when either input is constant (CKA undefined).
    """
    a, b = _paired(x, y)
    n, p = a.shape
    q = b.shape[1]
    if n < max(p, q):
        # Gram form (n x n) is cheaper when there are fewer samples than features.
        ka, kb = a @ a.T, b @ b.T
        num = float(np.sum(ka * kb))
        den = float(np.linalg.norm(ka) * np.linalg.norm(kb))
    else:
        num = float(np.linalg.norm(b.T @ a) ** 2)
        den = float(np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
    if den <= 0 or not math.isfinite(den):
        return float("nan")
    return float(min(max(num / den, 0.0), 1.0))


# --------------------------------------------------------------------------- Procrustes
def procrustes_similarity(x, y) -> float:
    """Orthogonal Procrustes similarity in [0, 1].

    Definition (Schoenemann 1966; used as a representation similarity by
    Ding, Denain & Steinhardt, "Grounding Representation Similarity with
    Statistical Testing", NeurIPS 2021): centre the columns of X (n, p) and
    Y (n, q), scale each to unit Frobenius norm, zero-pad the narrower one to
    the same width, then

        d^2 = min_{R orthogonal} ||X - Y R||_F^2 = 2 - 2 ||X^T Y||_*
        similarity = 1 - d^2 / 2 = ||X^T Y||_*      (nuclear norm)

    so it is 1 exactly when X is a rotation/reflection (times a positive
    scale, plus a shift) of Y, and 0 when their column spaces are orthogonal.
    Returns NaN when either input is constant.
    """
    a, b = _paired(x, y)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na <= 0 or nb <= 0:
        return float("nan")
    a, b = a / na, b / nb
    s = np.linalg.svd(a.T @ b, compute_uv=False)
    return float(min(max(float(s.sum()), 0.0), 1.0))


# --------------------------------------------------------------------------- per-epoch stats
def discrepancy_stats(base_probs=None, head_probs=None, base_feats=None, head_feats=None,
                      max_feature_samples: int = 4096) -> Dict[str, float]:
    """Base-vs-head statistics for one set of teacher outputs.

    Args:
        base_probs, head_probs: teacher probabilities (..., K) of the base model and of the
            auxiliary head (through their own projections), same shape. Gives ``kl`` (Eq. 5).
        base_feats, head_feats: backbone features (n, C) / (B, N, C) of the base model and of
            the head (e.g. the teacher's ``cls`` outputs). Gives ``cka`` and ``procrustes``.
            At most ``max_feature_samples`` rows are used (the first ones), bounding the cost.
    Any pair may be omitted. Returns a dict with the keys that could be computed.
    """
    out: Dict[str, float] = {}
    if (base_probs is None) != (head_probs is None):
        raise ValueError("pass both base_probs and head_probs, or neither")
    if (base_feats is None) != (head_feats is None):
        raise ValueError("pass both base_feats and head_feats, or neither")
    if base_probs is not None:
        out["kl"] = kl_discrepancy(base_probs, head_probs)
    if base_feats is not None:
        a, b = _features(base_feats, "base_feats"), _features(head_feats, "head_feats")
        a, b = a[:max_feature_samples], b[:max_feature_samples]
        out["cka"] = linear_cka(a, b)
        out["procrustes"] = procrustes_similarity(a, b)
    if not out:
        raise ValueError("discrepancy_stats: nothing to compute (pass probabilities and/or features)")
    return out


class DiscrepancyMeter:
    """Accumulates teacher outputs over an epoch's iterations, then computes the statistics.

    KL is averaged over every row seen (a running sum, no memory growth); features for CKA
    and Procrustes are kept up to ``max_feature_samples`` rows (CKA/Procrustes are
    population statistics, so they need a sample set, not a per-batch mean).

    Typical trainer use::

        meter = DiscrepancyMeter()
        for batch in loader:
            ...  # teacher forward
            meter.update(base_probs=tb_probs, head_probs=th_probs, base_feats=tb_cls, head_feats=th_cls)
        stats = meter.compute()   # {'kl': ..., 'cka': ..., 'procrustes': ..., 'n': ...}
    """

    def __init__(self, max_feature_samples: int = 2048):
        self.max_feature_samples = int(max_feature_samples)
        self.reset()

    def reset(self) -> None:
        self._kl_sum = 0.0
        self._kl_n = 0
        self._fb: List[np.ndarray] = []
        self._fh: List[np.ndarray] = []
        self._f_n = 0

    def update(self, base_probs=None, head_probs=None, base_feats=None, head_feats=None) -> None:
        if (base_probs is None) != (head_probs is None) or (base_feats is None) != (head_feats is None):
            raise ValueError("DiscrepancyMeter.update: pass probabilities and features in base/head pairs")
        if base_probs is not None:
            per_row = kl_discrepancy(base_probs, head_probs, reduce=False)
            self._kl_sum += float(per_row.sum())
            self._kl_n += per_row.shape[0]
        if base_feats is not None and self._f_n < self.max_feature_samples:
            a, b = _features(base_feats, "base_feats"), _features(head_feats, "head_feats")
            if a.shape[0] != b.shape[0]:
                raise ValueError(f"base_feats and head_feats differ in sample count: {a.shape[0]} vs {b.shape[0]}")
            take = self.max_feature_samples - self._f_n
            self._fb.append(a[:take])
            self._fh.append(b[:take])
            self._f_n += min(take, a.shape[0])

    def add_kl_rows(self, per_row) -> None:
        """Add per-sample KL values computed elsewhere (e.g. by :func:`kl_discrepancy_from_logits`)."""
        per_row = np.asarray(per_row, dtype=np.float64).reshape(-1)
        self._kl_sum += float(per_row.sum())
        self._kl_n += per_row.shape[0]

    def compute(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        if self._kl_n:
            out["kl"] = self._kl_sum / self._kl_n
        if self._f_n >= 2:
            a, b = np.concatenate(self._fb), np.concatenate(self._fh)
            out["cka"] = linear_cka(a, b)
            out["procrustes"] = procrustes_similarity(a, b)
        out["n"] = float(max(self._kl_n, self._f_n))
        return out


class DiscrepancyLog:
    """Per-epoch discrepancy dynamics (zh Fig. 4 / en Fig. 6): JSON lines plus a PNG.

    ``add(epoch, stats)`` appends ``{"epoch": e, **stats}`` to ``<dir>/discrepancy.jsonl``
    and redraws ``<dir>/discrepancy.png`` (one panel per metric: D, CKA, Procrustes).
    Re-adding an epoch (after a resume) replaces its earlier entry.
    """

    def __init__(self, output_dir: str, name: str = "discrepancy"):
        self.output_dir = output_dir
        self.jsonl = os.path.join(output_dir, name + ".jsonl")
        self.png = os.path.join(output_dir, name + ".png")
        self.records: List[Dict] = read_jsonl(self.jsonl)

    def add(self, epoch: int, stats: Mapping[str, float]) -> None:
        rec = {"epoch": int(epoch)}
        rec.update({k: float(v) for k, v in stats.items()})
        self.records = [r for r in self.records if r["epoch"] != rec["epoch"]] + [rec]
        self.records.sort(key=lambda r: r["epoch"])
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.records))
        self.plot()

    def plot(self) -> None:
        panels = []
        for key, title in (("kl", "discrepancy D = KL(z1b || z1h)"), ("cka", "linear CKA (base vs head)"),
                           ("procrustes", "Procrustes similarity (base vs head)")):
            pts = [(r["epoch"], r[key]) for r in self.records if key in r and math.isfinite(r[key])]
            if pts:
                panels.append((title, {key: pts}))
        if panels:
            plot_panels_png(self.png, panels, xlabel="epoch")


# --------------------------------------------------------------------------- from a trained network
def run_batches(net, images, fn, max_images: Optional[int] = None) -> int:
    """Call ``fn(x)`` on each image batch (a (B, 3, H, W) Var) with ``net`` in eval mode and no
    gradient; returns the number of images seen. The one teacher batch loop behind the per-epoch
    discrepancy and the head search's D.

    ``images``: an iterable of batches (B, 3, H, W) arrays/Vars or (images, labels, ...) tuples,
    e.g. a :class:`jhssl.data.EvalDataset`; at most ``max_images`` images in all (None: every one).
    """
    import jittor as jt
    seen = 0
    was_training = net.is_training()
    net.eval()
    try:
        for batch in images:
            if max_images is not None and seen >= max_images:
                break
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            if not isinstance(x, jt.Var):
                x = jt.array(np.asarray(x, dtype=np.float32))
            if max_images is not None and seen + x.shape[0] > max_images:
                x = x[:max_images - seen]
            with jt.no_grad():
                fn(x)
            seen += int(x.shape[0])
            jt.sync_all()
    finally:
        if was_training:
            net.train()
        # once, not per batch: the batches reuse each other's blocks, and on a GPU jt.gc() hands the
        # whole CUDA memory cache back (as the training loops, jhssl/train.py)
        jt.gc()
    return seen


def network_discrepancy(method, images, epoch: Optional[int] = None, max_images: int = 1000,
                        which: str = "teacher") -> Dict[str, float]:
    """The base/head discrepancy D, linear CKA and Procrustes similarity of a single-head HSSL method.

    ``method``: a :mod:`jhssl.methods` method object; its ``discrepancy_batch(net, x, epoch)``
    gives D per image (DINO/iBOT: Eq. 5 on the teacher's prototype distributions, teacher
    temperature of ``epoch``, default the final one; MoCo v3: see its docstring) and the
    unprojected base/head features for CKA and Procrustes. ``images`` as in :func:`run_batches`.
    Meant to run once per epoch (the paper's discrepancy dynamics, zh Fig. 4 / en Fig. 6).
    """
    net = method.eval_network(which)
    if getattr(net, "aux_head", None) is None:
        raise ValueError("discrepancy needs an auxiliary head: this network has none (hssl: null?)")
    meter = DiscrepancyMeter(max_feature_samples=max_images)

    def measure(x):
        d, fb, fh = method.discrepancy_batch(net, x, epoch)
        meter.add_kl_rows(d)
        meter.update(base_feats=fb, head_feats=fh)

    if run_batches(net, images, measure, max_images) == 0:
        raise ValueError("no images given to measure the discrepancy on")
    return meter.compute()
