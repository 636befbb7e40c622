"""Where a Jittor training step's time goes, op by op, and how fast the step could get.

    python benchmarks/op_profile.py                                   # ViT-T/4, ViT-S/16 and the demo step
    python benchmarks/op_profile.py --targets vit-t4 --rounds 3 --out benchmarks/results/op_profile

``benchmarks/profile_step.py`` splits a recipe's iteration into phases (data, forward, backward, ...);
this tool splits the step into the kinds of op Jittor executes (``jt.profile_scope``):

* **GEMM**: oneDNN's products (``mkl_matmul``, ``dnnl_bmm``), the fused short-sequence attention
  (``cpu_attention``: its two products per head are GEMM work too) and the convolutions;
* LayerNorm, GELU, softmax and the DINO / iBOT cross-entropy (the custom kernels), the AdamW update (one ``code`` op per parameter),
  copies (transposes, index, concat), reductions (bias gradients, norms) and the elementwise ops
  Jittor fuses (bias adds, residuals, the EMA, loss terms).

With the step's FLOPs (``benchmarks.jittor_flops.JittorFlops``: matrix products and convolutions,
as torch's FlopCounterMode counts them) and the 1024^2 GEMM peak measured in the same process, the
report gives the GEMM rate, and two ceilings no kernel work on the rest can pass:

* the step's time if everything but its GEMMs took no time (the speed-up over today is at most
  ``step / GEMM time``);
* for the ViT targets, torch's step on the same model and loss (``benchmarks.torch_models.ViT``,
  its own process, interleaved with Jittor's every round): Jittor / torch now, and at most
  ``torch step / Jittor's GEMM time``.

Targets: ``vit-t4`` (ViT-T/4 at 32 px, batch 64) and ``vit-s16`` (ViT-S/16 at 224 px, batch 8), the
forward + backward + AdamW steps of ``benchmarks/run.py``'s ViT rows (jhssl's AdamW vs torch's default
AdamW; before 2026-11-30 Jittor's own ``jt.optim.AdamW``, ~2.5x slower than jhssl's); ``demo``: one iteration of
``configs/demo.yaml`` in fp32 as ``jhssl.train`` runs it (iBOT + HSSL loss, backward, per-parameter
clipping, AdamW, EMA) on random crops and masks of the recipe's shapes, ``demo-amp`` the same in the
recipe's own precision (``amp: true``: bf16 products where the CPU has AVX512_BF16/AMX, else fp32, as
the report's Precision line says); ``baseline-quick``,
``hssl-quick``, ``search1-quick``, ``search6-quick``: ``benchmarks/run.py``'s iBOT rows at its quick
setting (the same step function). Each measurement runs in a fresh process. Writes
``<out>-<machine>.json`` and ``.md``.
"""
import argparse
import collections
import datetime
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.common import (format_mean_std, machine_info, machine_line, mean_std, n_trained_params,  # noqa: E402
                               run_json_worker, typed_command, write_results)

TARGETS = {
    "vit-t4": dict(kind="vit", arch="vit_tiny", patch=4, img=32, batch=64, label="ViT-T/4 @32 b64"),
    "vit-s16": dict(kind="vit", arch="vit_small", patch=16, img=224, batch=8, label="ViT-S/16 @224 b8"),
    "demo": dict(kind="demo", config="configs/demo.yaml", label="demo step (configs/demo.yaml, fp32)"),
    # the recipe's own precision (amp: true): bf16 products where the CPU has bf16, else fp32 (the report says)
    "demo-amp": dict(kind="demo", config="configs/demo.yaml", amp=True, label="demo step (configs/demo.yaml, its amp)"),
    # benchmarks/run.py's iBOT rows at its quick setting (ViT-T/4 @32, 2+2 crops, batch 8)
    "baseline-quick": dict(kind="ssl", row="baseline jittor", label="iBOT baseline step (run.py --quick row)"),
    "hssl-quick": dict(kind="ssl", row="hssl-convnext jittor", label="iBOT + HSSL step, ConvNext head (run.py --quick row)"),
    "search1-quick": dict(kind="ssl", row="search-1head jittor", label="search step, one candidate (run.py --quick row)"),
    "search6-quick": dict(kind="ssl", row="search-6heads jittor", label="search step, six candidates (run.py --quick row)"),
}
GEMM_KINDS = ("GEMM (oneDNN products)", "attention, fused (cpu_attention)", "convolution")
KINDS = GEMM_KINDS + ("LayerNorm", "GELU", "softmax, cross-entropy", "AdamW update", "copies (transpose, index, concat)",
                      "reductions (bias gradients, norms)", "elementwise (fused by Jittor)", "other")


def op_kind(name: str) -> str:
    """The kind of one op of Jittor's profile report (its ``Name`` column: the op's JIT key)."""
    head = name.split("«")[0] if not name.startswith("«") else ""
    ops = [part.split(":", 1)[1] for part in name.split("«") if part.startswith("opkey")]
    if head in ("mkl_matmul", "dnnl_bmm") or head.startswith(("cublas", "cutlass")):
        return "GEMM (oneDNN products)"
    if head.startswith("cpu_attention"):
        return "attention, fused (cpu_attention)"
    if "conv" in head:
        return "convolution"
    if head.startswith(("cpu_layer_norm", "cuda_layer_norm")):
        return "LayerNorm"
    if head.startswith("cpu_gelu"):
        return "GELU"
    if head.startswith(("cpu_softmax", "cpu_soft_cross_entropy")):
        return "softmax, cross-entropy"
    if head == "code":
        return "AdamW update" if 'data["decay"]' in name else "other"
    if head in ("getitem", "setitem", "concat", "reindex", "reindex_reduce") or "fuse_transpose" in ops:
        return "copies (transpose, index, concat)"
    if ops and ops[0].startswith("reduce") or (len(ops) >= 2 and ops[-1].startswith("reduce")):
        return "reductions (bias gradients, norms)"
    if ops:
        return "elementwise (fused by Jittor)"
    return "other"


def summarize_profile(report, steps: int) -> dict:
    """Per-kind ms per step and op count per step from a ``jt.profile_scope`` report of ``steps`` steps."""
    hdr, rows = report[0], report[1:]
    i_name, i_time, i_count = hdr.index("Name"), hdr.index("TotalTime"), hdr.index("Count")
    ms, count = collections.defaultdict(float), collections.defaultdict(float)
    for r in rows:
        kind = op_kind(r[i_name])
        ms[kind] += float(r[i_time]) / 1e6 / steps  # TotalTime is in ns
        count[kind] += int(r[i_count]) / steps
    return {k: {"ms": ms[k], "ops": count[k]} for k in KINDS if k in ms}


# ============================================================================ worker side
def _jittor_vit_step(spec, jt):
    from benchmarks.run import jittor_vit_step
    jt.set_global_seed(0)
    return (*jittor_vit_step(spec), "fp32")


def _jittor_demo_step(spec, jt):
    import numpy as np
    from jhssl.config import load_config
    from jhssl.methods import build_model
    from jhssl.optim import AdamW, clip_gradients
    from jhssl.amp import Precision
    cfg = load_config(os.path.join(ROOT, spec["config"]), [] if spec.get("amp") else ["amp=false"])
    precision = Precision.from_config(cfg, on_cuda=False)
    jt.set_global_seed(cfg.seed)
    method = build_model(cfg)
    opt = precision.attach(AdamW(method.param_groups(), lr=cfg.optim.lr, weight_decay=0.04))
    rng = np.random.RandomState(0)
    b, g, loc = cfg.batch_size, cfg.data.global_crop_size, cfg.data.local_crop_size
    crops = [jt.array(rng.randn(b, 3, g, g).astype("float32")) for _ in range(2)]
    crops += [jt.array(rng.randn(b, 3, loc, loc).astype("float32")) for _ in range(cfg.data.local_crops_number)]
    grid = g // cfg.model.patch_size
    masks = [jt.array(rng.rand(b, grid, grid) < 0.15) for _ in range(2)]  # iBOT's mean ratio 0.15

    def step():
        with precision.autocast():
            parts = method.compute_loss(crops, masks, 0)
        opt.backward(parts["loss"])
        if cfg.optim.clip_grad:
            clip_gradients(opt, cfg.optim.clip_grad)
        opt.step()
        method.ema_update(cfg.optim.momentum_teacher)
    return step, opt, precision.describe()


def _jittor_ssl_step(spec, jt):
    from benchmarks.run import jittor_ssl_step, plan
    row = next(s for _, label, s in plan(True) if label == spec["row"])
    return (*jittor_ssl_step(row), "fp32")


def build_jittor_step(spec, jt):
    """(step, optimizer, precision) of a target: one training step of its kind, built once."""
    build = {"vit": _jittor_vit_step, "demo": _jittor_demo_step, "ssl": _jittor_ssl_step}[spec["kind"]]
    return build(spec, jt)


def worker_jittor(spec):
    import jhssl  # noqa: F401  (bootstrap before jittor)
    import jittor as jt
    from benchmarks.jittor_flops import JittorFlops
    from benchmarks.run import _time_steps
    step, opt, precision = build_jittor_step(spec, jt)

    def synced():
        step()
        jt.sync_all(True)

    with JittorFlops() as fc:  # the first step compiles; count it
        synced()
    for _ in range(spec["warmup"]):
        synced()
    step_s = _time_steps(synced, 0, spec["iters"], lambda: None)["median_s"]
    with jt.profile_scope(0, 0) as report:
        for _ in range(spec["profiled"]):
            synced()
    n = 1024
    a, b = jt.randn(n, n), jt.randn(n, n)
    jt.sync_all(True)
    gemm_s = []
    for _ in range(10):  # the peak: the best of ten
        t = time.perf_counter()
        jt.matmul(a, b).sync()
        gemm_s.append(time.perf_counter() - t)
    return {"step_s": step_s, "flops": fc.step_flops, "kinds": summarize_profile(report, spec["profiled"]),
            "gemm_peak_gflops": 2 * n ** 3 / min(gemm_s) / 1e9,
            "n_params": n_trained_params(opt), "precision": precision}


def worker_torch(spec):
    import torch
    from benchmarks.run import _time_steps, torch_vit_step
    torch.manual_seed(0)
    step = torch_vit_step(spec)
    return {"step_s": _time_steps(step, spec["warmup"] + 1, spec["iters"], lambda: None)["median_s"]}


# ============================================================================ report
def target_figures(rounds):
    """Per-round figures of one target and their mean ± std: ``rounds`` is a list of
    ``{"jittor": worker result, "torch": worker result or None}``."""
    per = collections.defaultdict(list)
    kinds = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rounds:
        j = r["jittor"]
        op_ms = sum(v["ms"] for v in j["kinds"].values())
        gemm_ms = sum(j["kinds"].get(k, {"ms": 0.0})["ms"] for k in GEMM_KINDS)
        step_ms = 1e3 * j["step_s"]
        per["step_ms"].append(step_ms)
        per["op_ms"].append(op_ms)
        per["gemm_ms"].append(gemm_ms)
        per["gemm_share"].append(gemm_ms / op_ms)
        per["gemm_gflops"].append(j["flops"] / (gemm_ms / 1e3) / 1e9)
        per["gemm_peak_gflops"].append(j["gemm_peak_gflops"])
        per["gemm_rate_over_peak"].append(per["gemm_gflops"][-1] / j["gemm_peak_gflops"])
        per["max_speedup"].append(op_ms / gemm_ms)
        if r.get("torch"):
            t_ms = 1e3 * r["torch"]["step_s"]
            per["torch_step_ms"].append(t_ms)
            per["jittor_over_torch"].append(t_ms / step_ms)
            per["jittor_over_torch_ceiling"].append(t_ms / gemm_ms)
        for k, v in j["kinds"].items():
            kinds[k]["ms"].append(v["ms"])
            kinds[k]["ops"].append(v["ops"])
    figures = {k: mean_std(v) for k, v in per.items()}
    figures["flops"] = rounds[0]["jittor"]["flops"]
    figures["n_params"] = rounds[0]["jittor"].get("n_params")
    figures["precision"] = rounds[0]["jittor"].get("precision", "fp32")
    figures["kinds"] = {k: {"ms": mean_std(v["ms"]), "ops": mean_std(v["ops"])} for k, v in kinds.items()}
    figures["per_round"] = dict(per)
    return figures


def render(meta, figures) -> str:
    lines = ["# Op-level profile of training steps (Jittor)", "",
             f"Command: `{meta['command']}`", "",
             f"Machine: {machine_line(meta['machine'])}. Load average at start {meta['loadavg_start']}, "
             f"at end {meta['loadavg_end']}. {meta['date']} {meta['time_utc']} UTC.", "",
             f"{meta['rounds']} round(s); every round runs each target in fresh processes (Jittor, then torch "
             "for the ViT targets). Figures are mean ± std over the rounds. Op times come from "
             "`jt.profile_scope` over the profiled steps; the step time is the median of unprofiled steps.", ""]
    for name, f in figures.items():
        t = TARGETS[name]
        fm = lambda key, d=2: format_mean_std(*f[key], digits=d) if key in f else "–"  # noqa: E731
        lines += [f"## {t['label']}", "",
                  f"Precision: {f.get('precision', 'fp32')}. Step {fm('step_ms', 0)} ms (ops under the profiler "
                  f"{fm('op_ms', 0)} ms); "
                  f"{f['flops'] / 1e9:.1f} GFLOP of products and convolutions"
                  + (f"; {f['n_params'] / 1e6:.1f} M trained parameters (AdamW, EMA and norms run over each every "
                     "step)" if f.get("n_params") else "") + ".", "",
                  "| kind of op | ms / step | % of op time | ops / step |", "|---|---:|---:|---:|"]
        op_total = f["op_ms"][0]
        for kind in KINDS:
            if kind not in f["kinds"]:
                continue
            ms, ops = f["kinds"][kind]["ms"], f["kinds"][kind]["ops"]
            lines.append(f"| {kind} | {format_mean_std(*ms, digits=1)} | {100 * ms[0] / op_total:.1f} | {ops[0]:.0f} |")
        lines += ["", "| figure | value |", "|---|---:|",
                  f"| GEMM work (products, fused attention, convolutions): share of op time | {fm('gemm_share')} |",
                  f"| its rate, GFLOP/s | {fm('gemm_gflops', 1)} |",
                  f"| 1024^2 GEMM peak in the same process (best of 10), GFLOP/s | {fm('gemm_peak_gflops', 1)} |",
                  f"| GEMM rate over the peak | {fm('gemm_rate_over_peak')} |",
                  f"| ceiling: step speed-up if all other ops took no time | {fm('max_speedup')} |"]
        if "torch_step_ms" in f:
            lines += [f"| torch step, ms | {fm('torch_step_ms', 0)} |",
                      f"| Jittor / torch (step speed), paired per round | {fm('jittor_over_torch')} |",
                      f"| ceiling: Jittor / torch if all Jittor's other ops took no time | "
                      f"{fm('jittor_over_torch_ceiling')} |"]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default="vit-t4,vit-s16,demo", help=f"comma-separated: {', '.join(TARGETS)}")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5, help="unprofiled steps timed (median)")
    ap.add_argument("--profiled", type=int, default=3, help="steps under the profiler")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "op_profile"),
                    help="results stem; the machine's name is appended")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        res = worker_torch(spec) if spec["framework"] == "torch" else worker_jittor(spec)
        print(json.dumps(res))
        return
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise SystemExit(f"op_profile: unknown target(s) {unknown or names}; choose from {', '.join(TARGETS)}")
    if min(args.rounds, args.iters, args.profiled) < 1 or args.warmup < 0:
        raise SystemExit("op_profile: --rounds, --iters and --profiled must be at least 1, --warmup at least 0")
    meta = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d"),
            "time_utc": datetime.datetime.utcnow().strftime("%H:%M"),
            "command": typed_command("benchmarks/op_profile.py", argv),
            "machine": machine_info(), "rounds": args.rounds, "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    timing = dict(warmup=args.warmup, iters=args.iters, profiled=args.profiled)
    raw = {name: [] for name in names}
    for rnd in range(args.rounds):
        for name in names:
            spec = dict(TARGETS[name], **timing)
            r = {"jittor": run_json_worker(__file__, dict(spec, framework="jittor"), args.timeout, f"{name} (Jittor)")}
            if spec["kind"] == "vit":
                r["torch"] = run_json_worker(__file__, dict(spec, framework="torch"), args.timeout, f"{name} (torch)")
            raw[name].append(r)
            print(f"round {rnd + 1} {name}: Jittor step {r['jittor']['step_s']:.3f} s"
                  + (f", torch {r['torch']['step_s']:.3f} s" if "torch" in r else ""), flush=True)
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    figures = {name: target_figures(raw[name]) for name in names}
    md = render(meta, figures)
    stem = f"{args.out}-{meta['machine']['slug']}"
    write_results(stem, {"meta": meta, "figures": figures, "raw": raw}, md)


if __name__ == "__main__":
    main()
