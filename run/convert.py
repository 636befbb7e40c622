#!/usr/bin/env python
"""Convert checkpoints between PyTorch releases and jhssl's Jittor models.

PyTorch -> Jittor (DINO, iBOT, MAE, timm checkpoints of ViT and Swin)::

    python run/convert.py --src dino_deitsmall16_pretrain.pth --arch vit_small --out dino_vits16.pkl
    python run/convert.py --src mae_pretrain_vit_base.pth --arch vit_base --out mae_vitb16.safetensors --strict

Jittor -> PyTorch (a .pth or .safetensors output; the same keys as timm)::

    python run/convert.py --src our_vit_small.pkl --arch vit_small --out vit_small.pth

The authors' Jittor HSSL checkpoints (NK-JittorCV/Self-Supervised main_hssl.py) into our ViT +
ConvNext head (keys backbone.* and aux_head.*)::

    python run/convert.py --src checkpoint.pth.tar --arch vit_small --aux-head convnext --out hssl.pkl

Prefixes (module., backbone., encoder.) and wrappers (teacher/student/model/state_dict) are
handled; heads the architecture lacks are dropped and reported; pos_embed and Swin relative
position tables are resized bicubically when sizes differ. Missing and unexpected keys are
reported; --strict makes them an error. The output is written only when the conversion
succeeded, atomically. Pickled checkpoints can run code when loaded: convert only files you trust.
"""
import sys

from jhssl import cli, convert


def _kv(items):
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--model-arg expects key=value, got '{it}'")
        k, v = it.split("=", 1)
        try:
            import yaml
            out[k] = yaml.safe_load(v)
        except Exception:
            out[k] = v
    return out


def main(argv=None):
    """Exit code 0, or 2 after a one-line error (missing, corrupt or unsafe file, architecture mismatch)."""
    # KeyError/ValueError: a --which the checkpoint lacks, a file without tensors, a bad --model-arg
    return cli.run(_main, argv, prog="convert", extra_errors=(KeyError, ValueError))


def _main(argv=None):
    p = cli.parser(__doc__.split("\n\n")[0], trust_pickle=True, epilog=__doc__)
    p.add_argument("--src", required=True, help="source checkpoint (.pth/.pt/.bin, .pkl, .pth.tar, .safetensors)")
    p.add_argument("--arch", required=True, help="target model name (models.create_model), e.g. vit_small")
    p.add_argument("--out", default=None, help="output: .pkl (Jittor), .pth (PyTorch) or .safetensors; "
                                               "omit to only check and report")
    p.add_argument("--strict", action="store_true", help="fail on any missing or unexpected key")
    p.add_argument("--which", default=None, help="sub-dict to convert (teacher/student/model/state_dict)")
    p.add_argument("--aux-head", default=None, help="also convert an auxiliary head (authors' checkpoints: convnext)")
    p.add_argument("--aux-depth", type=int, default=3)
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="extra model factory argument, e.g. img_size=384 or window_size=12 (repeatable)")
    args = cli.parse_args(p, argv)
    _, report = convert.convert_file(args.src, args.arch, out=args.out, strict=args.strict, which=args.which,
                                     aux_head=args.aux_head, aux_depth=args.aux_depth,
                                     trusted=args.trust_pickle, model_kwargs=_kv(args.model_arg))
    print(report)
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
