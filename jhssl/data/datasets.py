"""Jittor datasets for pretraining and evaluation, the epoch-seeded sampler, and builders.

How Jittor's ``Dataset`` behaves (jittor/dataset/dataset.py, 1.3.11), and what follows from it:

* ``batch_size`` is GLOBAL under MPI. Each epoch the index list (from ``sampler`` if set) is
  cut into global batches and rank r takes the r-th contiguous slice of every batch. Ranks do
  not broadcast the list: they must compute the *same* list, else samples are duplicated or
  lost. :class:`EpochSampler` therefore draws the permutation from (seed, epoch) only, never
  from per-rank state (``jt.set_global_seed`` offsets seeds by rank). With ``drop_last`` every
  rank gets the same number of batches; the last partial batch, if kept, is split unevenly and
  its slices may overlap, so pretraining uses ``drop_last=True``.
* With ``num_workers > 0`` the worker processes are forked once, at the first ``iter()``, and
  live on across epochs; attributes changed later in the main process are not seen by them.
  Worse, Jittor starts loading the *next* epoch as soon as the workers have claimed every batch
  of the current one (the "in-loop reset" in ``Dataset.__iter__``): the next epoch's index list
  is drawn, and its samples are built, before the trainer calls ``set_epoch``. A plain
  ``set_epoch`` flag would therefore be stale for prefetched batches.
  :class:`PretrainDataset` handles this by numbering the index lists it hands to Jittor: each
  list that feeds workers is drawn for the next epoch in sequence, and every index in it
  carries a slot that maps (through shared memory) to that epoch, so a sample always knows its
  own epoch. ``set_epoch`` with an epoch other than the one already prefetched, a mid-epoch
  resume (``start_batch``) or an iteration abandoned half-way restart the workers.
* With two or more workers Jittor can deliver an epoch's batches out of order: a worker claims a
  batch under one lock and queues its id for the main process under another, so a descheduled
  worker is overtaken (seen 1 in 8 runs of a 3-batch epoch under load). Every item the loader
  builds therefore carries its loader index, and :meth:`PretrainDataset.__iter__` yields the
  batches in the epoch's order (holding at most one per worker that arrived early).
* Random augmentation does not use the worker's global RNG: each sample's generator is seeded
  from (seed, epoch, index), so results do not depend on worker count, rank or resume point.
"""
from __future__ import annotations

import multiprocessing as mp

import numpy as np

import jhssl  # noqa: F401  (sets Jittor's environment first)
import jittor as jt
from jittor.dataset import Dataset
from jittor.dataset.sampler import Sampler

from jhssl.config import ConfigError
from .masking import MaskGenerator, RandomPatchMask
from .sources import (FashionMNISTSource, ImageFolderSource, SafeLoader, SubsetSource, read_class_list,
                      select_subset)
from .transforms import CropFlipAugmentation, EvalTransform, MultiCropAugmentation, normalize_uint8

__all__ = ["epoch_permutation", "EpochSampler", "PretrainDataset", "EvalDataset", "build_source", "build_pretrain_dataset",
           "build_eval_datasets", "collate_pretrain", "ring_buffer_bytes", "release_workers"]


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of ``epoch``: a function of (seed, epoch) only, identical on every rank."""
    return np.random.default_rng([int(seed), int(epoch), 0xE90C]).permutation(n)


class EpochSampler(Sampler):
    """Hands Jittor the index list the dataset prepared (see :meth:`PretrainDataset._get_index_list`)."""

    def __init__(self, dataset):
        self.dataset = dataset
        dataset.sampler = self  # Jittor reads the index list from dataset.sampler
        self.prepared = None

    def __iter__(self):
        return iter(self.prepared.tolist())

    def __len__(self):
        return len(self.prepared) if self.prepared is not None else self.dataset.num_samples


_JITTOR_DEFAULT_BUFFER = 512 << 20  # jittor.dataset.Dataset's buffer_size default


def ring_buffer_bytes(batch_per_rank: int, sample_bytes: int) -> int:
    """Worker ring buffer size for batches of ``batch_per_rank`` samples of ``sample_bytes`` each.

    Jittor zero-fills each worker's ring buffer (shared memory, default 512 MB) when the worker
    starts, so every byte of it is resident from then on, in the training process's RSS (the
    demo's two k-NN loaders alone held 4 x 512 MB). About two batches bound the look-ahead and
    still fit large ImageNet batches (one such batch may exceed the 512 MB default)."""
    return max(32 << 20, int(2.2 * int(batch_per_rank) * int(sample_bytes)) + (16 << 20))


def release_workers(dataset) -> None:
    """Stop a loader's worker processes (and free their ring buffers); the next ``iter`` forks new
    ones. After a one-pass use (feature extraction) the workers would otherwise live on, holding
    their memory, and start loading the next pass on the shared cores (Jittor prefetches it)."""
    if hasattr(dataset, "workers"):
        dataset.reset()


def collate_pretrain(batch):
    """[(crops, masks, label), ...] -> (list of (B,3,h,w) float32, list of (B,H,W) bool, (B,) int32).

    Items from inside the loader carry their loader index as a 4th element: it comes back as a 4th
    (B,) int64 array, with which :meth:`PretrainDataset.__iter__` restores the batch order."""
    crops = [np.stack([b[0][v] for b in batch]) for v in range(len(batch[0][0]))]
    masks = [np.stack([b[1][v] for b in batch]) for v in range(len(batch[0][1]))]
    labels = np.asarray([b[2] for b in batch], dtype=np.int32)
    if len(batch[0]) == 4:
        return crops, masks, labels, np.asarray([b[3] for b in batch], dtype=np.int64)
    return crops, masks, labels


class PretrainDataset(Dataset):
    """Items: (list of crops as float32 CHW arrays, list of bool (H, W) masks for the global
    crops, label); inside the loader, with ``uint8_transport``, the crops are uint8 HWC and
    ``to_jittor`` normalizes the batch. ``mask_generator=None`` (DINO) gives an empty mask list.

    Call ``set_epoch(e)`` before iterating epoch ``e`` (without it, each full iteration moves to
    the next epoch). Direct indexing ``ds[i]`` uses the current epoch; indices the loader passes
    encode the epoch they were drawn for.
    """

    _SLOTS = 64  # epochs that may be in flight at once (prefetched ahead of the trainer)

    def __init__(self, base, transform: MultiCropAugmentation, mask_generator: MaskGenerator | None = None,
                 seed: int = 0, on_bad_image: str = "skip"):
        super().__init__()
        self.loader = base if isinstance(base, SafeLoader) else SafeLoader(base, on_bad_image)
        self.transform = transform
        self.mask_generator = mask_generator
        self.seed = int(seed)
        self.num_samples = len(self.loader.source)
        n = max(self.num_samples, 1)
        # encoded index = (slot + 1) * n + i; slot S (the last) marks skipped resume positions
        self._slots = max(2, min(self._SLOTS, (2 ** 31 - 1) // n - 3))
        self._slot_epoch = mp.Array("i", self._slots, lock=False)  # shared with forked workers
        self._epoch = 0             # epoch of the next iteration (set_epoch)
        self._next_gen_epoch = 0    # epoch the next worker-feeding index list is drawn for
        self._generated = []        # epochs of the lists drawn so far (main process)
        self._consumed = 0          # how many of them were iterated
        self._skip = 0              # global batches to skip in the next iteration
        self._iter_start = False
        self._dirty = False
        self.set_attrs(total_len=self.num_samples)
        self._sampler = EpochSampler(self)
        # jhssl.perf.uint8_transport: batches travel as uint8 and are normalized in to_jittor
        from jhssl import perf
        self.uint8_transport = perf.uint8_transport_enabled() and hasattr(transform, "uint8_output")

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def num_skipped(self) -> int:
        """Unreadable images skipped so far (this rank)."""
        return self.loader.num_skipped

    def _restart_workers(self):
        if hasattr(self, "workers"):
            self.reset()
        del self._generated[self._consumed:]
        # the dropped lists were drawn ahead; the next one is for the epoch about to be iterated
        self._next_gen_epoch = self._epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Call before iterating epoch ``epoch``; ``start_batch`` skips that many global batches."""
        epoch, start_batch = int(epoch), int(start_batch)
        prefetched = self._generated[self._consumed:]
        # batches already drawn for another epoch are stale; a resume needs the placeholders,
        # which only a freshly started loader puts in its first list
        if (prefetched and prefetched[0] != epoch) or (start_batch > 0 and hasattr(self, "workers")):
            self._restart_workers()
        if not self._generated[self._consumed:]:
            self._next_gen_epoch = epoch
        self._epoch = epoch
        self._skip = start_batch

    def _get_index_list(self):
        # Jittor calls this at the start of every __iter__ and, with workers, again whenever it
        # starts loading the next epoch. Only lists that reach workers (or the single-process
        # loop) advance the epoch sequence; the start call with live workers only sets lengths.
        start, self._iter_start = self._iter_start, False
        feeds = not (start and self.num_workers and hasattr(self, "workers"))
        n = self.num_samples
        if feeds:
            if len(self._generated) - self._consumed >= self._slots - 2:
                raise RuntimeError(f"the loader's workers ran {self._slots - 2} epochs ahead of the trainer; "
                                   f"lower buffer_size or use fewer workers")
            epoch = self._next_gen_epoch
            self._next_gen_epoch += 1
            self._generated.append(epoch)
            slot = epoch % (self._slots - 1)
            self._slot_epoch[slot] = epoch
            order = epoch_permutation(n, self.seed, epoch)
            enc = (slot + 1) * n + order
            if start and self._skip:
                k = min(self._skip * self.batch_size, n)
                enc[:k] = self._slots * n + order[:k]  # placeholders, dropped by __iter__
        else:
            enc = np.arange(n) + n  # only its length is used
        self._sampler.prepared = enc.astype(np.int64)
        return super()._get_index_list()

    def __iter__(self):
        if self._dirty:
            self._restart_workers()
            self._dirty = False
        skip, self._skip = self._skip, 0
        self._iter_start = True
        done = False
        # the loader's items (built here or in workers forked from here) carry uint8 views;
        # direct indexing ds[i] outside an iteration keeps giving normalized float32
        if self.uint8_transport:
            self.transform.uint8_output = True
        # the batch order of this epoch: a sample's position in epoch_permutation, over the global batch
        # (under MPI each rank's slice of a global batch starts at rank * batch / ranks, same batch number)
        n = max(self.num_samples, 1)
        position = np.empty(n, np.int64)
        position[epoch_permutation(self.num_samples, self.seed, self._epoch)] = np.arange(self.num_samples)
        pending, expected = {}, 0
        try:
            for crops, masks, labels, index in super().__iter__():
                pending[int(position[int(index[0]) % n]) // self.batch_size] = (crops, masks, labels)
                while expected in pending:  # skipped resume positions (placeholders) are dropped
                    batch = pending.pop(expected)
                    if expected >= skip:
                        yield batch
                    expected += 1
            for k in sorted(pending):  # not reached when every batch arrived (they always do)
                if k >= skip:
                    yield pending[k]
            done = True
        finally:
            if self.uint8_transport:
                self.transform.uint8_output = False
            self._consumed += 1
            self._epoch += 1
            if not self._generated[self._consumed:]:
                self._next_gen_epoch = self._epoch
            if not done:  # abandoned mid-epoch: batches left in the workers' buffers are stale
                self._dirty = True

    def decode(self, index: int):
        """(epoch or None for a placeholder, sample index) of a loader index."""
        n = max(self.num_samples, 1)
        index = int(index)
        if index < n:
            return self._epoch, index
        slot, i = divmod(index, n)
        if slot - 1 >= self._slots - 1:
            return None, i
        return int(self._slot_epoch[slot - 1]), i

    def __getitem__(self, index):
        # inside the loader (encoded indices) the index rides along: __iter__ restores the batch order
        tag = (int(index),) if int(index) >= max(self.num_samples, 1) else ()
        epoch, index = self.decode(index)
        if epoch is None:  # a skipped resume position: a tiny placeholder, never yielded
            nm = self.transform.n_global if self.mask_generator is not None else 0
            return ([np.zeros((1,), np.float32)] * self.transform.num_crops, [np.zeros((1,), bool)] * nm, -1) + tag
        img, label, _ = self.loader.load(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        crops = self.transform(img, rng)
        masks = []
        if self.mask_generator is not None:
            # the crop's width: CHW float32, or HWC uint8 under the uint8 transport
            masks = [self.mask_generator(c.shape[-2] if c.dtype == np.uint8 else c.shape[-1], rng, epoch)
                     for c in crops[:self.transform.n_global]]
        return (crops, masks, label) + tag

    def collate_batch(self, batch):
        return collate_pretrain(batch)

    def to_jittor(self, batch):
        # In the training process, on each collated (crops, masks, labels, index) batch (Jittor then
        # calls this again on its parts): uint8 (B, H, W, 3) crops become normalized float32
        # (B, 3, H, W); the loader indices stay numpy (__iter__ reads them and drops them).
        if isinstance(batch, (list, tuple)) and len(batch) == 4 and isinstance(batch[0], (list, tuple)):
            index = batch[3].numpy() if isinstance(batch[3], jt.Var) else np.asarray(batch[3])
            crops, masks, labels = self.to_jittor(tuple(batch[:3]))
            return crops, masks, labels, index
        if (self.uint8_transport and isinstance(batch, (list, tuple)) and len(batch) == 3
                and isinstance(batch[0], (list, tuple))):
            t = self.transform
            # a worker's ring buffer hands arrays over as Jittor Vars already: back to numpy (a small
            # uint8 copy) so the arithmetic is normalize_uint8's, bit for bit
            crops = [c.numpy() if isinstance(c, jt.Var) else c for c in batch[0]]
            crops = [normalize_uint8(c, t.mean, t.std) if c.dtype == np.uint8 else c for c in crops]
            batch = (crops, batch[1], batch[2])
        return super().to_jittor(batch)


class EvalDataset(Dataset):
    """Items: (float32 CHW image, label, index); ``index`` lets features be gathered over ranks."""

    def __init__(self, base, transform: EvalTransform, on_bad_image: str = "skip"):
        super().__init__()
        self.loader = base if isinstance(base, SafeLoader) else SafeLoader(base, on_bad_image)
        self.transform = transform
        self.set_attrs(total_len=len(self.loader.source))

    @property
    def labels(self) -> np.ndarray:
        return self.loader.source.labels

    def __getitem__(self, index):
        img, label, _ = self.loader.load(int(index))
        return self.transform(img), label, int(index)

    def _init_workers(self, index_list):
        # sized when the workers start: batch_size may be changed until then (extract_features)
        if self.buffer_size == _JITTOR_DEFAULT_BUFFER:
            per_rank = -(-self.batch_size // (jt.world_size if jt.in_mpi else 1))
            self.buffer_size = ring_buffer_bytes(per_rank, 4 * 3 * self.transform.img_size ** 2 + 64)
        super()._init_workers(index_list)

    def collate_batch(self, batch):
        return (np.stack([b[0] for b in batch]), np.asarray([b[1] for b in batch], np.int32),
                np.asarray([b[2] for b in batch], np.int32))


# ----------------------------------------------------------------------------- builders
def build_source(dataset: str, path: str | None, split: str = "train", subset: float = 1.0, seed: int = 0,
                 class_list: str | None = None):
    """An image source (see ``sources.py``) with an optional per-class ``subset`` fraction and, for
    folders, an optional ``class_list`` file of the class folders to keep (ImageNet-S300 / S50)."""
    if class_list and dataset != "folder":
        raise ValueError(f"data.class_list selects class folders of data.dataset=folder, not {dataset!r}")
    if dataset == "fashion_mnist":
        src = FashionMNISTSource(path, split)
    elif dataset == "folder":
        if not path:
            raise FileNotFoundError("data.path is not set: for data.dataset=folder give a folder laid "
                                    "out as root/<class>/<image> (ImageNet layout)")
        src = ImageFolderSource(path, read_class_list(class_list) if class_list else None)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: folder, fashion_mnist")
    if subset < 1.0:
        src = SubsetSource(src, select_subset(src.labels, subset, seed))
    return src


def build_pretrain_dataset(cfg) -> PretrainDataset:
    """The views (and masks) ``cfg.method`` declares, with loader attributes set from ``cfg``:
    global ``batch_size``, ``num_workers``, ``drop_last=True`` and an :class:`EpochSampler`."""
    from jhssl.methods.registry import method_spec
    d = cfg.data
    views = method_spec(cfg.method).views  # what the method takes: views, local crops, masks
    n_local = d.local_crops_number if views.local_crops else 0
    src = build_source(d.dataset, d.path, d.split, d.subset, cfg.seed, d.class_list)
    if views.augment == "crop_flip":  # MAE: one crop + flip, no colour augmentation
        transform = CropFlipAugmentation.from_config(d)
    else:
        transform = MultiCropAugmentation.from_config(d, n_global=views.n_global, local_crops_number=n_local)
    from jhssl.base_models import mask_patch_size
    # iBOT's block masks follow the base's mask grid (Swin: its last stage, patch_size x 8)
    mask_px = mask_patch_size(cfg) if views.masks == "block" else cfg.model.patch_size
    if views.masks == "block":
        masks = MaskGenerator.from_config(cfg.mask, mask_px)
    elif views.masks == "random":  # MAE's per-image shuffle, drawn per sample: MPI/resume exact
        masks = RandomPatchMask(cfg.model.patch_size, cfg.mae.mask_ratio)
    else:
        masks = None
    ds = PretrainDataset(src, transform, masks, seed=cfg.seed, on_bad_image=d.on_bad_image)
    if len(src) < cfg.batch_size:
        raise ConfigError(f"dataset {d.path!r} has {len(src)} images (after data.subset={d.subset}), fewer "
                          f"than batch_size={cfg.batch_size}: no full batch can be formed")
    # Jittor's workers prefetch until their ring buffer is full: two batches of this rank
    per_rank = -(-cfg.batch_size // (jt.world_size if jt.in_mpi else 1))
    sample_bytes = (1 if ds.uint8_transport else 4) * 3 * (views.n_global * d.global_crop_size ** 2 + n_local * d.local_crop_size ** 2) \
        + 2 * (d.global_crop_size // mask_px) ** 2 + 64
    buffer_size = ring_buffer_bytes(per_rank, sample_bytes)
    ds.set_attrs(batch_size=cfg.batch_size, num_workers=cfg.num_workers, drop_last=True, buffer_size=buffer_size)
    return ds


def _eval_paths(cfg):
    d, e = cfg.data, cfg.eval
    if d.dataset == "fashion_mnist":
        root_train = e.train_path or d.path
        root_val = e.val_path or d.path
        return (root_train, "train"), (root_val, "test")
    if not (e.train_path or d.path):
        raise FileNotFoundError("eval.train_path and data.path are both unset: k-NN needs a labelled "
                                "train folder (root/<class>/<image>)")
    if not e.val_path:
        raise FileNotFoundError("eval.val_path is not set: for data.dataset=folder k-NN needs a labelled "
                                "validation folder (root/<class>/<image>), e.g. imagenet/val")
    return (e.train_path or d.path, "train"), (e.val_path, "test")


def build_eval_datasets(cfg, ks=None):
    """(train_ds, val_ds) for k-NN: resize + centre crop + normalize, with labels, in order.

    ``ks``: the k a k-NN evaluation will use, checked against the number of labelled training images
    now, before any compute (the trainer builds these before training); None: no check (the sets
    serve something else, e.g. the search's held-out images)."""
    d, e = cfg.data, cfg.eval
    size = e.img_size or d.global_crop_size
    tf = EvalTransform(size, e.resize_size, d.mean, d.std)
    (tp, ts), (vp, vs) = _eval_paths(cfg)
    train_src = build_source(d.dataset, tp, ts, e.train_subset, cfg.seed, d.class_list)
    # Checked here, before any training, not when the k-NN runs at the end.
    ks = list(ks or [])
    too_large = [k for k in ks if k > len(train_src)]
    if too_large:
        raise ConfigError(f"eval.knn_k={ks}: k={max(too_large)} exceeds the {len(train_src)} labelled "
                          f"k-NN training images ({tp or d.path!r}, eval.train_subset={e.train_subset}); "
                          f"lower eval.knn_k or use more images")
    val_src = build_source(d.dataset, vp, vs, e.val_subset, cfg.seed, d.class_list)
    if d.dataset == "folder" and list(train_src.classes) != list(val_src.classes):
        raise ValueError(f"k-NN train folder {tp!r} and val folder {vp!r} have different class folders")
    out = []
    for src in (train_src, val_src):
        ds = EvalDataset(src, tf, d.on_bad_image)
        ds.set_attrs(batch_size=e.batch_size, num_workers=cfg.num_workers, shuffle=False, drop_last=False)
        out.append(ds)
    return tuple(out)
