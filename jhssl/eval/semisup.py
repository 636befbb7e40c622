"""Label subsets for semi-supervised evaluation (paper Table X).

The paper follows iBOT, which evaluates on SimCLRv2's fixed ImageNet 1 %/10 % file lists. Those
lists exist only for ImageNet; here a class-balanced subset of any labelled set is drawn:
``fraction`` of every class (at least one image each), chosen by a seed
(:func:`jhssl.data.sources.select_subset`), and written to a file next to the results so that the
same images can be used again (``label_subset_file``). The subset then goes through the frozen-
feature protocols (linear probe, as iBOT's "linear" column) and fine-tuning of the base model. iBOT's
other variant (fine-tuning from the projection head's first layer) is not implemented: the
projection head is not part of a jhssl evaluation network.
"""
from __future__ import annotations

import json

import numpy as np

from jhssl.data.sources import SubsetSource, select_subset
from jhssl.fileio import atomic_write_text

__all__ = ["label_subset", "write_label_subset", "read_label_subset", "apply_label_subset"]


def label_subset(labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices: ``fraction`` of each class (at least one), the same for the same seed."""
    return select_subset(np.asarray(labels), fraction, seed)


def write_label_subset(path: str, source, indices, fraction: float | None, seed: int | None) -> None:
    """One line per kept image: ``index<TAB>label<TAB>description`` after a JSON header line."""
    indices = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(source.labels)[indices]
    counts = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
    head = {"fraction": fraction, "seed": seed, "images": int(len(indices)), "per_class": counts}
    lines = ["# " + json.dumps(head)]
    lines += [f"{int(i)}\t{int(lab)}\t{source.describe(int(i))}" for i, lab in zip(indices, labels)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_label_subset(path: str) -> np.ndarray:
    idx = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            try:
                idx.append(int(line.split("\t", 1)[0]))
            except ValueError:
                raise ValueError(f"{path}:{n}: not a label-subset line (index<TAB>label<TAB>name)") from None
    if not idx:
        raise ValueError(f"{path}: the label subset file lists no images")
    return np.asarray(idx, dtype=np.int64)


def apply_label_subset(source, fraction: float = 1.0, seed: int = 0, subset_file: str | None = None,
                       write_to: str | None = None):
    """``source`` restricted to the label subset (unchanged for fraction 1 without a file); the
    subset's list is written to ``write_to`` when given."""
    if subset_file:
        indices = read_label_subset(subset_file)
        if indices.max() >= len(source) or indices.min() < 0:
            raise ValueError(f"{subset_file}: index {int(indices.max())} is out of range for a train set "
                             f"of {len(source)} images (a list made for other data?)")
        fraction = None
    elif fraction >= 1.0:
        return source
    else:
        indices = label_subset(source.labels, fraction, seed)
    if write_to:
        write_label_subset(write_to, source, indices, fraction, None if subset_file else seed)
    return SubsetSource(source, indices)
