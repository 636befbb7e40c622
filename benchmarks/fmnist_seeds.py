"""The paper's central claims on Fashion-MNIST, several seeds: iBOT vs iBOT + HSSL with each head,
and the gain against the head search's discrepancy D (paper Fig. 3).

    python benchmarks/fmnist_seeds.py                                   # all arms, seeds 0 1 2
    python benchmarks/fmnist_seeds.py --heads convnext --seeds 0 1 2   # claim (b) only
    python benchmarks/fmnist_seeds.py --resume --report-only           # tables from finished runs

Arms: the baseline (``--baseline-config``, i.e. ``hssl: null``) and one HSSL run per head
(``--config`` + ``hssl.heads=[<head>]``), each for every seed, with identical budgets. Every run
ends with the weighted k-NN (k=20, T=0.07) of the teacher's base CLS and logs the same k-NN of
the untrained network (``knn_untrained``, measured before the first step; the baseline and HSSL runs
of one seed start from the same base weights). Runs go one at a time, the baseline and ConvNext
arms first. ``--resume`` reuses every run whose output directory already holds its final k-NN,
so the study can be built up in several invocations; the report names the runs that exist.

D per head comes from head-search results (``--search-json``, written by ``run/search.py``; the mean
over several, e.g. search seeds).
Writes ``<out>/<name>.json``, ``.md`` and ``.png`` (k-NN per seed and arm; gain vs D).
"""
import argparse
import datetime
import itertools
import json
import math
import os
import shlex
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jhssl  # noqa: E402,F401
from jhssl.fileio import atomic_write_text  # noqa: E402
from benchmarks.common import format_mean_std, mean_std, training_machine  # noqa: E402

HEADS = ("convnext", "resnet", "resmlp", "poolformer", "vit", "swin")


def run_dir(work_dir, arm, seed):
    return os.path.join(work_dir, f"{arm}_seed{seed}")


def finished_result(output_dir, epochs):
    """The run's final k-NN / untrained k-NN / seconds / first and last loss from its log.jsonl, or None if
    unfinished."""
    from jhssl.logging import read_jsonl
    recs = read_jsonl(os.path.join(output_dir, "log.jsonl"))
    final = [r for r in recs if r.get("type") == "knn" and r.get("epoch") == epochs]
    untrained = [r for r in recs if r.get("type") == "knn_untrained"]
    if not final:
        return None
    steps = [r for r in recs if r.get("type") == "step"]
    times = [r["time"] for r in recs if "time" in r]
    last = steps[-1] if steps else {}
    return {"knn_top1": final[-1]["top1_k20"], "knn_top5": final[-1]["top5_k20"],
            "untrained_top1": untrained[-1]["top1_k20"] if untrained else None,
            "iterations": final[-1]["iteration"],
            "logged_s": round(max(times) - min(times), 1) if times else None,
            "final_monitors": {k: last.get(k) for k in ("teacher_entropy", "teacher_kl_uniform", "agreement")},
            "final_cls_base": last.get("cls_base"),
            "loss_first": steps[0].get("loss") if steps else None, "loss_last": last.get("loss")}


def spearman(x, y):
    """Spearman's rank correlation (average ranks for ties) and its exact two-sided permutation p-value."""
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(1, len(v) + 1)
        for val in np.unique(v):  # ties: average rank
            idx = v == val
            r[idx] = r[idx].mean()
        return r

    rx, ry = ranks(x), ranks(y)

    def rho(a, b):
        a, b = a - a.mean(), b - b.mean()
        den = math.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / den) if den else float("nan")

    r = rho(rx, ry)
    perms = [rho(rx, ry[list(p)]) for p in itertools.permutations(range(len(ry)))] if len(ry) <= 8 else []
    p = float(np.mean([abs(q) >= abs(r) - 1e-12 for q in perms])) if perms else None
    return r, p


def load_discrepancy(paths):
    """D per head (Eq. 8) from one or more run/search.py results: the mean over the searches given
    (e.g. search seeds), with each search's own D kept. None if none of the files exists."""
    found = []
    for path in paths or []:
        if os.path.isfile(path):
            with open(path) as f:
                d = json.load(f)
            if d.get("discrepancy"):
                found.append({"D": d["discrepancy"], "command": d.get("command"), "path": os.path.relpath(path, ROOT)})
    if not found:
        return None
    heads = [h for h in found[0]["D"] if all(h in r["D"] for r in found)]
    return {"D": {h: float(np.mean([r["D"][h] for r in found])) for h in heads}, "searches": found}


def report(args, runs, command, cfg):
    """Aggregate, write JSON/MD/PNG. ``runs``: {(arm, seed): result or None}."""
    arms = ["baseline"] + list(args.heads)
    table = {}
    for arm in arms:
        per_seed = {s: runs.get((arm, s)) for s in args.seeds}
        done = {s: r for s, r in per_seed.items() if r}
        diffs = {}
        if arm != "baseline":
            for s, r in done.items():
                b = runs.get(("baseline", s))
                if b:
                    diffs[s] = r["knn_top1"] - b["knn_top1"]
        table[arm] = {"per_seed": {str(s): r for s, r in done.items()},
                      "top1_mean_std": mean_std([r["knn_top1"] for r in done.values()]),
                      "untrained_mean_std": mean_std([r["untrained_top1"] for r in done.values()]),
                      "paired_diff_vs_baseline": {str(s): d for s, d in diffs.items()},
                      "paired_diff_mean_std": mean_std(list(diffs.values())) if diffs else (None, None)}
    disc = load_discrepancy(args.search_json)
    corr = None
    if disc and disc["D"]:
        pts = [(h, disc["D"][h], table[h]["paired_diff_mean_std"][0]) for h in args.heads
               if h in disc["D"] and table[h]["paired_diff_mean_std"][0] is not None]
        if len(pts) >= 3:
            r, p = spearman([d for _, d, _ in pts], [g for _, _, g in pts])
            corr = {"heads": [h for h, _, _ in pts], "spearman_rho": r, "permutation_p": p}
    out = {"command": command, "config": os.path.relpath(args.config, ROOT),
           "baseline_config": os.path.relpath(args.baseline_config, ROOT), "seeds": args.seeds,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": training_machine(), "budget": {"epochs": cfg.epochs, "batch_size": cfg.batch_size,
                                    "data.subset": cfg.data.subset, "eval.train_subset": cfg.eval.train_subset,
                                    "eval.val_subset": cfg.eval.val_subset},
           "runs_missing": [f"{a}:{s}" for a in arms for s in args.seeds if not runs.get((a, s))],
           "arms": table, "discrepancy": disc, "gain_vs_D": corr}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name)
    atomic_write_text(stem + ".json", json.dumps(out, indent=1) + "\n")

    from jhssl.methods.registry import method_spec
    name = {"ibot": "iBOT", "dino": "DINO", "mocov3": "MoCo v3", "mae": "MAE"}.get(cfg.method, cfg.method)
    evaluated = "teacher" if (method_spec(cfg.method).ema_teacher and cfg.eval.which == "teacher") else "student"
    md = [f"# Fashion-MNIST seed study: {name} baseline vs {name} + HSSL per auxiliary head", "",
          f"Command: `{command}`", "",
          f"Configs: `{out['config']}` (HSSL, `hssl.heads` set per arm) and `{out['baseline_config']}` "
          f"(`hssl: null`). {out['date']}.", "",
          f"Machine: {out['machine']['cpu']} ({out['machine']['cores']} CPUs), Jittor {out['machine']['jittor']}, "
          f"load average at the end {out['machine']['loadavg'][0]}.", "",
          f"Budget per run: {cfg.epochs} epochs, batch {cfg.batch_size}, data.subset {cfg.data.subset}; "
          f"k-NN (k=20, T={cfg.eval.knn_t}) of the {evaluated} base CLS, {cfg.eval.train_subset:g} of the train split "
          f"vs {cfg.eval.val_subset:g} of the test split (subsets drawn by seed: the arms of one seed share them). "
          "'untrained' is the same k-NN of the network before its first step.", ""]
    if out["runs_missing"]:
        md += [f"**Partial:** runs not (yet) done: {', '.join(out['runs_missing'])}.", ""]
    md += ["| arm | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± std | untrained | "
           "paired diff vs baseline (per seed) | mean diff ± std |",
           "|---|" + "---|" * len(args.seeds) + "---|---|---|---|"]
    for arm in arms:
        t = table[arm]
        cells = [f"{t['per_seed'][str(s)]['knn_top1']:.2f}" if str(s) in t["per_seed"] else "–" for s in args.seeds]
        diffs = ", ".join(f"{t['paired_diff_vs_baseline'][str(s)]:+.2f}" if str(s) in t["paired_diff_vs_baseline"]
                          else "–" for s in args.seeds) if arm != "baseline" else ""
        md.append(f"| {arm} | " + " | ".join(cells) + f" | {format_mean_std(*t['top1_mean_std'])} | "
                  f"{format_mean_std(*t['untrained_mean_std'])} | {diffs} | "
                  f"{format_mean_std(*t['paired_diff_mean_std'], sign='+') if arm != 'baseline' else ''} |")
    md += ["", "Wall time per run (training + both k-NN evaluations, from log.jsonl): " + ", ".join(
        f"{a}:{s} {runs[(a, s)]['logged_s']} s" for a in arms for s in args.seeds if runs.get((a, s))) + ".", ""]
    if disc:
        searches = disc["searches"]
        md += [f"D per head{' (mean over the searches)' if len(searches) > 1 else ''} from: "
               + "; ".join(f"`{r['path']}` (`{r['command']}`)" for r in searches) + ".", ""]
        per = [f"D search {i + 1}" for i in range(len(searches))] if len(searches) > 1 else []
        md += ["| head | " + "".join(f"{c} | " for c in per) + "D | mean gain (points) |",
               "|---|" + "---|" * len(per) + "---|---|"]
        for h in args.heads:
            g = table[h]["paired_diff_mean_std"][0]
            cells = "".join(f"{r['D'].get(h, float('nan')):.3f} | " for r in searches) if per else ""
            md.append(f"| {h} | {cells}{disc['D'].get(h, float('nan')):.3f} | {'–' if g is None else f'{g:+.2f}'} |")
        md.append("")
        if corr:
            md.append(f"Spearman rank correlation of gain vs D over {len(corr['heads'])} heads: "
                      f"rho = {corr['spearman_rho']:+.2f} (exact permutation p = {corr['permutation_p']:.2f}).")
        else:
            md.append("Spearman correlation: fewer than 3 heads with results.")
        md.append("")
    atomic_write_text(stem + ".md", "\n".join(md))
    _plot(stem + ".png", args, table, disc)
    return out


def _plot(path, args, table, disc):
    from jhssl.plots import plot_panels_png
    per_seed = {}
    for arm, t in table.items():
        pts = [(int(s), r["knn_top1"]) for s, r in t["per_seed"].items()]
        if pts:
            per_seed[arm] = pts
    untrained = [r["untrained_top1"] for t in table.values() for r in t["per_seed"].values()
                 if r.get("untrained_top1") is not None]
    if untrained and per_seed:
        per_seed["untrained (mean)"] = [(min(args.seeds), float(np.mean(untrained))),
                                        (max(args.seeds), float(np.mean(untrained)))]
    panels = [("k-NN top-1 % per seed", per_seed)]
    if disc and disc["D"]:
        scatter = {h: [(disc["D"][h], table[h]["paired_diff_mean_std"][0])] for h in args.heads
                   if h in disc["D"] and table[h]["paired_diff_mean_std"][0] is not None}
        if scatter:
            panels.append(("mean gain vs baseline (points) against search D", scatter))
    if any(panels[0][1].values()):
        plot_panels_png(path, panels, xlabel="seed | D (search discrepancy)", panel_size=(520, 380))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "fmnist_ibot_hssl_vit_tiny.yaml"))
    p.add_argument("--baseline-config", default=os.path.join(ROOT, "configs", "fmnist_ibot_hssl_vit_tiny_baseline.yaml"))
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--search-json", nargs="+",
                   default=[os.path.join(ROOT, "benchmarks", "results", "search_fmnist_seeds.json")],
                   help="run/search.py results holding D per head (several: D is their mean)")
    p.add_argument("--work-dir", default=os.path.join(ROOT, "output", "fmnist_seeds"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--name", default="fmnist_seeds")
    p.add_argument("--resume", action="store_true", help="reuse runs whose output dir holds the final k-NN")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the finished runs")
    p.add_argument("--max-runs", type=int, default=None, help="train at most this many new runs, then report")
    p.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = p.parse_args(argv)

    from jhssl.config import load_config
    from jhssl.train import train

    cfg0 = load_config(args.baseline_config, list(args.overrides))
    # claim (b) first: baseline and ConvNext for every seed, then the other heads
    first = [h for h in args.heads if h == "convnext"]
    order = [(a, s) for s in args.seeds for a in ["baseline"] + first]
    order += [(h, s) for h in args.heads if h not in first for s in args.seeds]
    runs, trained = {}, 0
    for arm, seed in order:
        out_dir = run_dir(args.work_dir, arm, seed)
        res = finished_result(out_dir, cfg0.epochs) if (args.resume or args.report_only) else None
        if res is None and not args.report_only and (args.max_runs is None or trained < args.max_runs):
            conf = args.baseline_config if arm == "baseline" else args.config
            over = list(args.overrides) + [f"seed={seed}", f"output_dir={out_dir}"]
            if arm != "baseline":
                over.append(f"hssl.heads=[{arm}]")
            cfg = load_config(conf, over)
            t0 = time.time()
            train(cfg, resume=None, progress=False)
            trained += 1
            res = finished_result(out_dir, cfg.epochs)
            print(f"{arm} seed {seed}: k-NN top-1 {res['knn_top1']:.2f}% (untrained {res['untrained_top1']}), "
                  f"{time.time() - t0:.0f} s", flush=True)
        runs[(arm, seed)] = res
    argv_txt = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = report(args, runs, ("python benchmarks/fmnist_seeds.py " + argv_txt).strip(), cfg0)
    print(open(os.path.join(args.out, args.name + ".md")).read())
    return 0 if not out["runs_missing"] else 3


if __name__ == "__main__":
    sys.exit(main())
