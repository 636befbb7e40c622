#!/usr/bin/env python
"""Export the base model of a jhssl (or the authors') pretraining checkpoint for PyTorch.

    python run/export.py --checkpoint output/demo/checkpoint_00001234.pkl --out vit_small_hssl.pth
    python run/export.py --checkpoint ckpt.pkl --out vit_small_hssl.safetensors --safetensors --format timm
    python run/export.py --checkpoint ckpt.pkl --out dino_style.pth --format dino --which teacher

Writes the base model only (auxiliary heads, projection heads and the mask token are dropped).
``--format timm``: timm's keys (strict-clean in timm.create_model(name, num_classes=0));
``dino``: {'teacher': {'backbone.'+key}}; ``mmseg``: {'state_dict': {'backbone.'+key}}.
``.pth`` needs torch; ``--safetensors`` needs nothing. Files are written atomically.
Pickled checkpoints can run code when loaded: export only checkpoints you trust.
"""
import sys

from jhssl import cli, export


def main(argv=None):
    """Exit code 0, or 2 after a one-line error (missing, corrupt or unsafe file, no timm match)."""
    # KeyError/ValueError: a --which the checkpoint lacks, no base-model weights, a bad output name
    return cli.run(_main, argv, prog="export", extra_errors=(KeyError, ValueError))


def _main(argv=None):
    p = cli.parser(__doc__.split("\n\n")[0], trust_pickle=True, epilog=__doc__)
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pkl), authors' .pth.tar, or weights")
    p.add_argument("--out", required=True, help="output file (.pth, or .safetensors)")
    p.add_argument("--which", default="teacher", choices=("teacher", "student"))
    p.add_argument("--format", default="timm", choices=export.FORMATS)
    p.add_argument("--safetensors", action="store_true", help="write safetensors (no torch needed)")
    p.add_argument("--arch", default=None, help="model name when the checkpoint does not record it")
    p.add_argument("--img-size", type=int, default=None, help="resample a ViT pos_embed to this input size")
    args = cli.parse_args(p, argv)
    res = export.export_checkpoint(args.checkpoint, args.out, which=args.which, fmt=args.format,
                                   safetensors=args.safetensors, arch=args.arch, img_size=args.img_size,
                                   trusted=args.trust_pickle)
    print(res["report"])
    check = (f"keys and shapes equal timm '{res['timm_name']}'" if res["checked_against_timm"]
             else "NOT checked against timm")
    print(f"wrote {res['out']} ({res['kind']}, format {res['format']}, {res['tensors']} tensors; {check})")
    if res["note"]:
        print(f"note: {res['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
