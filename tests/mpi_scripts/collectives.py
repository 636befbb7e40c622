"""Data sharding, loss centers, k-NN feature gathering and the numpy collectives, under mpirun.

    mpirun -np 2 python tests/mpi_scripts/collectives.py --out DIR --data ROOT

Rank 0 writes ``DIR/collectives.npz`` (what each rank saw, gathered); tests/test_mpi.py checks it
against single-process answers it computes itself.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import jhssl  # noqa: E402,F401
from jhssl import dist  # noqa: E402

GLOBAL_BATCH = 4
EPOCHS = (0, 1)


def shard_indices(cfg):
    """Sample indices this rank's loader yields, per epoch: (epochs, batches, per-rank batch)."""
    from jhssl.data import build_pretrain_dataset
    from jhssl.data.datasets import PretrainDataset

    seen = []

    class Recording(PretrainDataset):
        def __getitem__(self, index):
            epoch, i = self.decode(index)
            seen.append((epoch, i))
            return super().__getitem__(index)

    ds = build_pretrain_dataset(cfg)
    ds.__class__ = Recording  # same object, records which samples the loader asks for
    out = []
    for epoch in EPOCHS:
        ds.set_epoch(epoch)
        seen.clear()
        batches = []
        for crops, masks, labels in ds:
            batches.append(int(crops[0].shape[0]))
        assert all(e == epoch for e, _ in seen), f"samples decoded to other epochs: {set(e for e, _ in seen)}"
        out.append([i for _, i in seen])
    return out, batches


def image_features(x):
    """A fixed, weight-free feature map (B, 3, H, W) -> (B, 15): channel means and a corner."""
    import jittor as jt
    return jt.concat([x.mean(dims=(2, 3)), x[:, :, :2, :2].reshape((x.shape[0], -1))], dim=1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True)
    args = p.parse_args()
    dist.install_failure_handler()

    import numpy as np
    import jittor as jt
    from _train_helpers import tiny_config
    from jhssl.methods.losses import SelfDistillationLoss

    r, n = dist.rank(), dist.world_size()
    res = {"world_size": np.array([n])}

    # --- data shards: every rank reports its samples; gathered in rank order
    cfg = tiny_config(os.path.join(args.out, "unused"), args.data, extra=[f"batch_size={GLOBAL_BATCH}"])
    idx, batch_rows = shard_indices(cfg)
    res["shards"] = dist.all_gather_rows(np.array(idx, dtype=np.int64)[None])  # (ranks, epochs, samples)
    res["per_rank_batch"] = dist.all_gather_rows(np.array([batch_rows[0]]))

    # --- centers: each rank feeds its slice of a fixed global batch, twice
    rng = np.random.default_rng(0)
    steps = [(rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal((8, 5, 16)).astype(np.float32))
             for _ in range(2)]
    loss = SelfDistillationLoss(16, 16, n_global=2, n_local=0, epochs=1, use_patch=True)
    b = 8 // n
    for cls, patch in steps:
        patch_mean = patch[r * b:(r + 1) * b].reshape(-1, 16).mean(0, keepdims=True)  # this rank's tokens
        loss.update_centers(jt.array(cls[r * b:(r + 1) * b]), jt.array(patch_mean))
    res["center"] = dist.all_gather_rows(loss.center.numpy())          # (ranks, 16)
    res["center_patch"] = dist.all_gather_rows(loss.center_patch.numpy()[0])  # (ranks, 16)
    res["center_inputs_cls"] = np.stack([s[0] for s in steps])
    res["center_inputs_patch"] = np.stack([s[1] for s in steps])

    # --- k-NN features: sharded extraction, gathered; a batch of 3 leaves an uneven last batch
    from jhssl.data import build_eval_datasets
    from jhssl.knn import extract_features
    train_ds, _ = build_eval_datasets(cfg)
    feats, labels = extract_features(image_features, train_ds, batch_size=3)
    res["knn_feats"], res["knn_labels"] = feats, labels

    # --- module broadcast (parameters, float and int64 buffers) and the divergence check
    from jittor import nn
    from models.layers.residual import BatchNorm2d
    jt.set_global_seed(0)  # offsets the seed by rank: different weights on each rank
    mod = nn.Sequential(nn.Linear(4, 3), BatchNorm2d(3))
    mod[1].num_batches_tracked.update(jt.array(np.array([5 + r])).int64())
    mod[1].running_mean.update(jt.full((3,), float(r)))
    res["divergence_before"] = np.array([dist.max_divergence(mod)])
    dist.broadcast_module(mod)
    res["divergence_after"] = np.array([dist.max_divergence(mod)])
    res["bn_tracked"] = dist.all_gather_rows(mod[1].num_batches_tracked.numpy())
    res["bn_tracked_dtype"] = np.array([str(mod[1].num_batches_tracked.dtype)])
    res["bn_stop_grad"] = np.array([mod[1].running_mean.is_stop_grad()])

    # --- numpy collectives with uneven rows
    res["gather_uneven"] = dist.all_gather_rows(np.full((r + 1, 2), r, dtype=np.float32))
    res["reduce_mean"] = dist.all_reduce_np(np.array([r, 10.0]), "mean")
    res["broadcast_obj"] = np.array([dist.broadcast_object(f"from rank {r}") == "from rank 0"])
    try:
        dist.check_batch_size(2 * n + 1)
        res["batch_check"] = np.array([""])
    except ValueError as e:
        res["batch_check"] = np.array([str(e)])

    if dist.is_main():
        os.makedirs(args.out, exist_ok=True)
        np.savez(os.path.join(args.out, "collectives.npz"), **res)
    dist.barrier()
    print(f"rank {r} done", flush=True)


if __name__ == "__main__":
    main()
