"""What the evaluation tools share: loading a pretraining checkpoint (through the allow-list
loader), the labelled datasets and their checks, top-k accuracy."""
from __future__ import annotations

import os

import numpy as np

import jhssl  # noqa: F401  (sets Jittor's environment first)

__all__ = ["read_pretrain_checkpoint", "data_overrides", "pretrain_config", "load_network", "build_sources",
           "eval_dataset", "train_dataset", "topk_accuracy", "image_size"]


def read_pretrain_checkpoint(path: str, which: str = "teacher", trusted: bool = False) -> dict:
    """A jhssl training checkpoint as numpy, read with :func:`jhssl.weights_io.load_checkpoint`
    (allow-listed unpickling unless ``trusted``, i.e. ``--trust-pickle``); checked for a config and
    ``which``'s base-model weights."""
    from jhssl.weights_io import load_checkpoint
    ckpt = load_checkpoint(path, trusted=trusted)
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a jhssl training checkpoint (needs 'config' and '{which}'; found {keys})")
    from jhssl.knn import stored_network
    which = stored_network(ckpt, which)
    state = ckpt.get(which)
    if not isinstance(state, dict) or not any(str(k).startswith("backbone.") for k in state):
        raise ValueError(f"{path}: the checkpoint has no base model for '{which}' "
                         f"(no '{which}' entry with 'backbone.*' weights)")
    return ckpt


def data_overrides(cfg_dict: dict, data: str | None = None, train_data: str | None = None,
                   val_data: str | None = None) -> list:
    """Overrides pointing a checkpoint's config at other data: ``data`` is an IDX directory
    (Fashion-MNIST) or a root with ``train/`` and ``val/`` (image folders)."""
    over = []
    if train_data:
        over.append(f"eval.train_path={train_data}")
    if val_data:
        over.append(f"eval.val_path={val_data}")
    if not data:
        return over
    if not os.path.isdir(data):
        raise FileNotFoundError(f"--data {data!r} is not a directory")
    over.append(f"data.path={data}")
    if (cfg_dict.get("data") or {}).get("dataset", "folder") != "folder":
        return over + ["eval.train_path=null", "eval.val_path=null"]
    for split, key, given in (("train", "train_path", train_data), ("val", "val_path", val_data)):
        sub = os.path.join(data, split)
        if given:
            continue
        if not os.path.isdir(sub):
            raise FileNotFoundError(f"--data {data!r}: expected sub-folders train/ and val/ "
                                    f"(each root/<class>/<image>); {sub!r} is missing")
        over.append(f"eval.{key}={sub}")
    return over


def pretrain_config(ckpt: dict, overrides=None):
    from jhssl.config import apply_overrides, config_from_dict
    return config_from_dict(apply_overrides(ckpt["config"], overrides or []), strict=False)


def load_network(ckpt: dict, which: str, overrides=None):
    """(network in eval mode, pretraining config) of a checkpoint read by :func:`read_pretrain_checkpoint`."""
    from jhssl.knn import load_eval_network
    return load_eval_network(ckpt, which, overrides)


def image_size(pcfg, ecfg) -> int:
    return int(ecfg.img_size or pcfg.eval.img_size or pcfg.data.global_crop_size)


def build_sources(pcfg, ecfg, subset_list_path: str | None = None):
    """(train source, val source, class names) of the checkpoint config's labelled data, with the
    quick-run subsets and the semi-supervised label subset applied; class sets must agree."""
    from jhssl.data.datasets import _eval_paths, build_source
    from jhssl.eval.semisup import apply_label_subset
    d = pcfg.data
    (tp, ts), (vp, vs) = _eval_paths(pcfg)
    train = build_source(d.dataset, tp, ts, ecfg.train_subset, ecfg.seed)
    val = build_source(d.dataset, vp, vs, ecfg.val_subset, ecfg.seed)
    tc, vc = list(train.classes), list(val.classes)
    if len(tc) != len(vc):
        raise ValueError(f"the train data ({tp}) has {len(tc)} classes but the val data ({vp}) has {len(vc)}")
    if tc != vc:
        diff = next(((a, b) for a, b in zip(tc, vc) if a != b), None)
        raise ValueError(f"the train data ({tp}) and val data ({vp}) name their classes differently "
                         f"(first difference: {diff})")
    train = apply_label_subset(train, ecfg.label_fraction, ecfg.label_seed, ecfg.label_subset_file,
                               write_to=subset_list_path)
    return train, val, tc


def eval_dataset(source, pcfg, ecfg):
    """Resize + centre crop + normalize, in order, with (image, label, index) items."""
    from jhssl.data.datasets import EvalDataset
    from jhssl.data.transforms import EvalTransform
    tf = EvalTransform(image_size(pcfg, ecfg), ecfg.resize_size, pcfg.data.mean, pcfg.data.std)
    ds = EvalDataset(source, tf, pcfg.data.on_bad_image)
    ds.set_attrs(batch_size=ecfg.eval_batch_size, num_workers=ecfg.num_workers, shuffle=False, drop_last=False)
    return ds


def train_dataset(source, transform, pcfg, ecfg, drop_last: bool):
    """Augmented training batches ``([images (B, 3, S, S)], [], labels)`` in a (seed, epoch)-fixed,
    resumable order: the pretraining dataset with a one-view classifier transform; numpy out."""
    from jhssl.data.datasets import PretrainDataset
    ds = PretrainDataset(source, transform, None, seed=ecfg.seed, on_bad_image=pcfg.data.on_bad_image)
    ds.set_attrs(batch_size=ecfg.batch_size, num_workers=ecfg.num_workers, drop_last=drop_last,
                 keep_numpy_array=True)
    return ds


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict:
    """{"top1": %, "top5": %} (k capped at the number of classes)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(-logits, axis=1, kind="stable")
    out = {}
    for k in ks:
        hit = (order[:, :min(k, logits.shape[1])] == labels[:, None]).any(axis=1)
        out[f"top{k}"] = 100.0 * float(hit.mean()) if len(labels) else 0.0
    return out


def setup(kind: str, checkpoint: str, config: str | None = None, overrides=None, data: str | None = None,
          train_data: str | None = None, val_data: str | None = None, trusted: bool = False):
    """(tool config, pretraining config, checkpoint dict) for ``kind`` ('linear' | 'finetune'):
    everything that can be wrong with the inputs is found here, before any compute."""
    from jhssl.eval.config import load_eval_config
    ecfg = load_eval_config(kind, config, overrides)
    ckpt = read_pretrain_checkpoint(checkpoint, ecfg.which, trusted=trusted)
    over = data_overrides(ckpt["config"], data, train_data, val_data)
    pcfg = pretrain_config(ckpt, over)
    build_sources(pcfg, ecfg)  # data present, class sets agree (no subset file written yet)
    return ecfg, pcfg, ckpt, over


def add_common_args(p):
    """The command-line arguments the evaluation tools share."""
    p.add_argument("--checkpoint", required=True, help="pretraining checkpoint written by run/train.py")
    p.add_argument("--config", default=None, help="evaluation config YAML (configs/eval/*.yaml)")
    p.add_argument("--data", default=None, help="dataset root: Fashion-MNIST IDX directory, or a folder with "
                   "train/ and val/ (root/<class>/<image>); default: the checkpoint's config")
    p.add_argument("--train-data", default=None, help="labelled train folder (image folders)")
    p.add_argument("--val-data", default=None, help="labelled validation folder (image folders)")
    p.add_argument("overrides", nargs="*", help="evaluation config overrides key=value (e.g. epochs=10)")
    return p
