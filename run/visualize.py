"""Pictures of what a pretrained network learned: last-block CLS attention per head (DINO) and the
first 3 PCA components of the patch features as RGB (DINOv2); for HSSL checkpoints also the
auxiliary head's PCA.

    python run/visualize.py --checkpoint ckpt.pkl --images a.jpg b.jpg --output-dir output/vis
    python run/visualize.py --checkpoint ckpt.pkl --images cat.png --size 224 --which student

Writes <image>_attention.png (the image, then one map per head; ViT bases) and <image>_pca.png
(the image, base PCA, auxiliary-head PCA) per image.
"""
import os
import sys

import jhssl  # noqa: F401  (sets Jittor's environment before jittor loads)
from jhssl import cli


def parse_args(argv=None):
    p = cli.parser(__doc__, trust_pickle=True)
    p.add_argument("--checkpoint", required=True, help="pretraining checkpoint written by run/train.py")
    p.add_argument("--images", nargs="+", required=True, help="image files")
    p.add_argument("--output-dir", default="output/visualize")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the checkpoint's "
                   "global crop size), rounded down to a multiple of the patch size")
    p.add_argument("--which", choices=("teacher", "student"), default="teacher")
    return cli.parse_args(p, argv)


def main(argv=None):
    """Exit code 0, or 2 after a one-line error (missing image, bad checkpoint, bad size)."""
    return cli.run(_main, argv, prog="visualize", extra_errors=(ValueError, KeyError, RuntimeError))


def _main(argv=None):
    args = parse_args(argv)
    from jhssl.eval.common import load_network, read_pretrain_checkpoint
    from jhssl.eval.visualize import visualize
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"image not found: {missing[0]}")
    if args.size is not None and args.size <= 0:
        raise ValueError(f"--size must be positive, got {args.size}")
    ckpt = read_pretrain_checkpoint(args.checkpoint, args.which, trusted=args.trust_pickle)
    net, cfg = load_network(ckpt, args.which)
    size = args.size or cfg.data.global_crop_size
    paths = visualize(net, args.images, args.output_dir, size, cfg.data.mean, cfg.data.std)
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
