"""The benchmark suite's helpers (benchmarks/run.py): FLOP counts against hand-counted FLOPs, machine facts, SSL inputs."""
import numpy as np
import pytest

from tests._torch import require


@pytest.mark.parametrize("groups", [1, 8])
def test_conv_flops_count_forward_and_both_gradients_with_groups(groups):
    torch = require("torch")
    from benchmarks.run import _TorchFlops
    N, C, H, W, k = 2, 8, 5, 5, 3
    conv = torch.nn.Conv2d(C, C, k, padding=1, groups=groups, bias=False)
    x = torch.randn(N, C, H, W, requires_grad=True)
    forward = 2 * N * C * H * W * (C // groups) * k * k  # each output: a (C/groups * k * k)-long dot product
    counter = _TorchFlops(lambda: conv(x).sum().backward())
    counter()
    assert counter.flops == 3 * forward  # forward, input gradient, weight gradient
    x.requires_grad_(False)  # no input gradient requested: forward + weight gradient
    counter()
    assert counter.flops == 2 * forward


_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse4_2 avx avx2 avx512f avx512bw avx512_bf16

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: not the first CPU
"""


def test_cpu_facts_read_the_first_cpu_and_its_widest_vector_isa():
    from benchmarks.common import cpu_facts
    f = cpu_facts(_CPUINFO)
    assert (f["cpu"], f["cpu_vendor"], f["cpu_family"], f["cpu_model"]) == ("AMD EPYC", "AuthenticAMD", "25", "17")
    assert f["isa_widest"] == "avx512" and f["avx512"] is True
    assert f["avx512_extensions"] == ["avx512_bf16", "avx512bw", "avx512f"]
    no512 = cpu_facts(_CPUINFO.replace(" avx512f avx512bw avx512_bf16", ""))
    assert no512["isa_widest"] == "avx2" and no512["avx512"] is False


def test_onednn_isa_is_parsed_from_its_verbose_info_line():
    from benchmarks.common import parse_onednn_isa
    out = ("dnnl_verbose,info,oneDNN v2.2.0 (commit 269680b)\ndnnl_verbose,info,cpu,runtime:OpenMP\n"
           "dnnl_verbose,info,cpu,isa:Intel AVX-512 with Intel DL Boost and bfloat16 support\n")
    assert parse_onednn_isa(out) == "Intel AVX-512 with Intel DL Boost and bfloat16 support"
    assert parse_onednn_isa("onednn_verbose,info,cpu,isa:Intel AVX2\n") == "Intel AVX2"
    assert parse_onednn_isa("no verbose output") is None


def test_ssl_inputs_follow_the_views_each_method_declares():
    from benchmarks.run import _ssl_inputs
    from jhssl.methods.registry import method_spec
    spec = dict(batch=3, local=8, n_local=2, patch=4)
    spec["global"] = 16
    crops, masks = _ssl_inputs(spec, np, method_spec("ibot").views)
    assert [c.shape for c in crops] == [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)] * 2 and len(masks) == 2
    crops, masks = _ssl_inputs(spec, np, method_spec("mocov3").views)
    assert [c.shape for c in crops] == [(3, 3, 16, 16)] * 2 and masks == []
    crops, masks = _ssl_inputs(spec, np, method_spec("mae").views)
    assert [c.shape for c in crops] == [(3, 3, 16, 16)] and len(masks) == 1
    assert masks[0].shape == (3, 4, 4) and (masks[0].reshape(3, -1).sum(1) == 12).all()  # exactly 75 %


@pytest.mark.slow
def test_ssl_worker_times_an_mae_hssl_step():
    from benchmarks.run import worker_ssl
    spec = dict(kind="ssl", framework="jittor", method="mae", heads=["convnext"], arch="vit_tiny", patch=4,
                local=16, n_local=2, batch=2, warmup=1, iters=1, fast=True, masked=True, depth=1)
    spec["global"] = 32
    r = worker_ssl(spec)
    assert "error" not in r, r
    assert r["median_s"] > 0 and r["peak_rss_mb"] > 0 and r["n_params"] > 0


def _row(label, **result):
    return {"section": "ssl", "label": label, "spec": {}, "result": result}


_META = {"date": "d", "machine": {"cpu": "cpu", "cores": 2}, "command": "c", "versions": {}, "quick": True,
         "ssl_setting": "s", "rounds": 1, "omp_wait_policy": "PASSIVE", "gpu": "none"}


def test_summarize_gives_each_method_its_flop_ratio_from_its_torch_twins(monkeypatch):
    import benchmarks.run as run
    monkeypatch.setattr(run, "machine_line", lambda m: "machine")
    results = [_row("mocov3 baseline jittor", median_s=1.0, peak_rss_mb=100.0),
               _row("mocov3 hssl-convnext jittor", median_s=1.5, peak_rss_mb=120.0),
               _row("mocov3 baseline torch", median_s=2.0, flops=4e9),
               _row("mocov3 hssl-convnext torch", median_s=3.0, flops=5e9),
               _row("mae baseline jittor", median_s=1.0), _row("mae hssl-convnext jittor", median_s=2.0),
               _row("mae baseline torch", median_s=1.0, flops=1e9), _row("mae hssl-convnext torch", error="boom")]
    figures, md = run.summarize(results, _META)
    assert figures["mocov3_hssl_over_baseline_step"] == 1.5
    assert figures["mocov3_hssl_over_baseline_flops"] == 1.25  # the twins' FLOPs, not their times
    assert abs(figures["mocov3_hssl_step_ratio_over_flop_ratio"] - 1.2) < 1e-12
    assert figures["mocov3_jittor_over_torch_hssl_throughput"] == 2.0
    assert figures["mae_hssl_over_baseline_step"] == 2.0
    assert figures["mae_hssl_over_baseline_flops"] is None  # a failed twin row gives no ratio
    assert figures["hssl_over_baseline_flops"] is None  # no iBOT rows in this run
    assert "- MoCo v3: HSSL does 25% more FLOPs than the baseline" in md
    assert "| mocov3 hssl-convnext torch | 3.000 |  |  | 5.00 |  |" in md
    assert "MAE: HSSL does" not in md


def test_plan_has_a_torch_twin_row_per_method_and_setting():
    from benchmarks.run import plan
    for quick in (True, False):
        rows = {label: spec for _, label, spec in plan(quick)}
        for prefix, method in (("", "ibot"), ("mocov3 ", "mocov3"), ("mae ", "mae")):
            for arm, heads in (("baseline", []), ("hssl-convnext", ["convnext"])):
                jittor, twin = rows[f"{prefix}{arm} jittor"], rows[f"{prefix}{arm} torch"]
                assert twin["framework"] == "torch" and twin.get("method", "ibot") == method
                assert twin["heads"] == heads
                same = ("arch", "patch", "global", "batch", "heads", "depth")
                assert {k: twin[k] for k in same} == {k: jittor[k] for k in same}


def test_render_of_a_report_without_the_twin_rows_leaves_their_figures_empty():
    import glob
    import json
    import os
    from benchmarks.run import ROOT, summarize
    old = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "2026-11-23-*-quick.json")))
    if not old:
        pytest.skip("no committed benchmark report to render")
    with open(old[0]) as f:
        saved = json.load(f)
    figures, md = summarize(saved["results"], saved["meta"])
    assert figures["hssl_over_baseline_flops"] is not None  # the iBOT twins were measured then
    assert figures["mocov3_hssl_over_baseline_flops"] is None
    assert "| mocov3_hssl_over_baseline_flops | n/a |" in md


def test_seed_studies_report_mean_and_sample_std_and_no_spread_for_one_seed():
    from benchmarks.common import mean_std
    values = [58.7, 58.85, 59.95]
    mean, std = mean_std(values + [None])          # a missing run is left out, not counted as 0
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    assert mean_std([61.2]) == (61.2, None)         # one seed: no spread measured, not a spread of 0
    assert mean_std([None]) == (None, None)


def test_seed_tables_print_the_spread_only_where_it_was_measured():
    from benchmarks.common import format_mean_std, mean_std
    assert format_mean_std(*mean_std([1.0, 2.0, 3.0])) == "2.00 ± 1.00"
    assert format_mean_std(*mean_std([0.25]), sign="+") == "+0.25"  # one seed: no "± 0.00"
    assert format_mean_std(*mean_std([None])) == "–"


@pytest.mark.slow  # the benchmark's own sizes (MoCo v3's 4096-wide MLPs, MAE's 8-block decoder): ~1 min
@pytest.mark.parametrize("method", ["mocov3", "mae"])
def test_ssl_worker_counts_the_flops_of_a_torch_twin_step(method):
    require("torch")
    from benchmarks.run import worker_ssl
    spec = dict(kind="ssl", framework="torch", method=method, arch="vit_tiny", patch=4, local=8, n_local=0,
                batch=4, warmup=1, iters=1, fast=True, masked=True, depth=1)
    spec["global"] = 16
    base, hssl = worker_ssl(dict(spec, heads=[])), worker_ssl(dict(spec, heads=["convnext"]))
    assert "error" not in base and "error" not in hssl, (base, hssl)
    assert hssl["flops"] > base["flops"] > 0  # the head's work is counted
