"""HSSL / DINO / iBOT pretraining.

    python run/train.py --config configs/demo.yaml
    python run/train.py --config configs/ibot_hssl_vit_small_16.yaml data.path=/imagenet/train epochs=100
    python run/train.py --config configs/demo.yaml hssl=null output_dir=output/demo_baseline   # baseline

Overrides are dotted ``key=value`` pairs (YAML values). By default a run continues from the newest
checkpoint in ``output_dir`` (``--no-resume`` starts afresh, ``--resume PATH`` picks a file).
Ends by printing the k-NN top-1 of the pretrained teacher base model.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jhssl  # noqa: E402,F401  (sets Jittor's environment before jittor loads)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="checkpoint to resume from; without a value (default): newest in output_dir")
    g.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    p.add_argument("--max-iters", type=int, default=None, help="stop after this many iterations (timing, smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. optim.lr=1e-3 hssl.depth=2")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from jhssl import dist
    dist.install_failure_handler()  # under mpirun: a failing rank ends the whole job, naming itself
    from jhssl.config import ConfigError, load_config
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"train: config error: {e}", file=sys.stderr)
        return 2
    resume = None if args.no_resume else (args.resume or cfg.resume)
    from jhssl.train import NonFiniteLossError, train
    try:
        result = train(cfg, resume=resume, max_iters=args.max_iters, progress=not args.no_progress)
    except ConfigError as e:  # found before compute (e.g. an option the base model does not take)
        print(f"train: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NonFiniteLossError) as e:
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
