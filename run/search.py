#!/usr/bin/env python
"""Quick auxiliary-head search (paper Sec. 3.5): train all candidate heads in parallel, rank by D.

    python run/search.py --config configs/search_vit_tiny_fmnist.yaml [key=value ...]

In a search config ``hssl.heads`` lists the *candidates* (default: all six, each of depth
``hssl.depth``=1), not a concatenated head. Writes ``<output_dir>/search.{json,md,png}`` (or
``--out PREFIX``), prints the ranking and the recommended head as a config line
(e.g. ``hssl.heads=[convnext]``), and the search's time per iteration against a single head.

Training is the normal loop (``jhssl.train.train``): checkpoints and ``log.jsonl`` land in
``output_dir`` and ``--resume`` continues an interrupted search. Under
``mpirun -np N python run/search.py ...`` the batch is split over the ranks and D is measured on
each rank's share of the held-out images, then totalled; rank 0 prints and writes.
"""
import shlex
import sys

import jhssl  # noqa: F401  (sets Jittor's environment before jittor loads)
from jhssl import cli
from jhssl.config import load_config


def main(argv=None):
    """Exit code 0, or 2 after a one-line error (config, data, files)."""
    # ValueError: the data do not fit the search (as before this helper existed)
    return cli.run(_main, argv, prog="search", extra_errors=(ValueError,))


def _main(argv=None):
    p = cli.parser("Quick auxiliary-head search (HSSL Sec. 3.5)")
    p.add_argument("--config", required=True, help="search config (YAML), e.g. configs/search_vit_tiny_fmnist.yaml")
    p.add_argument("--out", default=None, help="output prefix (default: <output_dir>/search)")
    p.add_argument("--timing-iters", type=int, default=5,
                   help="iterations timed for the search-vs-single-head ratio, after 2 warm-up ones (0: skip)")
    p.add_argument("--max-iters", type=int, default=None, help="stop training after this many iterations")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from a checkpoint in output_dir (newest without a value) or the given file")
    p.add_argument("--knn", action="store_true", help="also k-NN evaluate the shared base after training")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. hssl.heads=[convnext,vit] data.subset=0.05")
    args = cli.parse_args(p, argv)
    from jhssl import dist
    dist.install_failure_handler()  # under mpirun: a failing rank ends the whole job, naming itself
    if args.timing_iters < 0:
        p.error("--timing-iters must be >= 0")
    if args.max_iters is not None and args.max_iters <= 0:
        p.error("--max-iters must be > 0")
    cfg = load_config(args.config, args.overrides)
    from jhssl.search import check_search_config
    check_search_config(cfg)
    from jhssl.search import run_search
    command = "python run/search.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    run_search(cfg, out_prefix=args.out, timing_iters=args.timing_iters, max_iters=args.max_iters,
               command=command, progress=not args.no_progress, resume=args.resume, knn=args.knn)
    return 0


if __name__ == "__main__":
    from jhssl.dist import exit_process
    exit_process(main())  # under MPI an error code ends the job at once (no MPI_Finalize wait)
