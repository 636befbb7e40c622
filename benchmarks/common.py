"""What every benchmark records beside its numbers: the machine it ran on.

Two hosts sold under the same CPU label ("AMD EPYC, 2 cores") have shown a 2x difference in
GEMM speed, so a label is not enough to compare figures: we record the CPU's vendor, family,
model and flags, the widest vector ISA it offers, the ISA oneDNN (Jittor's GEMM/conv library)
actually dispatches, and torch's BLAS backend and CPU capability. The two library probes run in
subprocesses, so importing this module (benchmark workers do) never loads Jittor or torch.
"""
import functools
import json
import math
import os
import platform
import re
import subprocess
import sys

# Widest first: the first ISA whose flag the CPU reports is its widest vector ISA.
_ISA_FLAGS = (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("sse4.2", "sse4_2"))

# One oneDNN primitive (a convolution) makes oneDNN print its "isa:" info line under DNNL_VERBOSE;
# Jittor's GEMM goes through dnnl_sgemm, which prints nothing.
_ONEDNN_PROBE = """
import jhssl  # noqa: F401  (Jittor's environment first)
import jittor as jt
from jittor import nn
nn.Conv2d(4, 4, 3)(jt.randn(1, 4, 8, 8)).sync()
"""

_TORCH_PROBE = """
import torch
cfg = torch.__config__.show()
blas = [p.split("=", 1)[1] for line in cfg.splitlines() for p in line.replace(",", " ").split() if p.startswith("BLAS_INFO=")]
print("blas=" + (blas[0] if blas else "unknown"))
print("capability=" + str(torch.backends.cpu.get_cpu_capability()))
print("version=" + torch.__version__)
"""


def cpu_facts(cpuinfo_text=None) -> dict:
    """Vendor, family, model, model name, flags summary of the first CPU in /proc/cpuinfo."""
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo_text = f.read()
        except OSError:
            cpuinfo_text = ""
    first = {}
    for line in cpuinfo_text.splitlines():
        if not line.strip():
            if first:
                break
            continue
        if ":" in line:
            k, v = line.split(":", 1)
            first.setdefault(k.strip(), v.strip())
    flags = set(first.get("flags", "").split())
    widest = next((name for name, flag in _ISA_FLAGS if flag in flags), "unknown" if not flags else "sse")
    return {
        "cpu": first.get("model name") or platform.processor() or platform.machine() or "cpu",
        "cpu_vendor": first.get("vendor_id", "unknown"),
        "cpu_family": first.get("cpu family", "unknown"),
        "cpu_model": first.get("model", "unknown"),
        "isa_widest": widest,
        "avx512": "avx512f" in flags,
        "avx512_extensions": sorted(f for f in flags if f.startswith("avx512")),
    }


def parse_onednn_isa(verbose_output: str):
    """The ISA from oneDNN's ``dnnl_verbose,info,cpu,isa:...`` line (None when absent)."""
    m = re.search(r"(?:dnnl|onednn)_verbose,info,cpu,isa:([^\n]+)", verbose_output)
    return m.group(1).strip() if m else None


def _run_probe(code: str, env_extra=None, timeout=300):
    env = dict(os.environ, **(env_extra or {}))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    return r.stdout + r.stderr, None if r.returncode == 0 else f"exit {r.returncode}"


@functools.lru_cache(maxsize=1)
def onednn_isa() -> str:
    """The ISA oneDNN dispatches in this process's Jittor build (a subprocess probe)."""
    out, err = _run_probe(_ONEDNN_PROBE, {"DNNL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"})
    if out is None:
        return f"unknown ({err})"
    isa = parse_onednn_isa(out)
    return isa or f"unknown ({err or 'no dnnl_verbose isa line'})"


@functools.lru_cache(maxsize=1)
def torch_blas() -> dict:
    """torch's BLAS backend, CPU capability and version, or ``{"torch": "not installed"}``."""
    out, err = _run_probe(_TORCH_PROBE, timeout=120)
    if out is None or err:
        return {"torch": "not installed" if out and "No module named 'torch'" in out else f"unknown ({err})"}
    vals = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and line.split("=", 1)[0] in
                ("blas", "capability", "version"))
    return {"torch": vals.get("version", "unknown"), "torch_blas": vals.get("blas", "unknown"),
            "torch_cpu_capability": vals.get("capability", "unknown")}


def machine_slug(facts: dict, cores: int) -> str:
    """A results file's machine name: the CPU's name, family and model, and the cores
    (``amd-epyc-f25m17-2c``). The name alone is not enough: one "AMD EPYC" label has meant CPUs
    whose GEMM speed differs 2x, and their results files must not overwrite each other."""
    name = re.sub(r"[^a-z0-9]+", "-", facts["cpu"].lower()).strip("-")
    family, model = facts.get("cpu_family", "unknown"), facts.get("cpu_model", "unknown")
    fm = f"-f{family}m{model}" if str(family).isdigit() and str(model).isdigit() else ""
    return f"{name}{fm}-{cores}c"


def machine_info(probe_libraries: bool = True) -> dict:
    """CPU facts, cores, a file-name slug, Python, platform, load; with ``probe_libraries`` also the
    ISA oneDNN dispatches and torch's BLAS (each probed once per process, in a subprocess)."""
    facts = cpu_facts()
    cores = os.cpu_count() or 1
    info = {**facts, "cores": cores, "slug": machine_slug(facts, cores), "python": platform.python_version(),
            "platform": platform.platform(), "hostname": platform.node(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}
    if probe_libraries:
        info["onednn_isa"] = onednn_isa()
        info.update(torch_blas())
    return info


def training_machine() -> dict:
    """:func:`machine_info` plus what decides a training result's figures: Jittor's version and device."""
    import jhssl  # noqa: F401  (bootstrap before jittor)
    import jittor as jt
    return {**machine_info(), "jittor": jt.__version__, "device": "cuda" if jt.flags.use_cuda else "cpu"}


def machine_line(info: dict) -> str:
    """One line for a results file: what decides a CPU figure."""
    # '?' for a fact a report written before it was recorded lacks (--render of an old report)
    f = {k: info.get(k, "?") for k in ("cpu", "cpu_vendor", "cpu_family", "cpu_model", "cores", "isa_widest")}
    s = (f"{f['cpu']} ({f['cpu_vendor']} family {f['cpu_family']} model {f['cpu_model']}), "
         f"{f['cores']} cores, widest ISA {f['isa_widest']}")
    if "onednn_isa" in info:
        s += f"; oneDNN dispatches: {info['onednn_isa']}"
    if info.get("torch_blas"):
        s += f"; torch {info['torch']} BLAS {info['torch_blas']} ({info['torch_cpu_capability']})"
    return s


def mean_std(values):
    """(mean, sample std) of the values that are not None; std is None for a single value (no spread
    measured, rather than a spread of 0), and both are None for none. Every seed study reports with this."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None, None
    mean = math.fsum(v) / len(v)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return mean, std


def format_mean_std(mean, std, digits=2, sign=""):
    """``mean ± std`` for a results table (``sign="+"`` for a difference); the mean alone when no spread
    was measured (one seed), a dash when there is no value."""
    if mean is None:
        return "–"
    return f"{mean:{sign}.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def typed_command(script: str, argv=None) -> str:
    """``python <script> <arguments>`` as typed (``argv``: main's own arguments, else ``sys.argv``): a
    results file records every option that shaped its run."""
    import shlex
    args = sys.argv[1:] if argv is None else argv
    return f"python {script}" + "".join(" " + shlex.quote(a) for a in args)


def n_trained_params(optimizer) -> int:
    """Parameters an optimizer updates (AdamW, the EMA and clipping run over each every step)."""
    return sum(p.numel() for g in optimizer.param_groups for p in g["params"])


def write_results(stem: str, record: dict, md: str) -> None:
    """A benchmark's results: ``<stem>.json`` (everything measured) and ``<stem>.md`` (the report), each
    written atomically (never half a file); prints the report and where it went."""
    from jhssl.fileio import atomic_write_text
    atomic_write_text(stem + ".json", json.dumps(record, indent=1))
    atomic_write_text(stem + ".md", md if md.endswith("\n") else md + "\n")
    print(md)
    print(f"wrote {stem}.json and {stem}.md")


def run_json_worker(script: str, payload, timeout: float, what: str) -> dict:
    """``python <script> --worker <payload as JSON>`` in a fresh process (its own peak RSS, its own
    Jittor state); returns the dict it prints as its last JSON line. A failure ends the benchmark with
    one line that names ``what``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.abspath(script), "--worker", json.dumps(payload)],
                          capture_output=True, text=True, timeout=timeout, cwd=root,
                          env=dict(os.environ, PYTHONPATH=root))
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"{os.path.basename(script)}: {what} failed: {tail}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    info = machine_info()
    print(machine_line(info))

