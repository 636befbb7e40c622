"""GPU benchmark: iBOT+HSSL (ConvNext head, depth 3) vs the iBOT baseline, ViT-S/16, fp32 and bf16.

    python benchmarks/gpu.py [--batch 64] [--iters 20] [--precisions fp32,bf16] [--out DIR]
    python benchmarks/gpu.py --memory-steps 200 --arch vit_tiny --batch 32   # high-water-mark check

One training step = what ``jhssl.train`` does per iteration: teacher forward on the 2 global crops,
student forward + backward on 2x224 + 10x96 crops (iBOT masks, 30% of the patches), AdamW, EMA.
Every (method, precision) runs in its own subprocess (clean peak memory, no graph state shared).

Reported per row: img/s (median step time after warm-up), peak GPU memory of the process
(``nvidia-smi``, polled; Jittor's caching allocator included), and MFU = achieved FLOP/s over the
card's dense bf16 peak (table below, by GPU name; fp32 rows are also divided by the bf16 peak, so
the two precisions compare directly). FLOPs per step are counted by torch's FlopCounterMode on the
torch twin of the same step (benchmarks/torch_models.py, GEMMs and convolutions) at batch 2 on the
CPU and scaled linearly to the batch; without torch the MFU column stays empty.

``--memory-steps N`` runs N steps of one configuration and records the process's GPU memory
after every step: the high-water mark must stop growing after warm-up (issue 16, no per-step
``jt.gc()``); the JSON holds the trace and ``flat`` (max of the last half <= max of the first half
+ 1%).

Anchors (not measured here): DINO ViT-S/16 with 10 local crops, about 92-107 img/s per V100;
the paper's HSSL / baseline cost for iBOT ViT-B/16 is 1.14x time and 1.17x memory.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets.
BF16_PEAK_TFLOPS = [("H200", 989.0), ("H100 SXM", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10", 125.0), ("RTX 4090", 165.0),
                    ("A6000", 155.0), ("V100", 125.0)]  # V100: fp16 (no bf16)


def peak_tflops(gpu_name):
    for key, tf in BF16_PEAK_TFLOPS:
        if key.lower() in (gpu_name or "").lower():
            return tf
    return None


def gpu_info():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
        name, mem, drv = [x.strip() for x in out.splitlines()[0].split(",")]
        return {"gpu": name, "gpu_memory": mem, "driver": drv}
    except Exception as e:  # no nvidia-smi: recorded, the run goes on
        return {"gpu": None, "error": str(e)}


class GpuMemory:
    """Polls this process's GPU memory (MiB) with nvidia-smi; ``peak`` and ``now()``."""

    def __init__(self, period=0.2):
        self.peak, self.period, self._stop = 0, period, False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def now(self):
        try:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
        except Exception:
            return None
        used = [int(v) for p, v in (line.split(",") for line in out.splitlines() if "," in line)
                if int(p) == os.getpid()]
        return sum(used) if used else 0

    def _run(self):
        while not self._stop:
            m = self.now()
            if m:
                self.peak = max(self.peak, m)
            time.sleep(self.period)

    def stop(self):
        self._stop = True
        return self.peak


def _overrides(spec):
    o = [f"model.arch={spec['arch']}", "model.patch_size=16", "data.global_crop_size=224",
         "data.local_crop_size=96", f"data.local_crops_number={spec['n_local']}", f"batch_size={spec['batch']}",
         "method=ibot", "device=cuda", f"amp={'true' if spec['precision'] != 'fp32' else 'false'}"]
    if spec["precision"] in ("bf16", "fp16"):
        o.append(f"amp_dtype={'bfloat16' if spec['precision'] == 'bf16' else 'float16'}")
    o += ["hssl=null"] if not spec["hssl"] else ["hssl.heads=[convnext]", "hssl.depth=3"]
    return o


def worker(spec):
    import numpy as np
    import jhssl  # noqa: F401
    import jittor as jt
    from jhssl.amp import Precision
    from jhssl.config import load_config
    from jhssl.methods import build_model
    from jhssl.optim import AdamW, clip_gradients, param_groups
    from jhssl.train import setup_device

    cfg = load_config(os.path.join(ROOT, "configs", "ibot_hssl_vit_small_16.yaml"), _overrides(spec))
    device = setup_device(cfg)
    if device != "cuda":
        return {"error": "no CUDA device"}
    mem = GpuMemory()
    method = build_model(cfg)
    opt = AdamW(param_groups(method.student), lr=5e-4, weight_decay=0.04)
    precision = Precision.from_config(cfg, True)
    precision.attach(opt)
    rng = np.random.RandomState(0)
    b = spec["batch"]
    crops = [jt.array(rng.randn(b, 3, 224, 224).astype("float32")) for _ in range(2)]
    crops += [jt.array(rng.randn(b, 3, 96, 96).astype("float32")) for _ in range(spec["n_local"])]
    masks = [jt.array(rng.rand(b, 14, 14) < 0.3) for _ in range(2)]
    times, trace = [], []
    n = spec["warmup"] + spec["iters"]
    for i in range(n):
        t = time.time()
        with precision.autocast():
            parts = method.compute_loss(crops, masks, 0)
        opt.backward(parts["loss"])
        clip_gradients(opt, 3.0)
        opt.step()
        method.ema_update(0.996)
        jt.sync_all(True)
        times.append(time.time() - t)
        if spec.get("trace"):
            trace.append(mem.now())
    peak = mem.stop()
    timed = sorted(times[spec["warmup"]:])
    med = timed[len(timed) // 2]
    res = {"step_s": med, "img_per_s": b / med, "peak_gpu_mib": peak, "precision": precision.describe(),
           "loss": float(parts["loss"].item()), "skipped_steps": opt.loss_scaler.skipped if opt.loss_scaler else 0}
    if trace:
        half = len(trace) // 2
        first, last = max(x or 0 for x in trace[:half]), max(x or 0 for x in trace[half:])
        res.update(memory_trace_mib=trace, flat=bool(last <= first * 1.01), first_half_max=first, last_half_max=last)
    return res


def count_flops(spec):
    """FLOPs of one step at ``spec['batch']`` (torch twin at batch 2, scaled), or None without torch."""
    try:
        import numpy as np
        import torch
        from benchmarks.run import _TorchFlops
        from benchmarks.torch_models import TorchHSSL
    except Exception:
        return None
    small = 2
    model = TorchHSSL(spec["arch"], 16, 224, hssl=spec["hssl"], out_dim=8192, hidden_dim=2048, bottleneck_dim=256,
                      nlayers=3, n_local=spec["n_local"], masked_projection=True)
    rng = np.random.RandomState(0)
    crops = [torch.from_numpy(rng.randn(small, 3, 224, 224).astype("float32")) for _ in range(2)]
    crops += [torch.from_numpy(rng.randn(small, 3, 96, 96).astype("float32")) for _ in range(spec["n_local"])]
    masks = [torch.from_numpy(rng.rand(small, 14, 14) < 0.3) for _ in range(2)]
    counter = _TorchFlops(lambda: model.step(crops, masks))
    counter()
    return counter.flops * spec["batch"] / small


def run_sub(spec, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-800:]}"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="vit_small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--local-crops", type=int, default=10)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--memory-steps", type=int, default=0, help="trace GPU memory over N steps of one config")
    ap.add_argument("--timeout", type=int, default=1500)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        spec = json.loads(a.worker)
        try:
            res = worker(spec)
        except Exception as e:
            res = {"error": f"{type(e).__name__}: {e}"}
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    from benchmarks.common import machine_info
    info = {**machine_info(), **gpu_info(), "date": datetime.datetime.utcnow().isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    peak = peak_tflops(info.get("gpu"))
    rows = []
    if a.memory_steps:
        spec = {"arch": a.arch, "batch": a.batch, "n_local": a.local_crops, "hssl": True, "precision": "bf16",
                "warmup": 0, "iters": a.memory_steps, "trace": True}
        rows.append({**spec, **run_sub(spec, a.timeout)})
    else:
        for hssl in (True, False):
            flops = count_flops({"arch": a.arch, "batch": a.batch, "n_local": a.local_crops, "hssl": hssl})
            for prec in a.precisions.split(","):
                spec = {"arch": a.arch, "batch": a.batch, "n_local": a.local_crops, "hssl": hssl, "precision": prec,
                        "warmup": a.warmup, "iters": a.iters}
                r = {**spec, **run_sub(spec, a.timeout), "flops_per_step": flops}
                if flops and peak and r.get("step_s"):
                    r["mfu"] = flops / r["step_s"] / (peak * 1e12)
                rows.append(r)
                print(json.dumps(r), flush=True)
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"gpu-{'memory' if a.memory_steps else 'bench'}-{info['date'][:10]}")
    with open(stem + ".json", "w") as f:
        json.dump({"machine": info, "peak_bf16_tflops": peak, "rows": rows}, f, indent=1)
    md = [f"# GPU benchmark ({info.get('gpu')}, driver {info.get('driver')}, {info['date']})", "",
          f"`{info['command']}`", "",
          "| method | precision | img/s | step s | peak GPU MiB | MFU (bf16 peak) | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else ""
        note = r.get("error", "") or (f"flat={r['flat']}" if "flat" in r else "")
        md.append(f"| {'iBOT+HSSL convnext d3' if r['hssl'] else 'iBOT'} | {r['precision']} | "
                  f"{r.get('img_per_s', 0):.1f} | {r.get('step_s', 0):.3f} | {r.get('peak_gpu_mib', '')} | {mfu} | {note} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
