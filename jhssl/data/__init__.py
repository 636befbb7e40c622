"""Data: image sources, multi-crop augmentation, iBOT masks, Jittor datasets and builders.

``sources``, ``transforms`` and ``masking`` are numpy/Pillow only; ``datasets`` imports Jittor
and is loaded on first use of its names, so config/data tools work without compiling Jittor.
"""
from .masking import MaskGenerator
from .sources import (BadImageError, BadImageWarning, FashionMNISTSource, ImageFolderSource, SafeLoader,
                      SubsetSource, find_idx_file, read_idx, select_subset)
from .transforms import EvalTransform, MultiCropAugmentation

_JITTOR_NAMES = ("epoch_permutation", "EpochSampler", "PretrainDataset", "EvalDataset", "build_source", "build_pretrain_dataset",
                 "build_eval_datasets", "collate_pretrain", "ring_buffer_bytes", "release_workers")

__all__ = ["MaskGenerator", "BadImageError", "BadImageWarning", "FashionMNISTSource", "ImageFolderSource",
           "SafeLoader", "SubsetSource", "find_idx_file", "read_idx", "select_subset", "EvalTransform",
           "MultiCropAugmentation", *_JITTOR_NAMES]


def __getattr__(name):
    if name in _JITTOR_NAMES:
        from . import datasets
        return getattr(datasets, name)
    raise AttributeError(f"module 'jhssl.data' has no attribute {name!r}")
