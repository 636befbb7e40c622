"""HSSL / DINO / iBOT pretraining.

    python run/train.py --config configs/demo.yaml
    python run/train.py --config configs/ibot_hssl_vit_small_16.yaml data.path=/imagenet/train epochs=100
    python run/train.py --config configs/demo.yaml hssl=null output_dir=output/demo_baseline   # baseline

Overrides are dotted ``key=value`` pairs (YAML values). By default a run continues from the newest
checkpoint in ``output_dir`` (``--no-resume`` starts afresh, ``--resume PATH`` picks a file).
Ends by printing the k-NN top-1 of the pretrained teacher base model.
"""
import sys

import jhssl  # noqa: F401  (sets Jittor's environment before jittor loads)
from jhssl import cli


def parse_args(argv=None):
    p = cli.parser(__doc__, trust_pickle=True)
    p.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="checkpoint to resume from; without a value (default): newest in output_dir")
    g.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    p.add_argument("--max-iters", type=int, default=None, help="stop after this many iterations (timing, smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. optim.lr=1e-3 hssl.depth=2 "
                                                "(anywhere on the command line)")
    return cli.parse_args(p, argv)


def main(argv=None):
    """Exit code: 0, 1 (the loss became non-finite), 2 (a user error, printed as one line)."""
    return cli.run(_main, argv, prog="train")


def _main(argv=None):
    args = parse_args(argv)
    from jhssl import dist
    dist.install_failure_handler()  # under mpirun: a failing rank ends the whole job, naming itself
    from jhssl.config import load_config
    cfg = load_config(args.config, args.overrides)
    resume = None if args.no_resume else (args.resume or cfg.resume)
    from jhssl.train import NonFiniteLossError, train
    try:
        result = train(cfg, resume=resume, max_iters=args.max_iters, progress=not args.no_progress,
                       trusted=args.trust_pickle)
    except NonFiniteLossError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 1
    knn = result.get("knn")
    if knn:
        k = 20 if 20 in knn else sorted(knn)[0]
        print(f"k-NN top-1 (teacher {cfg.eval.features}, k={k}): {knn[k]['top1']:.2f}%")
    print(f"checkpoint: {result['checkpoint']}")
    return 0


if __name__ == "__main__":
    from jhssl.dist import exit_process
    exit_process(main())  # under MPI an error code ends the job at once (no MPI_Finalize wait)
