"""Data: IDX reader, ImageFolder with bad images, subsets, multi-crop, iBOT masks, Jittor datasets."""
import copy
import gzip
import os
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from jhssl.config import load_config
from jhssl.data import (BadImageError, BadImageWarning, EvalTransform, FashionMNISTSource, ImageFolderSource,
                        MaskGenerator, MultiCropAugmentation, SafeLoader, read_idx, select_subset)
from jhssl.data.transforms import random_resized_crop

FMNIST = "/usr/share/datasets/fashion-mnist"


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[arr.dtype]
    return bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


# ----------------------------------------------------------------------------- IDX
def test_read_idx_tiny_raw_and_gz(tmp_path):
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, -1, 300], dtype=">i4")
    (tmp_path / "a.idx").write_bytes(_idx_bytes(imgs))
    (tmp_path / "b.idx.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(str(tmp_path / "a.idx")), imgs)
    got = read_idx(str(tmp_path / "b.idx.gz"))
    np.testing.assert_array_equal(got, [7, -1, 300])
    assert got.dtype.byteorder in ("=", "|") or got.dtype.isnative
    (tmp_path / "bad.idx").write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(str(tmp_path / "bad.idx"))
    (tmp_path / "short.idx").write_bytes(_idx_bytes(imgs)[:-3])
    with pytest.raises(ValueError, match="declares shape"):
        read_idx(str(tmp_path / "short.idx"))


def test_fashion_mnist_source_on_tiny_files(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 1, 0], dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(imgs))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    src = FashionMNISTSource(str(tmp_path), "test")
    assert len(src) == 5 and src.labels.tolist() == [0, 1, 2, 1, 0]
    im = src.load(3)
    assert im.mode == "RGB" and im.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(im)[..., 1], imgs[3])
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        FashionMNISTSource(str(tmp_path), "train")


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Fashion-MNIST not installed")
def test_fashion_mnist_real_files():
    tr, te = FashionMNISTSource(FMNIST, "train"), FashionMNISTSource(FMNIST, "test")
    assert tr.images.shape == (60000, 28, 28) and te.images.shape == (10000, 28, 28)
    assert np.bincount(tr.labels).tolist() == [6000] * 10 and np.bincount(te.labels).tolist() == [1000] * 10
    assert tr.images.dtype == np.uint8 and tr.images.max() == 255
    assert tr.classes[9] == "Ankle boot"


def test_missing_paths_have_clear_messages(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as e:
        FashionMNISTSource(missing)
    assert missing in str(e.value) and "idx3-ubyte" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        ImageFolderSource(missing)
    assert missing in str(e.value) and "root/<class>/<image>" in str(e.value)


# ----------------------------------------------------------------------------- ImageFolder
def _make_folder(root, n_per_class=3, size=(20, 16), corrupt=True):
    rng = np.random.default_rng(1)
    for ci, cname in enumerate(["cat", "dog"]):
        d = root / cname
        d.mkdir(parents=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            ext = [".png", ".jpg", ".bmp"][i % 3]
            Image.fromarray(arr).save(d / f"img{i}{ext}")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8), "L").save(d / "gray.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "cat" / "img0_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return root


def test_image_folder_lists_pillow_formats(tmp_path):
    src = ImageFolderSource(str(_make_folder(tmp_path, corrupt=False)))
    assert src.classes == ["cat", "dog"]
    assert len(src) == 8 and np.bincount(src.labels).tolist() == [4, 4]  # .txt ignored
    for i in range(len(src)):
        im = src.load(i)
        assert im.mode == "RGB" and im.size == (20, 16)


def test_corrupt_image_skipped_and_counted(tmp_path):
    src = ImageFolderSource(str(_make_folder(tmp_path)))
    bad = [i for i, p in enumerate(src.paths) if p.endswith("img0_bad.jpg")][0]
    loader = SafeLoader(src, "skip")
    with pytest.warns(BadImageWarning, match=r"img0_bad.jpg.*1 file\(s\) skipped"):
        img, label, used = loader.load(bad)
    assert used == bad + 1 and label == src.labels[bad + 1] and img.mode == "RGB"
    assert loader.num_skipped == 1 and loader.skipped_indices().tolist() == [bad]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known-bad file: skipped silently, not counted twice
        loader.load(bad)
    assert loader.num_skipped == 1
    good = SafeLoader(src, "fail")
    with pytest.raises(BadImageError, match="img0_bad.jpg.*on_bad_image=fail"):
        good.load(bad)


def test_subset_is_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [100, 50, 10, 1])
    a = select_subset(labels, 0.1, seed=0)
    assert np.bincount(labels[a]).tolist() == [10, 5, 1, 1]
    np.testing.assert_array_equal(a, select_subset(labels, 0.1, seed=0))
    assert not np.array_equal(a, select_subset(labels, 0.1, seed=1))
    assert len(select_subset(labels, 1.0, 3)) == len(labels)


# ----------------------------------------------------------------------------- multi-crop
def _img(seed=0, size=40):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_multicrop_shapes_dtypes_and_determinism():
    aug = MultiCropAugmentation(global_crop_size=32, local_crop_size=16, local_crops_number=3)
    views = aug(_img(), np.random.default_rng(0))
    assert [v.shape for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(v.dtype == np.float32 and v.flags["C_CONTIGUOUS"] for v in views)
    again = aug(_img(), np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(views, again))
    other = aug(_img(), np.random.default_rng(1))
    assert not np.array_equal(views[0], other[0])


def test_gray_images_skip_saturation_and_hue_with_identical_views(monkeypatch):
    """Fashion-MNIST's R = G = B images: skipping saturation and hue (identity on gray) changes no bit
    of any view, and a colour image is not taken for gray."""
    from jhssl.data import transforms
    aug = MultiCropAugmentation(global_crop_size=16, local_crop_size=8, local_crops_number=2)
    gray = [Image.fromarray(np.repeat(np.random.default_rng(s).integers(0, 256, (24, 24, 1), dtype=np.uint8), 3, 2))
            for s in range(40)]
    assert all(transforms.is_gray(im) for im in gray) and not transforms.is_gray(_img(0, 24))
    fast = [aug(im, np.random.default_rng(i)) for i, im in enumerate(gray)]
    monkeypatch.setattr(transforms, "is_gray", lambda img: False)  # the full jitter on every image
    full = [aug(im, np.random.default_rng(i)) for i, im in enumerate(gray)]
    assert all(np.array_equal(a, b) for fv, uv in zip(fast, full) for a, b in zip(fv, uv))
    # and the skip is real: on a colour image saturation/hue do change the result
    colour = _img(3, 24)
    a = transforms.color_jitter(colour, np.random.default_rng(5))
    b = transforms.color_jitter(colour, np.random.default_rng(5), gray=True)
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_multicrop_probabilities_per_view():
    aug = MultiCropAugmentation(global_crop_size=16, local_crop_size=8, local_crops_number=2)
    rng = np.random.default_rng(0)
    n = 400
    traces = []
    for i in range(n):
        t = []
        aug(_img(i % 7, 24), rng, trace=t)
        traces.append(t)
    frac = lambda v, op: np.mean([t[v][op] for t in traces])  # noqa: E731
    assert frac(0, "blur") == 1.0 and frac(0, "solarize") == 0.0      # view 1: blur always, never solarized
    assert 0.04 < frac(1, "blur") < 0.17 and 0.13 < frac(1, "solarize") < 0.28  # view 2: 0.1 / 0.2
    for v in (2, 3):
        assert 0.4 < frac(v, "blur") < 0.6 and frac(v, "solarize") == 0.0   # locals: 0.5 / never
    for v in range(4):
        assert 0.73 < frac(v, "jitter") < 0.87 and 0.13 < frac(v, "gray") < 0.27 and 0.4 < frac(v, "flip") < 0.6


def test_normalization_and_full_crop():
    # scale (1, 1) on a square image: the crop is the whole image, so the output is a plain resize
    img = _img(3, 16)
    out = random_resized_crop(img, 16, (1.0, 1.0), np.random.default_rng(0))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))
    tf = EvalTransform(16, 16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = tf(img)
    np.testing.assert_allclose(x, (np.asarray(img, np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.25, atol=1e-6)
    # default eval: resize shorter side to 256/224 * size, then centre crop
    assert EvalTransform(32).resize_size == 37 and EvalTransform(32)(Image.new("RGB", (50, 40))).shape == (3, 32, 32)


# ----------------------------------------------------------------------------- masks
def _replay_ratio(gen, rng, epoch):
    return gen.sample_ratio(copy.deepcopy(rng), epoch)


@pytest.mark.parametrize("shape", ["block", "rand"])
def test_mask_ratio_within_bounds(shape):
    r, v = 0.3, 0.2
    gen = MaskGenerator(16, r, v, pred_shape=shape)
    rng = np.random.default_rng(0)
    N = 14 * 14
    got = []
    for _ in range(300):
        target = _replay_ratio(gen, rng, 0)
        assert r - v <= target <= r + v
        m = gen(224, rng, 0)
        assert m.shape == (14, 14) and m.dtype == bool
        got.append(m.sum())
        # never above the target; a block mask may stop short (iBOT), by less than one min block
        slack = 1 if shape == "rand" else (14 // 3) ** 2
        assert target * N - slack < m.sum() <= target * N
    got = np.array(got) / N
    assert r - v - 0.08 <= got.min() and got.max() <= r + v and abs(got.mean() - r) < 0.03


def test_mask_list_ratio_and_start_epoch():
    gen = MaskGenerator(4, [0.0, 0.3], [0.0, 0.2], pred_start_epoch=2)
    rng = np.random.default_rng(0)
    assert all(not gen(32, rng, e).any() for e in (0, 1) for _ in range(50))  # before pred_start_epoch
    ratios = np.array([gen(32, rng, 2).mean() for _ in range(400)])
    assert 0.35 < np.mean(ratios == 0) < 0.65 and ratios.max() <= 0.5
    with pytest.raises(ValueError):
        MaskGenerator(4, 0.1, 0.2)


# ----------------------------------------------------------------------------- Jittor datasets
def _tiny_cfg(tmp_path, extra=()):
    return load_config(None, ["data.dataset=folder", f"data.path={tmp_path}", "data.global_crop_size=16",
                              "data.local_crop_size=8", "data.local_crops_number=2", "model.patch_size=4",
                              "batch_size=4", "num_workers=0", "mask.pred_ratio=0.3", "mask.pred_ratio_var=0.1",
                              "mask.pred_start_epoch=1", *extra])


def test_pretrain_dataset_items_epochs_and_collate(tmp_path):
    from jhssl.data import build_pretrain_dataset, collate_pretrain
    cfg = _tiny_cfg(_make_folder(tmp_path, corrupt=False))
    ds = build_pretrain_dataset(cfg)
    crops, masks, label = ds[0]
    assert [c.shape for c in crops] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 2 and crops[0].dtype == np.float32
    assert len(masks) == 2 and masks[0].shape == (4, 4) and masks[0].dtype == bool
    assert not any(m.any() for i in range(len(ds.loader.source)) for m in ds[i][1])  # epoch 0 < start 1
    ds.set_epoch(1)
    assert any(m.any() for i in range(len(ds.loader.source)) for m in ds[i][1])
    # a sample is a function of (seed, epoch, index)
    x1 = ds[3][0][0]
    assert np.array_equal(x1, ds[3][0][0])
    ds.set_epoch(2)
    assert not np.array_equal(x1, ds[3][0][0])
    c, m, y = collate_pretrain([ds[0], ds[1], ds[2]])
    assert c[0].shape == (3, 3, 16, 16) and c[2].shape == (3, 3, 8, 8) and m[1].shape == (3, 4, 4)
    assert y.dtype == np.int32
    dino = build_pretrain_dataset(_tiny_cfg(tmp_path, ["method=dino"]))
    assert dino[0][1] == []


class _CountingSource:
    """In-memory source whose label is the sample index, so batches reveal the sample order."""

    def __init__(self, n=12):
        self.labels = np.arange(n)
        self.classes = [str(i) for i in range(n)]

    def __len__(self):
        return len(self.labels)

    def describe(self, i):
        return f"sample {i}"

    def load(self, i):
        return Image.fromarray(np.full((12, 12, 3), 20 * i, np.uint8))


def test_epoch_permutation_depends_on_seed_and_epoch_only():
    from jhssl.data import epoch_permutation
    a = epoch_permutation(50, 0, 3)
    assert sorted(a) == list(range(50)) and np.array_equal(a, epoch_permutation(50, 0, 3))
    assert not np.array_equal(a, epoch_permutation(50, 0, 4)) and not np.array_equal(a, epoch_permutation(50, 1, 3))


def test_batches_arriving_out_of_order_are_yielded_in_the_epoch_order(monkeypatch):
    """Jittor's workers can hand batches over out of order (one claims a batch, another overtakes it
    before it queues its id); PretrainDataset puts them back by their loader indices, and a resume's
    skipped batches are dropped by position, not by arrival."""
    import jittor.dataset as jd
    from jhssl.data import PretrainDataset, epoch_permutation
    real_iter = jd.Dataset.__iter__

    def overtaken(self):  # batch 1 arrives first, then 0, then the rest
        batches = list(real_iter(self))
        yield from [batches[1], batches[0]] + batches[2:]

    monkeypatch.setattr(jd.Dataset, "__iter__", overtaken)
    aug = MultiCropAugmentation(global_crop_size=8, local_crop_size=4, local_crops_number=1)
    ds = PretrainDataset(_CountingSource(12), aug, None, seed=3)
    ds.set_attrs(batch_size=4, num_workers=0, drop_last=True)
    ds.set_epoch(0)
    labels = [v for _, _, y in ds for v in y.numpy().tolist()]
    assert labels == epoch_permutation(12, 3, 0).tolist()
    ds.set_epoch(1, start_batch=1)  # resume at batch 1: batch 0 (a placeholder) arrives second
    labels = [v for _, _, y in ds for v in y.numpy().tolist()]
    assert labels == epoch_permutation(12, 3, 1)[4:].tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_order_masks_and_resume_follow_set_epoch(workers):
    """Each epoch's batches follow epoch_permutation(seed, epoch) and its masks its own epoch,
    even though Jittor's workers start loading the next epoch before set_epoch is called."""
    from jhssl.data import PretrainDataset, epoch_permutation
    aug = MultiCropAugmentation(global_crop_size=8, local_crop_size=4, local_crops_number=1)
    ds = PretrainDataset(_CountingSource(12), aug, MaskGenerator(4, 0.5, 0.0, pred_shape="rand",
                                                                 pred_start_epoch=1), seed=7)
    ds.set_attrs(batch_size=4, num_workers=workers, drop_last=True)

    def run_epoch(ep, start_batch=0, stop_after=None):
        ds.set_epoch(ep, start_batch)
        labels, masked = [], []
        for b, (crops, masks, y) in enumerate(ds):
            assert tuple(crops[0].shape) == (4, 3, 8, 8) and tuple(crops[2].shape) == (4, 3, 4, 4)
            labels += y.numpy().tolist()
            masked.append(float(masks[0].float32().sum()))
            if stop_after is not None and b + 1 == stop_after:
                break
        return labels, masked

    for ep in range(3):
        labels, masked = run_epoch(ep)
        assert labels == epoch_permutation(12, 7, ep).tolist()
        assert (sum(masked) == 0) == (ep < 1)   # 2 of 4 patches per mask from epoch 1 on
    labels, _ = run_epoch(3, start_batch=1)     # resume mid-epoch: batches 1 and 2 only
    assert labels == epoch_permutation(12, 7, 3)[4:].tolist()
    labels, _ = run_epoch(4, stop_after=1)      # abandoned after one batch
    assert labels == epoch_permutation(12, 7, 4)[:4].tolist()
    labels, _ = run_epoch(5)                    # no stale batches from epoch 4 leak in
    assert labels == epoch_permutation(12, 7, 5).tolist()
    labels, _ = run_epoch(5)                    # repeating an epoch is allowed
    assert labels == epoch_permutation(12, 7, 5).tolist()


def test_abandoned_epoch_with_a_prefetched_next_list_restarts_at_the_right_epoch():
    """Deterministic form of a worker race: Jittor's workers may already have drawn the next
    epoch's list when an epoch is abandoned; the restart must draw the epoch being iterated,
    not the one after the dropped list (seen once as epoch 6's order in place of epoch 5's)."""
    from jhssl.data import PretrainDataset, epoch_permutation
    aug = MultiCropAugmentation(global_crop_size=8, local_crop_size=4, local_crops_number=1)
    ds = PretrainDataset(_CountingSource(12), aug, None, seed=7)
    ds.set_attrs(batch_size=4, num_workers=0, drop_last=True)
    ds.set_epoch(4)
    for _ in ds:
        break  # abandoned after one batch
    # what a worker's in-loop reset leaves behind: epoch 5's list drawn ahead of the trainer
    ds._generated.append(5)
    ds._next_gen_epoch = 6
    ds.set_epoch(5)
    labels = sum((y.numpy().tolist() for _, _, y in ds), [])
    assert labels == epoch_permutation(12, 7, 5).tolist()


def test_loader_with_workers_skips_corrupt_images(tmp_path):
    from jhssl.data import build_pretrain_dataset
    cfg = _tiny_cfg(_make_folder(tmp_path, corrupt=True), ["num_workers=2"])
    ds = build_pretrain_dataset(cfg)
    ds.set_epoch(0)
    batches = list(ds)
    assert len(batches) == 9 // 4  # drop_last with the global batch
    crops, masks, labels = batches[0]
    assert tuple(crops[0].shape) == (4, 3, 16, 16) and tuple(crops[3].shape) == (4, 3, 8, 8)
    assert tuple(masks[0].shape) == (4, 4, 4) and str(masks[0].dtype) == "bool"


def test_build_dataset_missing_path_message(tmp_path):
    from jhssl.data import build_eval_datasets, build_pretrain_dataset
    missing = str(tmp_path / "imagenet" / "train")
    with pytest.raises(FileNotFoundError) as e:
        build_pretrain_dataset(load_config(None, [f"data.path={missing}"]))
    assert missing in str(e.value) and "root/<class>/<image>" in str(e.value)
    with pytest.raises(FileNotFoundError, match="data.path is not set"):
        build_pretrain_dataset(load_config(None, []))
    with pytest.raises(FileNotFoundError, match="eval.val_path"):
        build_eval_datasets(load_config(None, [f"data.path={tmp_path}"]))


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="Fashion-MNIST not installed")
def test_build_eval_datasets_fashion_mnist():
    from jhssl.data import build_eval_datasets
    cfg = load_config(None, ["data.dataset=fashion_mnist", f"data.path={FMNIST}", "data.global_crop_size=32",
                             "model.patch_size=4", "eval.train_subset=0.01", "eval.val_subset=0.01"])
    tr, va = build_eval_datasets(cfg)
    assert len(tr.loader.source) == 600 and len(va.loader.source) == 100
    x, y, i = va[5]
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and y == va.labels[5] and i == 5
