"""Fine-tune the base model of a jhssl pretraining checkpoint (BEiT/iBOT recipe, paper Table XXI).

    python run/finetune.py --checkpoint ckpt.pkl --data /imagenet --config configs/eval/finetune_ibot_vit_small_16.yaml
    python run/finetune.py --checkpoint ckpt.pkl --config configs/eval/finetune_fmnist.yaml
    mpirun --allow-run-as-root -np 2 python run/finetune.py --checkpoint ckpt.pkl --config ...   # data parallel
    python run/finetune.py --checkpoint ckpt.pkl label_fraction=0.1 output_dir=output/ft_10pct   # semi-supervised

A run continues from the newest checkpoint_*.pkl in output_dir (checkpoints are written at every
epoch end). Writes finetune_results.json, log.jsonl, finetune_curves.png into output_dir.
"""
import os
import sys

import jhssl  # noqa: F401  (sets Jittor's environment before jittor loads)
from jhssl import cli


def parse_args(argv=None):
    from jhssl.eval.common import add_common_args
    p = cli.parser(__doc__, trust_pickle=True)
    add_common_args(p)
    p.add_argument("--max-iters", type=int, default=None, help="stop after this many iterations (smoke tests)")
    p.add_argument("--no-progress", action="store_true")
    return cli.parse_args(p, argv)


def main(argv=None):
    """Exit code 0; 1 when training diverged (non-finite loss); 2 after a one-line input error."""
    return cli.run(_main, argv, prog="finetune", extra_errors=(ValueError, KeyError, RuntimeError))


def _main(argv=None):
    args = parse_args(argv)
    from jhssl import dist
    dist.install_failure_handler()
    from jhssl.eval.common import setup
    from jhssl.eval.finetune import finetune
    ecfg, pcfg, ckpt, _ = setup("finetune", args.checkpoint, args.config, args.overrides, args.data,
                                args.train_data, args.val_data, trusted=args.trust_pickle)
    try:
        res = finetune(ecfg, pcfg, ckpt, checkpoint=args.checkpoint, max_iters=args.max_iters,
                       progress=not args.no_progress)
    except FloatingPointError as e:  # the loss became non-finite: the last checkpoint is kept
        print(f"finetune: error: {e}", file=sys.stderr)
        return 1
    if dist.is_main():
        if res["top1"] is not None:
            print(f"fine-tuned ({res['epochs_done']}/{res['epochs']} epochs): top-1 {res['top1']:.2f}% "
                  f"top-5 {res['top5']:.2f}%")
        print(f"results: {os.path.join(ecfg.output_dir, 'finetune_results.json')}")
    return 0


if __name__ == "__main__":
    from jhssl.dist import exit_process
    exit_process(main())
