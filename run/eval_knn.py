"""Weighted k-NN evaluation (DINO protocol) of a jhssl pretraining checkpoint.

    python run/eval_knn.py --checkpoint output/demo/checkpoint_00001234.pkl
    python run/eval_knn.py --checkpoint ckpt.pkl --data /imagenet --features head --k 10 20 100 200

By default the data of the checkpoint's config are used (Fashion-MNIST: train vs test split;
folder: eval.train_path / eval.val_path). ``--data ROOT`` points elsewhere: for Fashion-MNIST the
IDX directory, for an image folder a root holding ``train/`` and ``val/`` (ImageNet layout).
"""
import json
import sys

import jhssl  # noqa: F401  (sets Jittor's environment before jittor loads)
from jhssl import cli


def parse_args(argv=None):
    p = cli.parser(__doc__, trust_pickle=True)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by run/train.py")
    p.add_argument("--data", default=None, help="dataset root (see above); default: the checkpoint's config")
    p.add_argument("--train-data", default=None, help="labelled train folder (image folders only)")
    p.add_argument("--val-data", default=None, help="labelled validation folder (image folders only)")
    p.add_argument("--which", choices=("teacher", "student"), default=None, help="default: eval.which (teacher)")
    p.add_argument("--features", choices=("base", "head"), default=None,
                   help="base: the base model's CLS feature; head: the auxiliary head's (default: eval.features)")
    p.add_argument("--k", type=int, nargs="+", default=None, help="neighbours (default: eval.knn_k, i.e. 20)")
    p.add_argument("--temperature", type=float, default=None, help="default: eval.knn_t (0.07)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--train-subset", type=float, default=None, help="fraction of the train set (per class)")
    p.add_argument("--val-subset", type=float, default=None)
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.add_argument("overrides", nargs="*", help="config overrides key=value applied to the checkpoint's config")
    return cli.parse_args(p, argv)


def main(argv=None):
    """Exit code 0, or 2 after a one-line error (bad checkpoint, config, data)."""
    # ValueError/KeyError/RuntimeError: the checkpoint's config or data do not fit (a checkpoint of
    # another schema, missing splits); reported as one line like the user errors.
    return cli.run(_main, argv, prog="eval_knn", extra_errors=(ValueError, KeyError, RuntimeError))


def _main(argv=None):
    args = parse_args(argv)
    from jhssl import weights_io
    from jhssl.knn import evaluate_knn, feature_fn, format_knn, load_eval_network

    over = list(args.overrides)
    if args.batch_size:
        over.append(f"eval.batch_size={args.batch_size}")
    if args.num_workers is not None:
        over.append(f"num_workers={args.num_workers}")
    if args.train_subset is not None:
        over.append(f"eval.train_subset={args.train_subset}")
    if args.val_subset is not None:
        over.append(f"eval.val_subset={args.val_subset}")
    if args.k:
        over.append(f"eval.knn_k={list(args.k)}")  # checked against the labelled set before extracting features
    ckpt = weights_io.load_checkpoint(args.checkpoint, trusted=args.trust_pickle)
    cfg_dict = ckpt.get("config", {}) if isinstance(ckpt, dict) else {}
    from jhssl.eval.common import data_overrides
    over += data_overrides(cfg_dict, args.data, args.train_data, args.val_data)
    from jhssl.config import apply_overrides, config_from_dict
    pre = config_from_dict(apply_overrides(cfg_dict, over), strict=False)
    from jhssl.knn import stored_network
    which = stored_network(ckpt, args.which or pre.eval.which)  # MAE: the student (no teacher)
    features = args.features or pre.eval.features
    from jhssl.device import use_device
    use_device(pre.device)
    net, cfg = load_eval_network(ckpt, which, over)
    fn = feature_fn(net, features)
    ks = args.k or list(cfg.eval.knn_k)
    T = args.temperature if args.temperature is not None else cfg.eval.knn_t
    res = evaluate_knn(cfg, fn, ks=ks, T=T, progress=True)
    print(format_knn(res, T, f"{which} {features}"))
    if args.output:
        from jhssl.fileio import atomic_write_text
        atomic_write_text(args.output, json.dumps({"checkpoint": args.checkpoint, "which": which, "features": features,
                                                   "T": T, "results": {str(k): v for k, v in res.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
