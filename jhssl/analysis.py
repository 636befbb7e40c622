"""Which samples does the auxiliary head solve? (paper Section 3.3, Eqs. 3-4, Table II / zh Table 3).

Sets over the samples U of a labelled evaluation set:

* B1: samples the *baseline* base model (plain DINO/iBOT) classifies correctly;
* B2: samples the *HSSL* base model classifies correctly;
* H:  samples the HSSL auxiliary head classifies correctly.

``N_s = |H ∩ (U − B1)|`` (Eq. 3): samples the head solves that the baseline cannot.
``sIoU = |B2 ∩ (U − B1) ∩ H ∩ (U − B1)| / |B2 ∩ (U − B1)|`` (Eq. 4): of the samples the HSSL
base newly solves, the fraction the head also solves. A high sIoU says the base's gain comes
from what the heterogeneous head knows.

Correctness comes from k-NN predictions (jhssl.knn) or from saved boolean ``.npy`` files.
"""
import math
from typing import Dict, Optional

import numpy as np


def _as_bool(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D per-sample correctness vector, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: empty correctness vector (no evaluation samples)")
    if a.dtype != np.bool_:
        if not np.all(np.isin(a, (0, 1))):
            raise ValueError(f"{name}: correctness must be boolean or 0/1, found other values")
        a = a.astype(bool)
    return a


def correctness(predictions, labels, name: str = "predictions") -> np.ndarray:
    """Per-sample correctness ``predictions == labels`` with a shape check."""
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"{name}: predictions {p.shape} and labels {y.shape} must be equal-length 1-D arrays")
    return p == y


def overlap_stats(b1, b2, h) -> Dict[str, float]:
    """N_s (Eq. 3), sIoU (Eq. 4) and the counts behind them.

    Args: boolean per-sample correctness of the baseline base (B1), the HSSL base (B2) and
    the HSSL head (H), all over the same samples in the same order.
    Returns a dict: ``n`` (|U|), ``top1_b1/top1_b2/top1_h`` (percent), ``n_s``,
    ``b2_new`` (|B2 ∩ (U−B1)|), ``both_new`` (|B2 ∩ H ∩ (U−B1)|), ``siou`` (a fraction in
    [0, 1]; NaN when the HSSL base solves no sample the baseline missed, where Eq. 4 is 0/0).
    """
    b1, b2, h = _as_bool(b1, "B1 (baseline base)"), _as_bool(b2, "B2 (HSSL base)"), _as_bool(h, "H (HSSL head)")
    if not (b1.shape == b2.shape == h.shape):
        raise ValueError(f"correctness vectors differ in length: B1 {b1.size}, B2 {b2.size}, H {h.size}")
    not_b1 = ~b1
    n_s = int(np.sum(h & not_b1))
    b2_new = int(np.sum(b2 & not_b1))
    both_new = int(np.sum(b2 & not_b1 & h))
    n = b1.size
    return {
        "n": n,
        "top1_b1": 100.0 * float(b1.mean()),
        "top1_b2": 100.0 * float(b2.mean()),
        "top1_h": 100.0 * float(h.mean()),
        "n_s": n_s,
        "b2_new": b2_new,
        "both_new": both_new,
        "siou": (both_new / b2_new) if b2_new else float("nan"),
    }


def table3_header() -> str:
    return ("| Auxiliary head | Top-1 (HSSL base) | Top-1 (baseline) | Top-1 (head) | N_s | sIoU (%) |\n"
            "|---|---|---|---|---|---|")


def table3_row(name: str, stats: Dict[str, float]) -> str:
    """A markdown row in the style of the paper's Table II (en) / Table 3 (zh)."""
    siou = stats["siou"]
    siou_s = "n/a" if (isinstance(siou, float) and math.isnan(siou)) else f"{100.0 * siou:.1f}"
    return (f"| {name} | {stats['top1_b2']:.1f} | {stats['top1_b1']:.1f} | {stats['top1_h']:.1f} | "
            f"{stats['n_s']} | {siou_s} |")


# ----------------------------------------------------------------------------- from checkpoints
def correctness_from_checkpoints(baseline_ckpt: str, hssl_ckpt: str, config: Optional[str] = None,
                                 overrides=None, k: Optional[int] = None, log=print, trusted: bool = False):
    """(B1, B2, H, head names): k-NN correctness on the labelled evaluation set of
    the baseline's teacher base, the HSSL run's teacher base and its teacher auxiliary head.

    The evaluation data (``eval.*``/``data.*``) come from ``config`` (+ ``overrides``) when given,
    else from the HSSL checkpoint's own config (+ ``overrides``). Features: base = normed CLS; head = the head's
    pooled, normed output (``jhssl.knn.feature_fn``). Checkpoints are read through the allow-list
    loader (``trusted=True``: ``--trust-pickle``).
    """
    from jhssl.config import load_config
    from jhssl.data import build_eval_datasets
    from jhssl.knn import extract_features, feature_fn, knn_predict, load_eval_network
    net_b, cfg_b = load_eval_network(baseline_ckpt, "teacher", trusted=trusted)
    net_h, cfg_h = load_eval_network(hssl_ckpt, "teacher", trusted=trusted)
    if cfg_h.hssl is None:
        raise ValueError(f"{hssl_ckpt} was trained without an auxiliary head (hssl: null): "
                         "pass the HSSL run's checkpoint as --hssl-ckpt")
    if getattr(net_b, "aux_head", None) is not None and cfg_b.hssl is not None:
        log(f"note: the 'baseline' checkpoint {baseline_ckpt} was trained with HSSL heads {cfg_b.hssl.heads}")
    if config:
        cfg = load_config(config, overrides)
    else:
        from jhssl.config import apply_overrides, config_from_dict
        cfg = config_from_dict(apply_overrides(cfg_h.to_dict(), overrides or []))
    train_ds, val_ds = build_eval_datasets(cfg)
    k = int(k or cfg.eval.knn_k[0])
    T = float(cfg.eval.knn_t)
    ncls = len(train_ds.loader.source.classes)
    out = []
    for name, net, which in (("baseline base", net_b, "base"), ("HSSL base", net_h, "base"),
                             ("HSSL head", net_h, "head")):
        fn = feature_fn(net, which)
        tr_f, tr_l = extract_features(fn, train_ds)
        va_f, va_l = extract_features(fn, val_ds)
        pred = knn_predict(tr_f, tr_l, va_f, k=k, T=T, num_classes=ncls)
        c = pred == va_l
        log(f"{name}: k-NN (k={k}, T={T}) top-1 {100.0 * c.mean():.2f}% on {len(c)} images")
        out.append(c)
    return out[0], out[1], out[2], list(cfg_h.hssl.heads)
