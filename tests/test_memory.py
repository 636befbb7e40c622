"""Memory of the data path and the trainer's profiler hook (issue 18).

* the k-NN loaders size their workers' ring buffers to their batches (Jittor zero-fills its 512 MB
  default, so all of it was resident) and stop their workers after one pass, with the same features
  as the single-process loader;
* ``train(profiler=...)`` is told where each phase ends, and profiling does not change the losses.
"""
import os

import numpy as np
import pytest
from PIL import Image

import jhssl  # noqa: F401
from tests._train_helpers import step_records, tiny_config, write_image_folder


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False


def test_ring_buffer_bytes_fits_two_batches_with_a_floor():
    from jhssl.data import ring_buffer_bytes
    assert ring_buffer_bytes(256, 4 * 3 * 28 * 28 + 64) == 32 << 20          # small batches: the floor
    big = ring_buffer_bytes(256, 4 * 3 * 224 * 224 + 64)                    # ImageNet k-NN batch
    assert 2 * 256 * 4 * 3 * 224 * 224 < big < 512 << 20


def test_eval_loader_workers_sized_released_and_same_features(tmp_path):
    """Features with 2 workers equal the single-process loader's; the workers' buffers are sized to
    the batch, not Jittor's 512 MB default, and the workers are gone after the pass."""
    import jittor as jt

    from jhssl.data import EvalDataset, EvalTransform, ImageFolderSource
    from jhssl.knn import extract_features
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    src = ImageFolderSource(str(tmp_path))

    def model_fn(x):
        return jt.concat([x.mean(dims=(2, 3)), x.max(dims=(1, 2, 3)).reshape(-1, 1)], dim=1)

    feats = {}
    for workers in (0, 2):
        ds = EvalDataset(src, EvalTransform(8, 8))
        ds.set_attrs(batch_size=5, shuffle=False, num_workers=workers)
        pids = []
        if workers:
            init = ds._init_workers

            def spy(index_list):  # the workers' pids, to check they are stopped afterwards
                init(index_list)
                pids.extend(w.p.pid for w in ds.workers)
            ds._init_workers = spy
        feats[workers], labels = extract_features(model_fn, ds)
        assert labels.tolist() == src.labels.tolist()
        if workers:
            assert ds.buffer_size == 32 << 20, ds.buffer_size  # two batches of 5 8x8 images: the floor
            assert len(pids) == 2 and not hasattr(ds, "workers")
            for pid in pids:
                for _ in range(50):
                    if not _alive(pid):
                        break
                    import time
                    time.sleep(0.1)
                assert not _alive(pid), f"worker {pid} still running after the pass"
            # a second pass forks new workers and gives the same features
            again, _ = extract_features(model_fn, ds)
            np.testing.assert_array_equal(again, feats[workers])
    np.testing.assert_array_equal(feats[0], feats[2])


class _Recorder:
    def __init__(self):
        self.phases = []

    def __call__(self, name):
        import jittor as jt
        jt.sync_all()  # what benchmarks/profile_step.py does at every boundary
        self.phases.append(name)


def test_train_profiler_hook_sees_every_phase_and_keeps_the_losses(tmp_path):
    from jhssl.train import train
    data = write_image_folder(str(tmp_path / "data"), n_per_class=4)
    losses = {}
    for name, prof in (("plain", None), ("profiled", _Recorder())):
        out = str(tmp_path / name)
        cfg = tiny_config(out, data, extra=["epochs=1"])
        res = train(cfg, resume=None, max_iters=2, progress=False, log=lambda *a: None, evaluate=False,
                    profiler=prof)
        assert res["iteration"] == 2
        losses[name] = {i: r["loss"] for i, r in step_records(out).items()}
        if prof is not None:
            step = ["data", "forward", "backward", "clip", "optimizer", "ema", "logging"]
            assert prof.phases[:2 * len(step)] == step * 2, prof.phases
            assert prof.phases[-2:] == ["before_checkpoint", "checkpoint"]
    assert losses["plain"] == losses["profiled"] and len(losses["plain"]) == 2


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_profile_step_reads_jittor_and_process_memory():
    from benchmarks.profile_step import jittor_memory, parse_jittor_memory, reset_peak_rss, worker_memory
    text = (" hold_vars: 2 lived_vars: 5 lived_ops: 4\n name: sfrl is_device: 0 used:  7.63MB(76.3%) "
            "unused:  2.37MB(23.7%) ULB: 1.185MB ULBO:     5MB total:    10MB\n")
    assert parse_jittor_memory(text) == {"jt_lived_vars": 5, "jt_used_mb": 7.6, "jt_cached_mb": 2.4}
    import jittor as jt
    x = jt.randn(256, 256)
    (x @ x).sync()
    mem = jittor_memory()
    assert mem["jt_lived_vars"] >= 1 and mem["jt_used_mb"] > 0
    assert reset_peak_rss() in (True, False)
    w = worker_memory()
    assert w["tree_pss_mb"] > 0 and w["workers"] >= 0


class _GraySource:
    """Fashion-MNIST-like source: grayscale images turned RGB, labels 0/1."""
    classes = ["a", "b"]

    def __init__(self, n=10):
        rng = np.random.default_rng(5)
        self.images = rng.integers(0, 256, (n, 12, 12), dtype=np.uint8)
        self.labels = np.arange(n) % 2

    def __len__(self):
        return len(self.images)

    def describe(self, i):
        return f"#{i}"

    def load(self, i):
        return Image.fromarray(self.images[i], mode="L").convert("RGB")


@pytest.mark.parametrize("workers", [0, 2])
def test_uint8_transport_gives_the_float32_loaders_batches(workers):
    """The switch on (uint8 crops through the loader, normalized in the training process) and off
    (float32 crops) give bit-identical batches and masks; direct indexing stays float32 CHW."""
    from jhssl import perf
    from jhssl.data import MaskGenerator, MultiCropAugmentation, PretrainDataset
    batches = {}
    for on in (False, True):
        with perf.uint8_transport(on):
            aug = MultiCropAugmentation(global_crop_size=8, local_crop_size=4, local_crops_number=2,
                                        mean=(0.3, 0.3, 0.3), std=(0.35, 0.35, 0.35))
            ds = PretrainDataset(_GraySource(), aug, MaskGenerator(4, 0.3, 0.1), seed=1)
        assert ds.uint8_transport == on
        ds.set_attrs(batch_size=5, num_workers=workers, drop_last=True)
        got = []
        for ep in range(2):
            ds.set_epoch(ep)
            for crops, masks, y in ds:
                got.append(([c.numpy() for c in crops], [m.numpy() for m in masks], y.numpy()))
        item = ds[3][0]
        assert item[0].dtype == np.float32 and item[0].shape == (3, 8, 8) and item[2].shape == (3, 4, 4)
        ds.terminate()
        batches[on] = got
    assert len(batches[True]) == 4
    for (c0, m0, y0), (c1, m1, y1) in zip(batches[False], batches[True]):
        assert all(a.dtype == b.dtype == np.float32 and a.shape == b.shape for a, b in zip(c0, c1))
        for a, b in zip(c0 + m0 + [y0], c1 + m1 + [y1]):
            np.testing.assert_array_equal(a, b)


def test_release_free_memory_returns_heap_pages():
    """After many small allocations are freed, malloc_trim brings the RSS back down (glibc)."""
    from jhssl.memory import release_free_memory

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
    blocks = [bytearray(4000) for _ in range(50_000)]  # ~200 MB of small heap blocks
    keep = blocks[-1]
    del blocks
    before = rss_mb()
    if not release_free_memory():
        pytest.skip("no malloc_trim (not glibc)")
    assert rss_mb() < before - 50, (before, rss_mb())
    assert len(keep) == 4000


def test_streamed_checkpoint_has_jt_save_bytes(tmp_path):
    """atomic_save streams the pickle: the file is byte for byte what jt.save writes, and loads."""
    import jittor as jt

    from jhssl.checkpoint import atomic_save, load_checkpoint
    rng = np.random.default_rng(0)
    state = {"student": {"w": rng.normal(size=(300, 200)).astype(np.float32), "b": np.arange(7)},
             "config": {"lr": 1e-3, "name": "x"}, "iteration": 5, "rng": {"numpy": np.random.get_state()}}
    atomic_save(state, str(tmp_path / "ours.pkl"))
    jt.save(state, str(tmp_path / "jt.pkl"))
    assert (tmp_path / "ours.pkl").read_bytes() == (tmp_path / "jt.pkl").read_bytes()
    back = load_checkpoint(str(tmp_path / "ours.pkl"))
    np.testing.assert_array_equal(back["student"]["w"], state["student"]["w"])
    assert back["iteration"] == 5

