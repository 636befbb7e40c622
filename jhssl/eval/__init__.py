"""Evaluation protocols beyond k-NN: linear probing (DINO/iBOT, many learning rates in one pass as
DINOv2), end-to-end fine-tuning (BEiT/iBOT), semi-supervised label subsets, and pictures of what a
model learned (attention maps, PCA of patch features).

* :mod:`jhssl.eval.config`    - the tools' config schemas (strict, dotted overrides)
* :mod:`jhssl.eval.common`    - loading a pretraining checkpoint, datasets, top-k accuracy
* :mod:`jhssl.eval.features`  - DINO's linear-probe features (``n_last_blocks``, ``avgpool``)
* :mod:`jhssl.eval.linear`    - the multi-lr linear probe
* :mod:`jhssl.eval.augment`   - RandAugment, random erasing, mixup/cutmix (numpy + Pillow)
* :mod:`jhssl.eval.finetune`  - fine-tuning with layer-wise lr decay
* :mod:`jhssl.eval.semisup`   - class-balanced label subsets written to a file
* :mod:`jhssl.eval.visualize` - CLS attention maps and patch-feature PCA as PNGs
"""
