"""Weighted k-NN evaluation of frozen features, as DINO's ``eval_knn.py``.

* features are L2-normalised; the similarity is the cosine (dot product);
* each of the k nearest training samples votes for its class with weight exp(sim / T)
  (k = 20, T = 0.07 by default); top-1 / top-5 accuracy in percent;
* several k are evaluated from one neighbour search.

Also: feature extraction with any ``model_fn`` (batch Var -> (B, C) Var), the feature functions
for a trained network (base CLS or auxiliary-head CLS), loading a trainer checkpoint for
evaluation (:func:`load_eval_network`, reused by the trainer) and :func:`evaluate_knn`, the
whole evaluation from a config.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np

import jhssl  # noqa: F401  (sets Jittor's environment first)

__all__ = ["knn_classify", "l2_normalize", "extract_features", "feature_fn", "load_eval_network",
           "evaluate_knn", "format_knn"]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def knn_votes(train_features, train_labels, test_features, ks: Iterable[int] = (20,), T: float = 0.07,
              num_classes: int | None = None, chunk: int = 256):
    """DINO's weighted k-NN vote, chunk by chunk: yields ``(start, {k: (B, C) class votes})``.

    Features are L2-normalised; the k most similar training samples (cosine) vote for their label
    with weight exp(sim / T). ``num_classes`` defaults to the largest training label + 1.
    """
    ks = sorted({int(k) for k in ks})
    train_f = l2_normalize(train_features)
    test_f = l2_normalize(test_features)
    train_l = np.asarray(train_labels, dtype=np.int64)
    if train_f.ndim != 2 or test_f.ndim != 2 or train_f.shape[1] != test_f.shape[1]:
        raise ValueError(f"features must be (N, C) with equal C, got {train_f.shape} and {test_f.shape}")
    if len(train_f) != len(train_l):
        raise ValueError("training features and labels differ in length")
    if not ks or ks[0] <= 0:
        raise ValueError(f"k must be positive, got {ks}")
    if ks[-1] > len(train_f):
        raise ValueError(f"k={ks[-1]} exceeds the number of training samples ({len(train_f)})")
    C = int(num_classes) if num_classes else int(train_l.max()) + 1
    kmax = ks[-1]
    for s in range(0, len(test_f), chunk):
        sims = test_f[s:s + chunk] @ train_f.T  # (B, N)
        B = sims.shape[0]
        if kmax < sims.shape[1]:
            part = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
        else:
            part = np.tile(np.arange(sims.shape[1]), (B, 1))
        psims = np.take_along_axis(sims, part, 1)
        order = np.argsort(-psims, axis=1, kind="stable")
        top_idx = np.take_along_axis(part, order, 1)
        top_sims = np.take_along_axis(psims, order, 1).astype(np.float64)
        neigh_lab = train_l[top_idx]  # (B, kmax), nearest first
        rows = np.arange(B)
        votes = {}
        for k in ks:
            w = np.exp(top_sims[:, :k] / T)
            flat = (rows[:, None] * C + neigh_lab[:, :k]).ravel()
            votes[k] = np.bincount(flat, weights=w.ravel(), minlength=B * C).reshape(B, C)
        yield s, votes


def knn_predict(train_features, train_labels, test_features, k: int = 20, T: float = 0.07,
                num_classes: int | None = None, chunk: int = 256) -> np.ndarray:
    """Per-sample top-1 predictions of the weighted k-NN (ties: the lowest class id)."""
    preds = np.empty(len(test_features), dtype=np.int64)
    for s, votes in knn_votes(train_features, train_labels, test_features, (k,), T, num_classes, chunk):
        v = votes[int(k)]
        preds[s:s + len(v)] = np.argsort(-v, axis=1, kind="stable")[:, 0]
    return preds


def knn_classify(train_features, train_labels, test_features, test_labels, ks: Iterable[int] = (20,),
                 T: float = 0.07, num_classes: int | None = None, chunk: int = 256) -> dict:
    """Weighted k-NN accuracy for every k in ``ks``: ``{k: {"top1": %, "top5": %}}``."""
    test_l = np.asarray(test_labels, dtype=np.int64)
    if len(test_features) != len(test_l):
        raise ValueError("test features and labels differ in length")
    C = int(num_classes) if num_classes else int(max(np.max(train_labels), test_l.max())) + 1
    correct = {}
    for s, votes in knn_votes(train_features, train_labels, test_features, ks, T, C, chunk):
        for k, v in votes.items():
            pred = np.argsort(-v, axis=1, kind="stable")
            hit = pred == test_l[s:s + len(v), None]
            c = correct.setdefault(k, [0, 0])
            c[0] += int(hit[:, :1].sum())
            c[1] += int(hit[:, :min(5, k, C)].sum())
    n = len(test_l)
    return {k: {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n} for k, (c1, c5) in sorted(correct.items())}


def format_knn(results: dict, T: float, what: str = "") -> str:
    head = f"k-NN{(' (' + what + ')') if what else ''} T={T}"
    return "\n".join(f"{head} k={k}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%" for k, r in sorted(results.items()))


# ----------------------------------------------------------------------------- features
def extract_features(model_fn: Callable, dataset, batch_size: int | None = None, progress: bool = False):
    """Run ``model_fn`` over ``dataset`` (an :class:`jhssl.data.EvalDataset`, items (img, label,
    index)); return ``(features (N, C) float32, labels (N,) int64)`` in dataset order.

    Under MPI every rank sees a slice of each batch; rows are placed by index and summed over
    ranks (divided by how often each row was computed: Jittor's last partial batch may overlap).
    """
    import jittor as jt
    if batch_size is not None and batch_size != dataset.batch_size:
        dataset.set_attrs(batch_size=int(batch_size))
    n = dataset.total_len
    feats = None
    labels = np.zeros(n, dtype=np.float64)
    seen = np.zeros(n, dtype=np.float64)
    it = dataset
    if progress:
        from tqdm import tqdm
        it = tqdm(dataset, desc="features", leave=False)
    from jhssl.data.datasets import release_workers
    from jhssl.memory import release_free_memory
    release_free_memory()  # workers forked below start with this process's resident pages
    try:
        with jt.no_grad():
            for step, (imgs, lab, idx) in enumerate(it):
                f = model_fn(imgs)
                f_np = f.numpy().astype(np.float32)
                idx_np = idx.numpy().astype(np.int64)
                if feats is None:
                    feats = np.zeros((n, f_np.shape[1]), dtype=np.float32)
                feats[idx_np] = f_np
                # the label of the image actually used (an unreadable file is replaced by the next one)
                labels[idx_np] = lab.numpy()
                seen[idx_np] = 1
                if step % 20 == 0:
                    jt.sync_all()
                    jt.gc()
    finally:
        release_workers(dataset)  # one pass: no idle workers (and buffers) through the training
        release_free_memory()  # the batch-256 forward grew the heap: later forks would inherit it
    if feats is None:
        raise ValueError("feature extraction got no batches (empty dataset?)")
    if jt.in_mpi:
        # rows a rank did not compute are zero; rows computed twice (overlapping last batch) agree
        feats = jt.array(feats * seen[:, None].astype(np.float32)).mpi_all_reduce("add").numpy()
        # float32 is exact for these small integers (labels, counts)
        labels = jt.array((labels * seen).astype(np.float32)).mpi_all_reduce("add").numpy().astype(np.float64)
        seen = jt.array(seen.astype(np.float32)).mpi_all_reduce("add").numpy().astype(np.float64)
        feats = feats / np.maximum(seen, 1)[:, None].astype(np.float32)
        labels = labels / np.maximum(seen, 1)
    if (seen == 0).any():
        raise RuntimeError(f"{int((seen == 0).sum())} samples got no features")
    return feats.astype(np.float32), np.rint(labels).astype(np.int64)


def feature_fn(network, features: str = "base") -> Callable:
    """``model_fn`` for an :class:`SSLNetwork`-like module with ``backbone`` (and ``aux_head``).

    ``base``: the base model's image feature (ViT: normed CLS; hierarchical: pooled last stage).
    ``head``: the auxiliary head's CLS (mean of its output tokens, then its LayerNorm), computed
    from the base's pre-norm patch tokens as in training (MFF + HSSL trains the head on the fused
    tokens of several blocks; here, as everywhere outside pretraining, it reads the last block's:
    jhssl/methods/mae.py).
    """
    backbone = network.backbone
    if features == "base":
        return lambda x: backbone(x)
    if features == "head":
        aux = getattr(network, "aux_head", None)
        if aux is None:
            raise ValueError("features='head' needs an auxiliary head, but this network has none "
                             "(trained with hssl: null?)")

        def fn(x):
            out = backbone.forward_features(x)
            from models.heads import run_auxiliary
            return run_auxiliary(aux, out, images=x)["cls"]
        return fn
    raise ValueError(f"features must be 'base' or 'head', got {features!r}")


def stored_network(ckpt, which: str) -> str:
    """The checkpoint entry that holds ``which``: a method without an EMA teacher (MAE) stores
    ``teacher: None``, and its student is the model."""
    if isinstance(ckpt, dict) and which == "teacher" and ckpt.get("teacher", 0) is None and ckpt.get("student"):
        return "student"
    return which


def load_eval_network(checkpoint, which: str = "teacher", overrides: list[str] | None = None,
                      trusted: bool = False):
    """Rebuild the networks of a trainer checkpoint and load ``which`` (teacher|student).

    ``checkpoint``: a path (read through the allow-list loader, :mod:`jhssl.weights_io`; ``trusted``
    unpickles anything) or an already-loaded dict with 'config', 'teacher', 'student'.
    Returns ``(network in eval mode, cfg)``. Only the ``backbone.`` and ``aux_head.`` entries are
    needed; they are loaded strictly (every key present, same shapes).
    """
    from jhssl.config import apply_overrides, config_from_dict
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    if isinstance(checkpoint, str):
        from jhssl import weights_io
        ckpt = weights_io.load_checkpoint(checkpoint, trusted=trusted)
    else:
        ckpt = checkpoint
    which = stored_network(ckpt, which)
    if not isinstance(ckpt, dict) or "config" not in ckpt or which not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"not a jhssl training checkpoint: need 'config' and '{which}' entries, found {keys}")
    # the stored config may predate the current schema: unknown keys are dropped with a warning
    cfg = config_from_dict(apply_overrides(ckpt["config"], overrides or []), strict=False)
    try:
        from jhssl.methods import build_model
    except ImportError as e:
        raise RuntimeError(f"cannot rebuild the networks: jhssl.methods.build_model is unavailable ({e})") from e
    built = build_model(cfg)
    if isinstance(built, dict):
        net = built[which]
    elif isinstance(built, (tuple, list)):
        net = built[0] if which == "student" else built[1]
    else:
        net = getattr(built, which, built)
    state = ckpt[which]
    from jhssl.checkpoint import load_state_dict_strict
    for prefix, module in (("backbone.", net.backbone), ("aux_head.", getattr(net, "aux_head", None))):
        if module is None:
            continue
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise KeyError(f"checkpoint '{which}' has no '{prefix}*' entries")
        load_state_dict_strict(module, sub, strict=True, what=f"{which}.{prefix[:-1]}")
    net.eval()
    return net, cfg


def evaluate_knn(cfg, model_fn: Callable, ks=None, T: float | None = None, datasets=None,
                 progress: bool = False, log: Callable | None = print) -> dict:
    """Extract train/val features with ``model_fn`` and run the weighted k-NN of ``cfg.eval``.

    Returns ``{k: {"top1", "top5"}}``; ``datasets`` may pass prebuilt (train_ds, val_ds).
    """
    from jhssl.data import build_eval_datasets
    ks = list(ks or cfg.eval.knn_k)
    T = float(T if T is not None else cfg.eval.knn_t)
    train_ds, val_ds = datasets or build_eval_datasets(cfg, ks=ks)
    t0 = time.time()
    tr_f, tr_l = extract_features(model_fn, train_ds, progress=progress)
    va_f, va_l = extract_features(model_fn, val_ds, progress=progress)
    num_classes = len(train_ds.loader.source.classes)
    res = knn_classify(tr_f, tr_l, va_f, va_l, ks=ks, T=T, num_classes=num_classes)
    if log:
        log(f"k-NN on {len(tr_f)} train / {len(va_f)} val images, {tr_f.shape[1]}-d features "
            f"({time.time() - t0:.1f}s)")
    return res
