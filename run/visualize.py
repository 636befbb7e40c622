"""Pictures of what a pretrained network learned: last-block CLS attention per head (DINO) and the
first 3 PCA components of the patch features as RGB (DINOv2); for HSSL checkpoints also the
auxiliary head's PCA.

    python run/visualize.py --checkpoint ckpt.pkl --images a.jpg b.jpg --output-dir output/vis
    python run/visualize.py --checkpoint ckpt.pkl --images cat.png --size 224 --which student

Writes <image>_attention.png (the image, then one map per head; ViT bases) and <image>_pca.png
(the image, base PCA, auxiliary-head PCA) per image.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jhssl  # noqa: E402,F401  (sets Jittor's environment before jittor loads)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="pretraining checkpoint written by run/train.py")
    p.add_argument("--images", nargs="+", required=True, help="image files")
    p.add_argument("--output-dir", default="output/visualize")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the checkpoint's "
                   "global crop size), rounded down to a multiple of the patch size")
    p.add_argument("--which", choices=("teacher", "student"), default="teacher")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from jhssl.eval.common import load_network, read_pretrain_checkpoint
    from jhssl.eval.visualize import visualize
    try:
        missing = [p for p in args.images if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"image not found: {missing[0]}")
        if args.size is not None and args.size <= 0:
            raise ValueError(f"--size must be positive, got {args.size}")
        ckpt = read_pretrain_checkpoint(args.checkpoint, args.which)
        net, cfg = load_network(ckpt, args.which)
        size = args.size or cfg.data.global_crop_size
        paths = visualize(net, args.images, args.output_dir, size, cfg.data.mean, cfg.data.std)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        print(f"visualize: error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
