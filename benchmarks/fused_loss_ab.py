"""The DINO / iBOT loss with its fused CPU kernels against the same loss on Jittor's plain ops, in one
training step, interleaved in one process.

    python benchmarks/fused_loss_ab.py --targets hssl-quick,baseline-quick,demo --rounds 5

The loss's cross-entropy (``models.layers.cross_entropy``) and teacher softmax (``softmax_last``) are
built with the fast kernels off ("plain": Jittor's log-softmax, product, sum and softmax, and their
gradients) or on ("fused"); everything else in the step is the same graph. Each round times a few
steps of each, alternating, in the same process (``benchmarks/op_profile.py``'s step builders), so
host drift cancels in the per-round ratio. Writes ``<out>-<machine>.json`` and ``.md``.
"""
import argparse
import datetime
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.common import format_mean_std, machine_info, machine_line, mean_std, typed_command, write_results  # noqa: E402
from benchmarks.op_profile import TARGETS  # noqa: E402

LOSS_TARGETS = [name for name, t in TARGETS.items() if t["kind"] in ("ssl", "demo")]


def _built_with_fast_kernels(fn, enabled):
    """``fn`` whose graph is built with the fast kernels on or off (the switch is read at build time)."""
    from jhssl import perf

    def wrapped(*args):
        with perf.fast_kernels(enabled):
            return fn(*args)
    return wrapped


def measure(name, rounds, iters):
    import jhssl  # noqa: F401  (bootstrap before jittor)
    import jittor as jt
    import jhssl.methods.losses as losses
    from benchmarks.op_profile import _jittor_demo_step, _jittor_ssl_step
    from benchmarks.run import _time_steps
    spec = TARGETS[name]
    step = (_jittor_demo_step if spec["kind"] == "demo" else _jittor_ssl_step)(spec, jt)[0]
    originals = losses.soft_cross_entropy, losses._teacher_probs
    variants = {v: tuple(_built_with_fast_kernels(f, v == "fused") for f in originals)
                for v in ("plain", "fused")}

    def timed(variant, n):
        losses.soft_cross_entropy, losses._teacher_probs = variants[variant]
        return _time_steps(step, 0, n, lambda: jt.sync_all(True))["median_s"]

    try:
        for v in variants:  # compile both graphs
            timed(v, 2)
        per_round = []
        for _ in range(rounds):
            plain, fused = timed("plain", iters), timed("fused", iters)
            per_round.append({"plain_s": plain, "fused_s": fused, "speedup": plain / fused})
            print(f"{name}: plain {plain:.3f} s, fused {fused:.3f} s, {plain / fused:.3f}x", flush=True)
    finally:
        losses.soft_cross_entropy, losses._teacher_probs = originals
    return per_round


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default="hssl-quick,baseline-quick,demo", help=f"from {', '.join(LOSS_TARGETS)}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3, help="steps per variant and round (median)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "fused_loss_ab"),
                    help="results stem; the machine's name is appended")
    args = ap.parse_args(argv)
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not names or any(t not in LOSS_TARGETS for t in names):
        raise SystemExit(f"fused_loss_ab: targets must be among {', '.join(LOSS_TARGETS)}, got {args.targets!r}")
    if args.rounds < 2 or args.iters < 1:
        raise SystemExit("fused_loss_ab: --rounds must be at least 2 (a spread) and --iters at least 1")
    machine = machine_info()
    meta = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), "machine": machine,
            "command": typed_command("benchmarks/fused_loss_ab.py", argv),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    results = {name: measure(name, args.rounds, args.iters) for name in names}  # one process: one target's
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]                 # graphs stay small enough
    md = ["# The DINO / iBOT loss: fused CPU kernels vs Jittor's plain ops, in one training step", "",
          f"Command: `{meta['command']}`", "", f"Machine: {machine_line(machine)}. {meta['date']} UTC; load average "
          f"{meta['loadavg_start']} -> {meta['loadavg_end']}.", "",
          f"Per round, {args.iters} steps of each variant, alternating in one process; speed-up = plain / fused "
          "step time, paired per round, mean ± std.", "",
          "| step | plain s (mean) | fused s (mean) | speed-up | per round |", "|---|---:|---:|---:|---|"]
    for name, rows in results.items():
        sp = [r["speedup"] for r in rows]
        md.append(f"| {TARGETS[name]['label']} | {statistics.mean(r['plain_s'] for r in rows):.3f} | "
                  f"{statistics.mean(r['fused_s'] for r in rows):.3f} | {format_mean_std(*mean_std(sp), digits=3)} | "
                  f"{', '.join(f'{x:.3f}' for x in sp)} |")
    stem = f"{args.out}-{machine['slug']}"
    write_results(stem, {"meta": meta, "results": results}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
