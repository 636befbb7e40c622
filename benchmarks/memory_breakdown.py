"""What HSSL adds to a training step's memory: the live tensors at the step's peak, by what they are.

    python benchmarks/memory_breakdown.py                     # iBOT, ViT-S/16 @224 b8 (run.py's setting)
    python benchmarks/memory_breakdown.py --arch vit_tiny --patch 16 --size 32 --local 16 --batch 2 --out /tmp/x

Issue 18 asks for HSSL's peak memory within 1.12x the baseline's (``hssl: null``). This runs one
training step of each (a fresh process each, after one step that compiles and allocates) with
Jittor's memory profiler on (``profile_memory_enable``), which records the Vars alive when the
allocator's used memory was highest (one entry per allocation: a reshaped Var shares its source's),
and splits them into those shaped like a parameter (the parameters, the teacher's copy, AdamW's two
moments, gradients, and new values where the optimizer has already run: at the peak each parameter
has some of these, which ones depends on where the peak falls) and the rest, activations (and their
gradients), listed by shape. The trained parameters per top-level module (``backbone``,
``aux_head``, the projections ...) give the state they carry at 20 bytes each (fp32 value, gradient,
two moments, teacher copy). Peak RSS (the kernel's high-water mark) is reported beside it: it also counts the
allocator's cached blocks and the libraries. Machine facts: ``benchmarks.common.machine_info``.
"""
import argparse
import collections
import json
import os
import resource
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MB = 2.0 ** 20
# jt.get_max_memory_info(): "<total>" then per live Var "<var repr>{...}<size>...", split by these
DIV_VAR, DIV_FIELD = "[!@#div1!@#]", "[!@#div2!@#]"


def var_address(text: str) -> str:
    """The memory address in a Var's description, ``Var(<id>:...,float32,,<address>)[d0,d1,]``."""
    return text.split(")", 1)[0].rsplit(",", 1)[1]


def parse_peak_vars(info: str):
    """``jt.get_max_memory_info()`` -> (bytes of all live Vars, [(address, shape, bytes)]), one entry per
    allocation."""
    parts = info.split(DIV_VAR)
    out = []
    for entry in parts[1:]:
        fields = entry.split(DIV_FIELD)
        text = fields[0].split("{")[0]
        shape = tuple(int(d) for d in text.rsplit("[", 1)[1].rstrip("]").split(",") if d)
        out.append((var_address(text), shape, int(fields[1])))
    return int(parts[0]), out


PARAM_SHAPED = "parameter-shaped: parameters, teacher copy, AdamW moments, gradients"
ACTIVATIONS = "activations and their gradients"


def classify(live, param_shapes):
    """Sum the live allocations' bytes: those shaped like a parameter (its values, the teacher's copy, the
    two moments, its gradient, its new value once the optimizer has run) and the rest, activations, by shape."""
    by_category, activations = collections.Counter(), collections.Counter()
    for _, shape, size in live:
        if shape in param_shapes:
            by_category[PARAM_SHAPED] += size
        else:
            by_category[ACTIVATIONS] += size
            activations[shape] += size
    return by_category, activations


def worker(spec):
    import numpy as np
    from benchmarks.run import _jittor, _ssl_config, _ssl_inputs
    jt = _jittor(True)
    from jhssl.methods import build_model
    from jhssl.methods.registry import method_spec
    from jhssl.optim import AdamW
    views = method_spec(spec["method"]).views
    cfg = _ssl_config(spec, spec["method"], views)
    method = build_model(cfg)
    opt = AdamW(method.param_groups(), lr=5e-4, weight_decay=0.04)  # what jhssl.train uses
    crops_np, masks_np = _ssl_inputs(spec, np, views)
    crops = [jt.array(c) for c in crops_np]
    masks = [jt.array(m) for m in masks_np] or None

    def step():
        opt.step(method.compute_loss(crops, masks, 0)["loss"])
        if method.teacher is not None:
            method.ema_update(cfg.optim.momentum_teacher)
        jt.sync_all()
        jt.gc()

    step()  # compiles, and allocates the moments
    param_shapes = {tuple(p.shape) for p in method.student.parameters()}
    with jt.flag_scope(profile_memory_enable=1):
        step()
        total, live = parse_peak_vars(jt.get_max_memory_info())
    by_category, activations = classify(live, param_shapes)
    n_params = {}
    for name, p in method.student.named_parameters():
        if p.is_stop_grad():
            continue
        key = name.split(".")[0]
        n_params[key] = n_params.get(key, 0) + int(np.prod(p.shape))
    return {"peak_live_bytes": total, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "categories": dict(by_category), "activations": {"x".join(map(str, s)): b for s, b in activations.items()},
            "n_params": n_params}


def markdown(rec) -> str:
    from benchmarks.common import machine_line
    base, hssl = rec["results"]["baseline"], rec["results"]["hssl"]
    s = rec["setting"]
    md = ["# HSSL vs baseline: the live tensors at the training step's peak (issue 18)", "",
          f"Command: `{rec['command']}`", "", f"Machine: {machine_line(rec['machine'])}. {rec['date']}.", "",
          f"Setting: {s['method']}, {s['arch']}/{s['patch']} @{s['global']}, batch {s['batch']}, "
          f"{s['n_local']} local crops @{s['local']}; HSSL: {', '.join(s['heads'])} head, depth {s['depth']}, "
          "patch loss on the head (run.py's SSL setting). One step after a first one, Jittor's memory profiler on; "
          "MB = 2^20 bytes.", "",
          "| what | baseline MB | HSSL MB | HSSL adds MB |", "|---|---:|---:|---:|"]
    cats = sorted(set(base["categories"]) | set(hssl["categories"]))
    for c in cats:
        b, h = base["categories"].get(c, 0) / MB, hssl["categories"].get(c, 0) / MB
        md.append(f"| {c} | {b:.0f} | {h:.0f} | {h - b:+.0f} |")
    b, h = base["peak_live_bytes"] / MB, hssl["peak_live_bytes"] / MB
    md.append(f"| **all live tensors at the peak** | **{b:.0f}** | **{h:.0f}** | **{h - b:+.0f}** (x{h / b:.3f}) |")
    br, hr = base["peak_rss_mb"], hssl["peak_rss_mb"]
    md.append(f"| peak RSS of the process | {br:.0f} | {hr:.0f} | {hr - br:+.0f} (x{hr / br:.3f}) |")
    md += ["", "Activations HSSL adds, by shape (MB; shapes whose total differs by at least 1 MB):", "",
           "| shape | baseline | HSSL | added |", "|---|---:|---:|---:|"]
    shapes = set(base["activations"]) | set(hssl["activations"])
    diff = sorted(((hssl["activations"].get(k, 0) - base["activations"].get(k, 0), k) for k in shapes), reverse=True)
    for d, k in diff:
        if abs(d) >= MB:
            md.append(f"| {k} | {base['activations'].get(k, 0) / MB:.1f} | {hssl['activations'].get(k, 0) / MB:.1f} | "
                      f"{d / MB:+.1f} |")
    added_params = sum(hssl["n_params"].values()) - sum(base["n_params"].values())
    state = 20 * added_params  # fp32 value, gradient, two AdamW moments, teacher copy
    md += ["", f"HSSL trains {added_params / 1e6:.2f} M more parameters "
           f"({', '.join(f'{k} {v / 1e6:.2f} M' for k, v in sorted(hssl['n_params'].items()))}); "
           f"at 20 bytes each (value, gradient, two moments, teacher copy) they carry {state / MB:.0f} MB "
           f"= {state / base['peak_live_bytes']:.3f} of the baseline's live peak and "
           f"{state / MB / br:.3f} of its peak RSS, before any activation."]
    return "\n".join(md) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--method", default="ibot", choices=["ibot", "dino"])
    p.add_argument("--arch", default="vit_small")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--size", type=int, default=224, help="global crop size")
    p.add_argument("--local", type=int, default=96, help="local crop size")
    p.add_argument("--n-local", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--head", default="convnext")
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "memory_breakdown"))
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    import datetime
    from benchmarks.common import machine_info, run_json_worker
    from jhssl.fileio import atomic_write_text
    setting = {"method": args.method, "arch": args.arch, "patch": args.patch, "global": args.size,
               "local": args.local, "n_local": args.n_local, "batch": args.batch, "depth": args.depth}
    results = {}
    for label, heads in (("baseline", []), ("hssl", [args.head])):
        results[label] = run_json_worker(__file__, dict(setting, heads=heads), args.timeout, f"the {label} step")
        print(label, f"live peak {results[label]['peak_live_bytes'] / MB:.0f} MB, "
              f"peak RSS {results[label]['peak_rss_mb']:.0f} MB", flush=True)
    rec = {"command": " ".join(["python benchmarks/memory_breakdown.py", *(argv if argv is not None else sys.argv[1:])]),
           "machine": machine_info(), "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "setting": dict(setting, heads=[args.head]), "results": results}
    atomic_write_text(args.out + ".json", json.dumps(rec, indent=1))
    atomic_write_text(args.out + ".md", markdown(rec))
    print(markdown(rec))


if __name__ == "__main__":
    main()
