"""Fashion-MNIST evaluation table (issue 14): k-NN, linear probe, fine-tuning and 10 % semi-supervised
fine-tuning / linear probe, side by side, for baseline and HSSL checkpoints over several seeds.

The checkpoints come from a seed study (benchmarks/fmnist_seeds.py: one baseline and one HSSL
checkpoint per seed, same seed and budget; `--untrained` adds the network before its first step,
`run/train.py --max-iters 0`). Results: fmnist_eval_table_{ibot,mocov3,mae}.md.

    python benchmarks/fmnist_eval_table.py \\
        --baseline output/fmnist_base_s0/checkpoint_X.pkl output/fmnist_base_s1/... output/fmnist_base_s2/... \\
        --hssl     output/fmnist_hssl_s0/checkpoint_X.pkl output/fmnist_hssl_s1/... output/fmnist_hssl_s2/...
    python benchmarks/fmnist_eval_table.py --dry-run --baseline ... --hssl ...   # print the commands only

The i-th checkpoint of each list is paired with seed ``--seeds[i]`` (default 0 1 2): evaluation seeds
(linear-head init, fine-tuning order/augmentation, label subset) equal the pretraining seed.
Protocols (configs/eval/): linear_fmnist_cached.yaml (cached-features mode: stated in the results),
finetune_fmnist.yaml, finetune_fmnist_semisup_10pct.yaml, and the linear probe with label_fraction=0.1.
Writes benchmarks/results/<--name>.{json,md}: mean +- std over seeds and the paired
HSSL - baseline differences, with the commands and the machine.
"""
import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

PROTOCOLS = {
    # name: (command template, result file, key path to top-1)
    "knn": ("run/eval_knn.py --checkpoint {ckpt} --output {out}/knn.json", "knn.json", ("results", "20", "top1")),
    "linear": ("run/eval_linear.py --checkpoint {ckpt} --config configs/eval/linear_fmnist_cached.yaml "
               "seed={seed} output_dir={out}/linear", "linear/linear_results.json", ("best", "top1")),
    "finetune": ("run/finetune.py --checkpoint {ckpt} --config configs/eval/finetune_fmnist.yaml --no-progress "
                 "seed={seed} output_dir={out}/finetune", "finetune/finetune_results.json", ("top1",)),
    "linear_10pct": ("run/eval_linear.py --checkpoint {ckpt} --config configs/eval/linear_fmnist_cached.yaml "
                     "label_fraction=0.1 label_seed={seed} seed={seed} output_dir={out}/linear_10pct",
                     "linear_10pct/linear_results.json", ("best", "top1")),
    "finetune_10pct": ("run/finetune.py --checkpoint {ckpt} --config configs/eval/finetune_fmnist_semisup_10pct.yaml "
                       "--no-progress label_seed={seed} seed={seed} output_dir={out}/finetune_10pct",
                       "finetune_10pct/finetune_results.json", ("top1",)),
}


def _get(d, path):
    for k in path:
        d = d[k]
    return float(d)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", nargs="+", required=True)
    p.add_argument("--hssl", nargs="+", required=True)
    p.add_argument("--untrained", nargs="+", default=None,
                   help="checkpoints of the untrained network per seed (run/train.py --max-iters 0): the level "
                        "both arms are measured against")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    p.add_argument("--work-dir", default="output/fmnist_eval_table")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--name", default="fmnist_eval_table", help="results file stem in benchmarks/results/")
    p.add_argument("--title", default="", help="what the checkpoints are (method, recipe), for the table heading")
    p.add_argument("--set", action="append", default=[], metavar="PROTOCOL:KEY=VALUE",
                   help="a config override for one protocol (repeatable), e.g. finetune:epochs=2; "
                        "the budgets used are written into the results")
    args = p.parse_args(argv)
    extra = {}
    for item in args.set:
        proto, sep, kv = item.partition(":")
        if not sep or proto not in PROTOCOLS or "=" not in kv:
            p.error(f"--set {item!r}: expected PROTOCOL:KEY=VALUE with PROTOCOL one of {', '.join(PROTOCOLS)}")
        extra.setdefault(proto, []).append(kv)
    if not (len(args.baseline) == len(args.hssl) == len(args.seeds)) or \
            (args.untrained and len(args.untrained) != len(args.seeds)):
        p.error("--baseline, --hssl, --untrained and --seeds need one entry per seed")
    arms = [("baseline", args.baseline), ("hssl", args.hssl)]
    arms += [("untrained", args.untrained)] if args.untrained else []
    from jhssl.fileio import atomic_write_text
    runs, commands, seconds = {}, [], {}
    for name, ckpts in arms:
        for seed, ckpt in zip(args.seeds, ckpts):
            out = os.path.join(args.work_dir, f"{name}_s{seed}")
            for proto in args.protocols:
                tmpl, result, key = PROTOCOLS[proto]
                cmd = "python " + tmpl.format(ckpt=shlex.quote(ckpt), out=out, seed=seed)
                cmd += "".join(" " + shlex.quote(kv) for kv in extra.get(proto, []))
                commands.append(cmd)  # recorded with "python": the interpreter's path is this machine's
                if args.dry_run:
                    print(cmd)
                    continue
                path = os.path.join(out, result)
                timing = os.path.join(out, f"{proto}.seconds")
                if not os.path.isfile(path):  # finished runs are not repeated
                    os.makedirs(out, exist_ok=True)
                    t0 = time.time()
                    subprocess.run([sys.executable] + shlex.split(cmd)[1:], cwd=ROOT, check=True)
                    atomic_write_text(timing, f"{time.time() - t0:.1f}\n")
                runs.setdefault((name, proto), []).append(_get(json.load(open(path)), key))
                if os.path.isfile(timing):
                    seconds.setdefault(proto, []).append(float(open(timing).read()))
    if args.dry_run:
        return 0
    from benchmarks.common import format_mean_std, machine_info, machine_line, mean_std

    def stats(v):
        mean, std = mean_std(v)
        return {"mean": mean, "std": std}

    table = {}
    for proto in args.protocols:
        t = table[proto] = {name: runs[(name, proto)] for name, _ in arms}
        for name, _ in arms:
            t[name + "_stats"] = stats(t[name])
        pairs = [("hssl", "baseline")] + ([("baseline", "untrained"), ("hssl", "untrained")] if args.untrained else [])
        for a, b in pairs:  # paired per seed
            t[f"{a}_minus_{b}"] = stats(np.array(t[a]) - np.array(t[b]))
    machine = machine_info()
    rec = {"date": datetime.datetime.utcnow().isoformat(timespec="seconds"), "seeds": args.seeds,
           "machine": machine, "commands": commands, "table": table, "overrides": extra,
           "seconds_per_run": seconds}
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    base = os.path.join(ROOT, "benchmarks", "results", args.name)
    atomic_write_text(base + ".json", json.dumps(rec, indent=1))
    lines = ["# Fashion-MNIST: k-NN / linear / fine-tuning / 10 % semi-supervised (top-1 %, mean ± std over seeds "
             f"{args.seeds})", "", *([args.title, ""] if args.title else []), f"Machine: {machine_line(machine)}", "",
             "| protocol | " + " | ".join(f"{name} (per seed)" for name, _ in arms) + " | "
             + " | ".join(name for name, _ in arms) + " | HSSL − baseline (paired)"
             + (" | baseline − untrained | HSSL − untrained" if args.untrained else "") + " |",
             "|---|" + "---|" * (2 * len(arms) + (3 if args.untrained else 1))]

    def fmt(st, sign=""):
        return format_mean_std(st["mean"], st["std"], sign=sign)

    for proto, t in table.items():
        cells = [", ".join(f"{x:.2f}" for x in t[name]) for name, _ in arms]
        cells += [fmt(t[name + "_stats"]) for name, _ in arms]
        cells += [fmt(t["hssl_minus_baseline"], "+")]
        if args.untrained:
            cells += [fmt(t["baseline_minus_untrained"], "+"), fmt(t["hssl_minus_untrained"], "+")]
        lines.append(f"| {proto} | " + " | ".join(cells) + " |")
    if extra:
        lines += ["", "Budgets changed from the protocol configs: " + "; ".join(
            f"{proto}: {' '.join(kvs)}" for proto, kvs in extra.items())]
    if seconds:
        lines += ["", "Wall seconds per evaluation run (mean): " + ", ".join(
            f"{proto} {np.mean(v):.0f}" for proto, v in seconds.items())]
    lines += ["", "Linear probes ran in cached-features mode (see each linear_results.json).", "", "Commands:", "",
              "```", *commands, "```"]
    atomic_write_text(base + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
