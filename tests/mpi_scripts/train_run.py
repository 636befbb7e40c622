"""Run the real trainer (``jhssl.train.train``) on the tiny test config, alone or under mpirun.

    python tests/mpi_scripts/train_run.py --out DIR --data ROOT --max-iters 3 [key=value ...]
    mpirun -np 2 python tests/mpi_scripts/train_run.py --out DIR --data ROOT --max-iters 3 [key=value ...]

Afterwards every rank writes ``DIR/state_rank<r>.npz`` with its in-memory student, teacher and
loss centers (to compare ranks with each other and with a single-process run), and
``DIR/pid_rank<r>`` at start (the kill test signals one rank). Test-only fault injection:
``--raise-at K --raise-rank R`` raises inside the K-th loss computation (1-based) on rank R;
``--step-sleep S`` sleeps S seconds per iteration (gives a kill test time to act).
``--resume`` continues from the newest checkpoint in DIR (default: start afresh).
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))                    # tests/ (for _train_helpers)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))   # repo root

import jhssl  # noqa: E402,F401
from jhssl import dist  # noqa: E402


class InjectedFailure(RuntimeError):
    pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--max-iters", type=int, default=3)
    p.add_argument("--raise-at", type=int, default=0)
    p.add_argument("--raise-rank", type=int, default=1)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--method", default="ibot", help="the tiny config's method (ibot, dino, mocov3)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    dist.install_failure_handler()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"pid_rank{dist.rank()}"), "w") as f:
        f.write(str(os.getpid()))

    import numpy as np
    import jhssl.methods
    from jhssl.checkpoint import to_numpy_state
    from jhssl.train import train
    from _train_helpers import tiny_config

    cfg = tiny_config(args.out, args.data, extra=args.overrides, method=args.method)

    # Keep a handle on the method the trainer builds (to dump each rank's in-memory state) and
    # wrap its loss for the fault-injection options.
    captured = {}
    real_build = jhssl.methods.build_model

    def build_model(c):
        method = real_build(c)
        captured["method"] = method
        real_loss = method.compute_loss
        calls = [0]

        def compute_loss(*a, **k):
            calls[0] += 1
            if args.raise_at and calls[0] == args.raise_at and dist.rank() == args.raise_rank:
                with open(os.path.join(args.out, "raised_at"), "w") as f:
                    f.write(repr(time.time()))
                raise InjectedFailure(f"injected failure in iteration {calls[0]}")
            if args.step_sleep:
                time.sleep(args.step_sleep)
            return real_loss(*a, **k)
        method.compute_loss = compute_loss
        return method

    jhssl.methods.build_model = build_model
    result = train(cfg, resume="auto" if args.resume else None, max_iters=args.max_iters, log=print, progress=False)

    m = captured["method"]
    state = {}
    for prefix, mod in (("student.", m.student), ("teacher.", m.teacher), ("loss.", m.loss)):
        for k, v in (to_numpy_state(mod) if mod is not None else {}).items():
            state[prefix + k] = v
    np.savez(os.path.join(args.out, f"state_rank{dist.rank()}.npz"), **state)
    print(f"rank {dist.rank()} done: iteration {result['iteration']}, checkpoint {result['checkpoint']}", flush=True)


if __name__ == "__main__":
    main()
