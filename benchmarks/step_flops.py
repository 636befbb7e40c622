"""FLOPs of every training step the benchmark times, counted on the Jittor step itself
(``benchmarks/jittor_flops.py``) beside torch's FlopCounterMode on the torch twins where a twin exists.

Counting needs no quiet machine (the counts do not depend on the load), so this runs apart from
``benchmarks/run.py``: it gives the six-head search its FLOP ratio (the search has no torch twin) and checks
the Jittor count against the twins' on the rows that have one. The step-over-FLOP ratio of the search is
computed with the step times of the newest committed benchmark report of each setting (named in the output).

    python benchmarks/step_flops.py            # both settings, ~5 min on 2 cores
    python benchmarks/step_flops.py --quick    # the quick setting only

Writes benchmarks/results/step_flops.{json,md}.
"""
import argparse
import datetime
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import run  # noqa: E402

ROWS = ("baseline", "hssl-convnext", "search-1head", "search-6heads", "mocov3 baseline", "mocov3 hssl-convnext",
        "mae baseline", "mae hssl-convnext")


def count(quick: bool) -> dict:
    """Row -> {"jittor": GFLOP, "torch": GFLOP or None} for one setting (one untimed step each)."""
    plan = {label: spec for section, label, spec in run.plan(quick) if section == "ssl"}
    out = {}
    for row in ROWS:
        jittor = run.worker_ssl(dict(plan[row + " jittor"], warmup=1, iters=1))
        twin = plan.get(row + " torch")
        torch_flops = run.worker_ssl(dict(twin, warmup=1, iters=1))["flops"] if twin else None
        out[row] = {"jittor": jittor["flops"] / 1e9, "torch": torch_flops / 1e9 if torch_flops else None}
        print(f"{'quick' if quick else 'full'} {row}: {out[row]}", flush=True)
    return out


def newest_report(quick: bool):
    """The newest committed benchmarks/run.py report of a setting that timed both search rows:
    (its path, six-head / one-head step time)."""
    found = []
    for path in glob.glob(os.path.join(ROOT, "benchmarks", "results", "*.json")):
        with open(path) as f:
            saved = json.load(f)
        if not isinstance(saved, dict) or saved.get("meta", {}).get("quick") is not quick:
            continue
        rows = {r["label"]: r["result"] for r in saved.get("results", [])}
        times = [rows.get(f"search-{n} jittor", {}).get("median_s") for n in ("1head", "6heads")]
        if all(times):
            found.append((saved["meta"].get("date", ""), os.path.relpath(path, ROOT), times[1] / times[0]))
    return max(found)[1:] if found else (None, None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the quick setting only")
    args = p.parse_args(argv)
    from benchmarks.common import machine_info, machine_line
    from jhssl.fileio import atomic_write_text
    settings = [True] if args.quick else [True, False]
    rec = {"date": datetime.datetime.utcnow().isoformat(timespec="seconds"), "machine": machine_info(),
           "command": "python benchmarks/step_flops.py" + (" --quick" if args.quick else ""), "settings": {}}
    md = ["# Training-step FLOPs: counted on the Jittor step and on the torch twins", "",
          f"Command: `{rec['command']}`. Machine (counts do not depend on it): {machine_line(rec['machine'])}.", "",
          "FlopCounterMode's convention on both sides: matrix products and convolutions, 2 FLOPs per multiply-add, "
          "forward and backward (benchmarks/jittor_flops.py). Settings as benchmarks/run.py's training-step rows.", ""]
    for quick in settings:
        rows = count(quick)
        report, step_ratio = newest_report(quick)
        flop_ratio = rows["search-6heads"]["jittor"] / rows["search-1head"]["jittor"]
        rec["settings"]["quick" if quick else "full"] = {"rows": rows, "search_flop_ratio": flop_ratio,
                                                        "search_step_ratio": step_ratio, "step_report": report}
        ssl = next(s for sec, _, s in run.plan(quick) if sec == "ssl")
        md += [f"## {'Quick' if quick else 'Full'} setting: {ssl['arch']}/{ssl['patch']} @{ssl['global']}, "
               f"batch {ssl['batch']}", "", "| step | Jittor-counted GFLOP | torch twin GFLOP | Jittor / twin |",
               "|---|---|---|---|"]
        for row, v in rows.items():
            twin = f"{v['torch']:.3f}" if v["torch"] else "no twin"
            agree = f"{v['jittor'] / v['torch']:.5f}" if v["torch"] else ""
            md.append(f"| {row} | {v['jittor']:.3f} | {twin} | {agree} |")
        md += ["", f"Six-head search / one-head step FLOPs: **{flop_ratio:.3f}**"
               + (" (above the 1.4 goal: the goal asks for fewer FLOPs than the search needs here)."
                  if flop_ratio > 1.4 else " (below the 1.4 goal).")]
        if step_ratio:
            md.append(f"Step ratio in `{report}`: {step_ratio:.3f}, so the search step runs "
                      f"{step_ratio / flop_ratio:.3f}x over its FLOP ratio.")
        md.append("")
    base = os.path.join(ROOT, "benchmarks", "results", "step_flops")
    atomic_write_text(base + ".json", json.dumps(rec, indent=1))
    atomic_write_text(base + ".md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
