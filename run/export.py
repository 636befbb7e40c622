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
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jhssl import export, weights_io, convert  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pkl), authors' .pth.tar, or weights")
    p.add_argument("--out", required=True, help="output file (.pth, or .safetensors)")
    p.add_argument("--which", default="teacher", choices=("teacher", "student"))
    p.add_argument("--format", default="timm", choices=export.FORMATS)
    p.add_argument("--safetensors", action="store_true", help="write safetensors (no torch needed)")
    p.add_argument("--arch", default=None, help="model name when the checkpoint does not record it")
    p.add_argument("--img-size", type=int, default=None, help="resample a ViT pos_embed to this input size")
    p.add_argument("--trust-pickle", action="store_true",
                   help="unpickle any object in the checkpoint (only for files you trust)")
    args = p.parse_args(argv)
    try:
        res = export.export_checkpoint(args.checkpoint, args.out, which=args.which, fmt=args.format,
                                       safetensors=args.safetensors, arch=args.arch, img_size=args.img_size,
                                       trusted=args.trust_pickle)
    except (weights_io.TorchMissingError, weights_io.CorruptFileError, weights_io.UnsafePickleError,
            convert.ArchMismatchError, convert.StrictLoadError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(res["report"])
    check = (f"keys and shapes equal timm '{res['timm_name']}'" if res["checked_against_timm"]
             else "no timm reference list for this model: keys not checked against timm")
    print(f"wrote {res['out']} ({res['kind']}, format {res['format']}, {res['tensors']} tensors; {check})")
    if res["note"]:
        print(f"note: {res['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
