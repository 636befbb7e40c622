"""Collapse monitors of a self-distillation run (DINO/iBOT): the numbers to look at when the CLS
loss sits at ln K.

On the teacher's CLS targets ``P`` (rows: softmax((t - center) / T_t), one per global-crop image):

* ``teacher_entropy``: mean over rows of H(P_r). Near ln K: every target is near uniform (the
  student learns nothing from it: "uniform collapse", what too much centering / too high a
  teacher temperature gives).
* ``teacher_kl_uniform``: KL(mean_r P_r || uniform) = ln K - H(mean_r P_r). Near ln K: every image
  gets the same sharp target ("one-hot collapse", what too little centering gives). A healthy
  teacher has a low entropy *and* a low KL: sharp targets that spread over the prototypes.
* ``agreement``: fraction of the CLS loss's (teacher crop q, student crop v != q) pairs where the
  student's argmax prototype equals the teacher's (DINO users' "student-teacher agreement").
  Chance level is about 1/K; it rises as the student predicts the other view's prototype.

:func:`teacher_stats` builds these as lazy Jittor scalars (no host sync until the trainer logs
them); :func:`collapse_warning` decides from their values whether the teacher has collapsed.
"""
from __future__ import annotations

import math

__all__ = ["MONITOR_KEYS", "SHORT_NAMES", "COLLAPSE_TOLERANCE", "CollapseWarning", "warn_if_collapsed", "entropy_rows", "kl_mean_to_uniform", "argmax_agreement",
           "teacher_stats", "collapse_warning", "ema_initial_weight"]

MONITOR_KEYS = ("teacher_entropy", "teacher_kl_uniform", "agreement")
SHORT_NAMES = {"teacher_entropy": "H_t", "teacher_kl_uniform": "KL_u", "agreement": "agree"}  # progress bar

# A collapse is declared when the entropy (uniform) or the KL (one-hot) lies within this fraction
# of ln K: 5% of ln K = 0.35 nats for K = 1024. A learning DINO/iBOT teacher leaves that band
# within its first epochs; a collapsed one stays in it.
COLLAPSE_TOLERANCE = 0.05

_EPS = 1e-12


def entropy_rows(probs):
    """Mean row entropy (nats) of a (R, K) probability Var, as a scalar Var."""
    import jittor as jt
    return -(probs * jt.log(jt.maximum(probs, _EPS))).sum(dim=-1).mean()


def kl_mean_to_uniform(probs):
    """KL(mean over rows || uniform over K) = ln K - H(mean row), as a scalar Var."""
    import jittor as jt
    k = probs.shape[-1]
    mean = probs.mean(dim=0)
    return (mean * jt.log(jt.maximum(mean * k, _EPS))).sum()


def argmax_agreement(teacher_probs_chunks, student_logits_chunks):
    """Fraction of cross-view pairs (teacher chunk q, student chunk v != q) whose row argmaxes agree."""
    import jittor as jt
    t_idx = [jt.argmax(t, dim=-1)[0] for t in teacher_probs_chunks]
    s_idx = [jt.argmax(s, dim=-1)[0] for s in student_logits_chunks]
    total, n = 0.0, 0
    for q, t in enumerate(t_idx):
        for v, s in enumerate(s_idx):
            if v != q:
                total = total + (t == s).float32().mean()
                n += 1
    return total / max(n, 1)


def teacher_stats(teacher_probs, student_logits, n_global, n_crops):
    """The three monitors (lazy scalar Vars, no gradient) for one step of the CLS loss.

    ``teacher_probs``: (n_global * B, K) teacher targets; ``student_logits``: (n_crops * B, K)
    one student output (the base's), both crop-major."""
    import jittor as jt
    with jt.no_grad():
        t = teacher_probs.detach()
        s = student_logits.detach()
        return {"teacher_entropy": entropy_rows(t),
                "teacher_kl_uniform": kl_mean_to_uniform(t),
                "agreement": argmax_agreement(t.chunk(int(n_global), dim=0), s.chunk(int(n_crops), dim=0))}


def collapse_warning(entropy, kl_uniform, k, tol=COLLAPSE_TOLERANCE):
    """A one-line warning when the teacher looks collapsed, else None.

    ``entropy`` / ``kl_uniform``: monitor values (nats), e.g. an epoch's means; ``k``: out_dim."""
    log_k = math.log(int(k))
    if entropy >= (1.0 - tol) * log_k:
        return (f"teacher collapsed to uniform: its targets' entropy {entropy:.3f} is within {tol:.0%} of "
                f"ln K = {log_k:.3f}, so the CLS terms teach nothing (check loss.teacher_temp, the centering, "
                f"optim.lr, or train longer)")
    if kl_uniform >= (1.0 - tol) * log_k:
        return (f"teacher collapsed to one prototype: KL(mean target || uniform) {kl_uniform:.3f} is within "
                f"{tol:.0%} of ln K = {log_k:.3f}, every image gets the same target (check the centering "
                f"and loss.teacher_temp)")
    return None


class CollapseWarning(RuntimeWarning):
    """The teacher's CLS targets are uniform or one-hot: the CLS terms carry no signal."""


def warn_if_collapsed(epoch_means, k, epoch, epochs, logger=None):
    """At the end of an epoch: warn (``CollapseWarning`` + a ``collapse_warning`` log record) when
    the epoch's mean monitors say the teacher has collapsed. Returns the message or None.

    The first epoch of a longer run is not judged: every run starts from a near-uniform teacher
    (an untrained network maps all images to almost the same output) and leaves it during warm-up."""
    if epoch == 0 and epochs > 1:
        return None
    if not all(key in epoch_means for key in MONITOR_KEYS[:2]):
        return None  # a loss without monitors (the head search's loss bank)
    msg = collapse_warning(epoch_means["teacher_entropy"], epoch_means["teacher_kl_uniform"], k)
    if msg:
        import time
        import warnings
        msg = f"epoch {epoch}: {msg}"
        warnings.warn(msg, CollapseWarning, stacklevel=2)
        if logger is not None:
            logger.write({"type": "collapse_warning", "epoch": int(epoch), "message": msg, "time": time.time()})
    return msg


def ema_initial_weight(momentum_schedule, start=0):
    """How much of its initial weights the EMA teacher still holds after the schedule:
    prod_t m_t (teacher_T = prod m_t * teacher_0 + the students' share).

    DINO/iBOT's 0.996 -> 1 cosine over ~10^5 iterations leaves exp(-200) of the start; the same
    schedule over a few hundred CPU iterations leaves most of it, and then the k-NN evaluation of
    the teacher mostly measures the untrained network."""
    import numpy as np
    m = np.asarray(momentum_schedule, dtype=np.float64)[int(start):]
    return float(np.exp(np.log(np.clip(m, 1e-12, 1.0)).sum()))
