"""The six-head search step over the one-head step as the batch grows (issue 18).

At the benchmark's batch of 8 the six-head search trains 12 projection heads (own projections per base/head
pair, paper Sec. 3.5) whose parameters outnumber the base's several times: AdamW, the teacher's EMA and the
weight traffic of their GEMMs (16-32 rows each at batch 8) cost per parameter, not per image, so the step
ratio sits above the FLOP ratio. This measures both ratios at several batches, interleaved (every round
times each batch's one-head and six-head rows back to back in fresh processes), so a per-parameter cost
shows as a ratio that falls toward the FLOP ratio as the batch grows.

    python benchmarks/search_batch.py                       # quick setting (ViT-T/4 @32), batches 8 32, 3 rounds
    python benchmarks/search_batch.py --full --batches 8 16 # ViT-S/16 @224

Writes benchmarks/results/search_batch[-full].{json,md} (or ``--out STEM``) with the machine facts.
"""
import argparse
import datetime
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from benchmarks import run  # noqa: E402

ROWS = {1: "search-1head jittor", 6: "search-6heads jittor"}


def measure(quick: bool, batches, rounds: int, iters: int, timeout: int = 1800, log=print) -> dict:
    """{batch: {"times": {1: [...], 6: [...]} (median step s per round), "flops": {...}, "params": {...}}}."""
    plan = {label: spec for _, label, spec in run.plan(quick)}
    out = {b: {"times": {1: [], 6: []}, "flops": {}, "params": {}} for b in batches}
    for rnd in range(rounds):
        for b in batches:
            for n, label in ROWS.items():
                res = run.run_worker(dict(plan[label], batch=b, warmup=2, iters=iters), timeout, "PASSIVE")
                if "error" in res:
                    raise RuntimeError(f"{label} at batch {b}: {res['error']}")
                out[b]["times"][n].append(res["median_s"])
                out[b]["flops"][n], out[b]["params"][n] = res["flops"], res["n_params"]
                log(f"round {rnd + 1} batch {b} {label}: {res['median_s']:.3f} s")
    return out


def summarize(measured: dict) -> dict:
    """Per batch: the step ratio of each round (six / one, same round), its mean and spread, the FLOP ratio."""
    rows = {}
    for b, m in measured.items():
        per_round = [six / one for one, six in zip(m["times"][1], m["times"][6])]
        rows[b] = {"step_ratio_per_round": per_round, "step_ratio_mean": float(np.mean(per_round)),
                   "step_ratio_std": float(np.std(per_round, ddof=1)) if len(per_round) > 1 else None,
                   "flop_ratio": m["flops"][6] / m["flops"][1],
                   "one_head_step_s": float(np.median(m["times"][1])), "six_head_step_s": float(np.median(m["times"][6])),
                   "trained_params": m["params"]}
        rows[b]["step_over_flop_ratio"] = rows[b]["step_ratio_mean"] / rows[b]["flop_ratio"]
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="ViT-S/16 @224 (default: the quick setting, ViT-T/4 @32)")
    p.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=3, help="timed steps per row and round (after 2 warm-up steps)")
    p.add_argument("--out", default=None, metavar="STEM",
                   help="write STEM.json and STEM.md (default: benchmarks/results/search_batch[-full])")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.iters < 1 or any(b < 1 for b in args.batches):
        p.error("--rounds, --iters and every batch must be at least 1")
    from benchmarks.common import machine_info, machine_line, write_results
    machine = machine_info()
    load_start = os.getloadavg()
    rows = summarize(measure(not args.full, args.batches, args.rounds, args.iters))
    command = "python benchmarks/search_batch.py" + (" --full" if args.full else "") + \
        f" --batches {' '.join(map(str, args.batches))} --rounds {args.rounds} --iters {args.iters}" + \
        (f" --out {os.path.relpath(args.out, ROOT)}" if args.out else "")
    rec = {"date": datetime.datetime.utcnow().isoformat(timespec="seconds"), "command": command,
           "machine": machine, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
           "rows": {str(b): r for b, r in rows.items()}}
    ssl = next(s for sec, _, s in run.plan(not args.full) if sec == "ssl")
    md = ["# Six-head search / one-head step vs batch (issue 18)", "", f"Command: `{command}`. {rec['date']} UTC.", "",
          f"Machine: {machine_line(machine)}. Load average at start {load_start[0]:.2f}, at end "
          f"{rec['loadavg_end'][0]:.2f}.", "",
          f"Setting: {ssl['arch']}/{ssl['patch']} @{ssl['global']} + {ssl['n_local']} local {ssl['local']} px, the "
          "search rows of benchmarks/run.py (one-layer candidates, Eq. 6's image-level terms); FLOPs counted on "
          "the Jittor step (benchmarks/jittor_flops.py). Step ratio: six-head median / one-head median of the same "
          "round, mean ± std over rounds.", "",
          "| batch | one head s | six heads s | step ratio | per round | FLOP ratio | step / FLOP ratio | trained params one / six (M) |",
          "|---|---|---|---|---|---|---|---|"]
    for b, r in rows.items():
        spread = f" ± {r['step_ratio_std']:.3f}" if r["step_ratio_std"] is not None else ""
        per_round = ", ".join(f"{x:.3f}" for x in r["step_ratio_per_round"])
        md.append(f"| {b} | {r['one_head_step_s']:.3f} | {r['six_head_step_s']:.3f} | {r['step_ratio_mean']:.3f}{spread} "
                  f"| {per_round} "
                  f"| {r['flop_ratio']:.3f} | {r['step_over_flop_ratio']:.3f} | "
                  f"{r['trained_params'][1] / 1e6:.1f} / {r['trained_params'][6] / 1e6:.1f} |")
    stem = args.out or os.path.join(ROOT, "benchmarks", "results", "search_batch" + ("-full" if args.full else ""))
    write_results(stem, rec, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
