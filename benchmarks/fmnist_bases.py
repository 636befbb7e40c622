"""Every base model x {baseline, HSSL} on Fashion-MNIST, one seed, the learning recipe (issue 15).

    python benchmarks/fmnist_bases.py --resume                                # the recipe's budget
    python benchmarks/fmnist_bases.py --bases resnet50-dino data.subset=0.01 epochs=1   # smaller

The recipe is configs/fmnist_ibot_hssl_vit_tiny.yaml (what configs/demo.yaml runs): 6,000 images,
2 epochs, batch 64, AdamW. Each base runs with its paper method and head (ResNet-50: DINO + ResMLP
head, paper Table I; ResMLP-12: DINO and iBOT + ViT head, zh Table 2; PVT-v2-b2: DINO + ConvNext, zh
Table 6; Swin-T: iBOT + ConvNext with masks on its last stage's grid, or DINO as zh Table 6; ViT-T/7:
the recipe itself), once with ``hssl=null`` (baseline) and once with HSSL, same seed, so both arms
start from the same base weights. Every run logs the weighted k-NN (k=20, T=0.07) of the teacher base
features before its first step (the untrained network of the same architecture) and after training,
and its first/last loss, so the table shows that each base trains and how far it moves.

Crops per base (the table's column): the token bases take the recipe's native 28/14 px; ResNet-50
64-px global and 32-px local crops (Fashion-MNIST up-sampled for its 32-pixel stride); Swin-T (iBOT
64 px, or DINO 32 px) and PVT-v2-b2 (32 px) without local crops, as zh Table 6's rows for them (PVT-v2
needs sides divisible by 32; at 32 px their last stage is one token, so the head sees a 1x1 map).

``--resume`` reuses runs whose directory holds the final k-NN (runs are deterministic on the CPU).
Writes <out>/<name>.json/.md with the command, the budget and the machine. One seed: differences
include run-to-run noise of unknown size.
"""
import argparse
import datetime
import json
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jhssl  # noqa: E402,F401
from jhssl.fileio import atomic_write_text  # noqa: E402
from benchmarks.common import machine_line  # noqa: E402
from benchmarks.common import training_machine  # noqa: E402
from benchmarks.fmnist_seeds import finished_result  # noqa: E402

STRIDE32 = ["data.global_crop_size=64", "data.local_crop_size=32"]
# zh Table 6's Swin-T and PVT rows train without multi-crop; PVT-v2 needs sides divisible by 32 (so no 16-px locals)
NO_MULTICROP = ["data.local_crops_number=0"]
NO_PATCHES = ["model.patch_size=16"]  # the schema default: ResNet/PVT take no patch size (the recipe sets 7)
DINO = ["method=dino", "hssl.patch_level=none"]  # DINO has no patch-level loss
# name -> (overrides for the base, its method and its head) on top of the recipe
BASES = {
    "resnet50-dino": ["model.arch=resnet50", "hssl.heads=[resmlp]"] + DINO + STRIDE32 + NO_PATCHES,
    "resmlp_12-dino": ["model.arch=resmlp_12_224", "hssl.heads=[vit]"] + DINO,
    "resmlp_12-ibot": ["model.arch=resmlp_12_224", "method=ibot", "hssl.heads=[vit]"],
    "pvt_v2_b2-dino": ["model.arch=pvt_v2_b2", "hssl.heads=[convnext]", "data.global_crop_size=32"] + DINO
    + NO_MULTICROP + NO_PATCHES,
    "swin_tiny-ibot": ["model.arch=swin_tiny", "model.patch_size=4", "method=ibot", "hssl.heads=[convnext]"]
    + STRIDE32 + NO_MULTICROP,
    # zh Table 6's Swin-T row (DINO, no multi-crop) at a quarter of the pixels: ~5 instead of ~20 min a run here
    "swin_tiny-dino": ["model.arch=swin_tiny", "model.patch_size=4", "hssl.heads=[convnext]",
                       "data.global_crop_size=32"] + DINO + NO_MULTICROP,
    "vit_tiny/7-ibot": ["model.arch=vit_tiny", "method=ibot", "hssl.heads=[convnext]"],
}


def _crops(cfg):
    d = cfg.data
    local = f" + {d.local_crops_number}x{d.local_crop_size}" if d.local_crops_number else ""
    return f"2x{d.global_crop_size}{local}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "fmnist_ibot_hssl_vit_tiny.yaml"))
    p.add_argument("--bases", nargs="+", default=list(BASES), choices=list(BASES))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--work-dir", default=os.path.join(ROOT, "output", "bench_fmnist_bases"))
    p.add_argument("--name", default="fmnist_bases")
    p.add_argument("--resume", action="store_true", help="reuse runs whose output dir holds the final k-NN")
    p.add_argument("overrides", nargs="*", help="config overrides applied to every run (the budget)")
    args = p.parse_args(argv)

    from jhssl.config import load_config
    from jhssl.train import train

    rows = []
    planned = 2 * len(args.bases)
    for base in args.bases:
        for arm, extra in (("baseline", ["hssl=null"]), ("hssl", [])):
            run_dir = os.path.join(args.work_dir, base.replace("/", "_") + "_" + arm)
            over = BASES[base] + list(args.overrides) + extra + [f"output_dir={run_dir}"]
            cfg = load_config(args.config, over)
            res = finished_result(run_dir, cfg.epochs) if args.resume else None
            if res is None:
                train(cfg, resume=None, progress=False)
                res = finished_result(run_dir, cfg.epochs)
            rows.append({"base": base, "arm": arm, "knn_top1_untrained": res["untrained_top1"],
                         "knn_top1": res["knn_top1"], "loss_first": res["loss_first"], "loss_last": res["loss_last"],
                         "iterations": res["iterations"], "logged_s": res["logged_s"],
                         "final_monitors": res["final_monitors"], "overrides": over,
                         "crops": _crops(cfg)})
            print(f"{base} {arm}: k-NN {res['untrained_top1']:.2f} -> {res['knn_top1']:.2f}%, "
                  f"loss {res['loss_first']} -> {res['loss_last']} ({res['logged_s']} s)", flush=True)
            # written after every run: an interrupted benchmark keeps the runs it finished, labelled partial
            write_report(args, argv, rows, planned)
    print(f"wrote {args.out}/{args.name}.{{json,md}}")
    return 0


def write_report(args, argv, rows, planned):
    from jhssl.config import load_config
    cfg = load_config(args.config, list(args.overrides))
    argv_txt = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    report = {"command": ("python benchmarks/fmnist_bases.py " + argv_txt).strip(),
              "config": os.path.relpath(args.config, ROOT), "seed": cfg.seed,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": training_machine(), "rows": rows, "runs_done": len(rows), "runs_planned": planned,
              "budget": {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "data.subset": cfg.data.subset,
                         "eval.train_subset": cfg.eval.train_subset, "eval.val_subset": cfg.eval.val_subset}}
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, args.name + ".json"), json.dumps(report, indent=1) + "\n")
    m, b = report["machine"], report["budget"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    status = "" if len(rows) == planned else f" - PARTIAL: {len(rows)} of {planned} runs finished"
    md = [f"# Fashion-MNIST: every base x baseline / HSSL (one seed){status}", "",
          f"Command: `{report['command']}` (config `{report['config']}`, seed {report['seed']}, {report['date']})", "",
          f"Machine: {machine_line(m)}, {m['device']}, Jittor {m['jittor']}", "",
          f"BUDGET (every run): {b['epochs']} epochs, batch {b['batch_size']}, data.subset {b['data.subset']}; "
          f"k-NN (k=20, T={cfg.eval.knn_t}) of the teacher base features, {b['eval.train_subset']:g} of the "
          f"train split vs {b['eval.val_subset']:g} of the test split. One seed: differences include "
          "run-to-run noise of unknown size.", "",
          "| base + method | arm | crops (px) | k-NN top-1 untrained (%) | k-NN top-1 trained (%) | loss first -> last "
          "| iterations | s |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['base']} | {r['arm']} | {r['crops']} | {r['knn_top1_untrained']:.2f} | "
                  f"{r['knn_top1']:.2f} | "
                  f"{fmt(r['loss_first'])} -> {fmt(r['loss_last'])} | {r['iterations']} | {r['logged_s']} |")
    md += ["", "Per base: the baseline's move from its untrained network, and HSSL's difference to the baseline "
           "(same seed, same start).", "",
           "| base + method | untrained | baseline | HSSL | baseline - untrained | HSSL - baseline |",
           "|---|---|---|---|---|---|"]
    by = {(r["base"], r["arm"]): r for r in rows}
    for base in dict.fromkeys(r["base"] for r in rows):
        b, h = by.get((base, "baseline")), by.get((base, "hssl"))
        if b and h:
            md.append(f"| {base} | {b['knn_top1_untrained']:.2f} | {b['knn_top1']:.2f} | {h['knn_top1']:.2f} | "
                      f"{b['knn_top1'] - b['knn_top1_untrained']:+.2f} | {h['knn_top1'] - b['knn_top1']:+.2f} |")
    atomic_write_text(os.path.join(args.out, args.name + ".md"), "\n".join(md) + "\n")


if __name__ == "__main__":
    sys.exit(main())
