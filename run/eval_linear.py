"""Linear probe (DINO/iBOT protocol; one linear head per learning rate, trained together as DINOv2
does) of a jhssl pretraining checkpoint.

    python run/eval_linear.py --checkpoint output/demo/checkpoint_00000138.pkl
    python run/eval_linear.py --checkpoint ckpt.pkl --data /imagenet --config configs/eval/linear.yaml
    python run/eval_linear.py --checkpoint ckpt.pkl --config configs/eval/linear_fmnist_cached.yaml
    python run/eval_linear.py --checkpoint ckpt.pkl label_fraction=0.1 output_dir=output/linear_10pct

Writes linear_results.json (every lr's top-1/top-5, the best, and the mode that ran), log.jsonl,
linear_curves.png and, for a label subset, label_subset.txt into output_dir.
"""
import os

import jhssl  # noqa: F401  (sets Jittor's environment before jittor loads)
from jhssl import cli


def parse_args(argv=None):
    from jhssl.eval.common import add_common_args
    p = cli.parser(__doc__, trust_pickle=True)
    add_common_args(p)
    return cli.parse_args(p, argv)


def main(argv=None):
    """Exit code 0, or 2 after a one-line error (bad checkpoint, config, data), before any compute."""
    # ValueError/KeyError/RuntimeError: the checkpoint or data do not fit (reported as one line)
    return cli.run(_main, argv, prog="eval_linear", extra_errors=(ValueError, KeyError, RuntimeError))


def _main(argv=None):
    args = parse_args(argv)
    from jhssl import dist
    dist.install_failure_handler()
    from jhssl.eval.common import load_network, setup
    from jhssl.eval.linear import run_linear_probe
    ecfg, pcfg, ckpt, over = setup("linear", args.checkpoint, args.config, args.overrides, args.data,
                                   args.train_data, args.val_data, trusted=args.trust_pickle)
    net, pcfg = load_network(ckpt, ecfg.which, over)
    res = run_linear_probe(ecfg, net, pcfg, checkpoint=args.checkpoint)
    if dist.is_main():
        b = res["best"]
        print(f"linear probe ({res['mode']}, {ecfg.which} {ecfg.features}): best top-1 {b['top1']:.2f}% "
              f"top-5 {b['top5']:.2f}% at lr {b['lr']:g}")
        print(f"results: {os.path.join(ecfg.output_dir, 'linear_results.json')}")
    return 0


if __name__ == "__main__":
    from jhssl.dist import exit_process
    exit_process(main())
