#!/usr/bin/env python
"""N_s and sIoU (paper Eqs. 3-4): does the HSSL base solve the samples its auxiliary head solves?

Three models' per-sample correctness on one labelled evaluation set:
  B1 the baseline base (plain DINO/iBOT), B2 the HSSL base, H the HSSL auxiliary head.

From checkpoints (weighted k-NN on the teacher features, as run/eval_knn.py)::

    python run/analyze.py --baseline-ckpt out/base/checkpoint.pth --hssl-ckpt out/hssl/checkpoint.pth \\
        --config configs/demo.yaml [key=value ...] --name convnext

From saved boolean vectors (.npy, one entry per evaluation sample, same order)::

    python run/analyze.py --baseline-correct b1.npy --hssl-base-correct b2.npy --hssl-head-correct h.npy

Prints a row in the style of the paper's Table II (zh: Table 3); ``--output`` also writes JSON.
"""
import json
import os

import numpy as np

from jhssl import analysis, cli
from jhssl.fileio import atomic_write_text


def _load_npy(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} correctness file not found: {path}")
    return np.load(path, allow_pickle=False)


def main(argv=None):
    """Exit code 0, or 2 after a one-line error (missing or unsafe file, bad input)."""
    return cli.run(_main, argv, prog="analyze", extra_errors=(ValueError,))


def _main(argv=None):
    p = cli.parser(__doc__.split("\n")[1], trust_pickle=True)
    g = p.add_argument_group("precomputed correctness (.npy of bool or 0/1)")
    g.add_argument("--baseline-correct", help="B1: baseline base model")
    g.add_argument("--hssl-base-correct", help="B2: HSSL base model")
    g.add_argument("--hssl-head-correct", help="H: HSSL auxiliary head")
    k = p.add_argument_group("from checkpoints (k-NN on a labelled evaluation set)")
    k.add_argument("--baseline-ckpt", help="checkpoint of the baseline (hssl: null) run")
    k.add_argument("--hssl-ckpt", help="checkpoint of the HSSL run (its base and its head are both evaluated)")
    k.add_argument("--config", help="config giving the evaluation data (eval.* and data.*); "
                                    "default: the HSSL checkpoint's own config")
    k.add_argument("--k", type=int, default=None, help="k of the weighted k-NN (default: eval.knn_k[0])")
    k.add_argument("--save-correct", help="directory to save b1.npy, b2.npy, h.npy for later reuse")
    p.add_argument("--name", default=None, help="row label (default: the HSSL run's head names, or 'head')")
    p.add_argument("--output", help="also write the statistics as JSON here")
    p.add_argument("overrides", nargs="*", help="dotted config overrides (key=value)")
    args = cli.parse_args(p, argv)

    npy = [args.baseline_correct, args.hssl_base_correct, args.hssl_head_correct]
    ckpt = [args.baseline_ckpt, args.hssl_ckpt]
    if any(npy) and any(ckpt):
        p.error("give either the three --*-correct files or the two --*-ckpt checkpoints, not both")
    name = args.name
    if any(npy):
        if not all(npy):
            missing = [f for f, v in zip(("--baseline-correct", "--hssl-base-correct", "--hssl-head-correct"), npy)
                       if not v]
            p.error(f"missing {', '.join(missing)} (all three correctness files are needed)")
        b1, b2, h = (_load_npy(x, w) for x, w in zip(npy, ("baseline", "HSSL base", "HSSL head")))
    elif any(ckpt):
        if not all(ckpt):
            p.error("both --baseline-ckpt and --hssl-ckpt are needed")
        from jhssl.analysis import correctness_from_checkpoints
        from jhssl.device import device_from_overrides, use_device
        use_device(device_from_overrides(args.overrides))
        b1, b2, h, head_names = correctness_from_checkpoints(
            args.baseline_ckpt, args.hssl_ckpt, config=args.config, overrides=args.overrides, k=args.k,
            trusted=args.trust_pickle)
        name = name or "+".join(head_names)
        if args.save_correct:
            os.makedirs(args.save_correct, exist_ok=True)
            for fn, v in (("b1.npy", b1), ("b2.npy", b2), ("h.npy", h)):
                np.save(os.path.join(args.save_correct, fn), v)
    else:
        p.error("no input: give --baseline-correct/--hssl-base-correct/--hssl-head-correct "
                "or --baseline-ckpt/--hssl-ckpt (see --help)")

    stats = analysis.overlap_stats(b1, b2, h)
    name = name or "head"
    print(analysis.table3_header())
    print(analysis.table3_row(name, stats))
    print(f"(N_s = |H ∩ (U-B1)| over {stats['n']} samples; sIoU = |B2 ∩ H ∩ (U-B1)| / |B2 ∩ (U-B1)| "
          f"= {stats['both_new']}/{stats['b2_new']})")
    if args.output:
        atomic_write_text(args.output, json.dumps({"name": name, **stats}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
