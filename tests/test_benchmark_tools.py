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


def test_machine_slug_names_family_and_model_so_hosts_with_one_label_differ():
    from benchmarks.common import cpu_facts, machine_slug
    zen4 = cpu_facts(_CPUINFO)
    zen3 = cpu_facts(_CPUINFO.replace("model\t\t: 17", "model\t\t: 1"))
    assert machine_slug(zen4, 2) == "amd-epyc-f25m17-2c"
    assert machine_slug(zen3, 2) == "amd-epyc-f25m1-2c"
    unknown = cpu_facts("model name\t: Some CPU\nflags\t\t: avx2\n")
    assert machine_slug(unknown, 4) == "some-cpu-4c"


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


def test_vit_rows_get_their_jittor_over_torch_ratio_paired_per_round(monkeypatch):
    import benchmarks.run as run
    monkeypatch.setattr(run, "machine_line", lambda m: "machine")
    name = "ViT-T/4 @32 b64"

    def round_of(jittor_s, torch_s):
        return [{"section": "vit", "label": f"{name} jittor fast", "spec": {},
                 "result": {"median_s": jittor_s, "img_per_s": 64 / jittor_s}},
                {"section": "vit", "label": f"{name} torch", "spec": {},
                 "result": {"median_s": torch_s, "img_per_s": 64 / torch_s, "flops": 1e9}}]

    # the host slows down in round 2: best-of-rounds pairs round 1's Jittor with round 3's torch,
    # the paired ratios keep each round's two runs together
    rounds = [round_of(1.0, 1.2), round_of(2.0, 2.2), round_of(1.1, 1.1)]
    meta = dict(_META, rounds=3, round_medians=run.round_medians(rounds))
    assert meta["round_medians"][f"{name} torch"] == [1.2, 2.2, 1.1]
    assert run.paired_ratios(meta, f"{name} jittor fast", f"{name} torch") == [1.2, 1.1, 1.0]
    _, md = run.summarize(run.merge_rounds(rounds), meta)
    assert f"| {name} | 64.0 |  | 58.2 | 1.10 |" in md  # best of rounds: 1.0 s vs 1.1 s
    assert f"- {name}: Jittor fast / torch per round 1.20, 1.10, 1.00: 1.10 ± 0.10" in md
    _, one_round = run.summarize(run.merge_rounds(rounds[:1]), dict(_META, round_medians=run.round_medians(rounds[:1])))
    assert "Paired per round" not in one_round  # no spread from a single round


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


def test_jittor_flops_equal_flopcountermode_on_the_same_vit():
    torch = require("torch")
    import jhssl  # noqa: F401  (bootstrap before jittor)
    import jittor as jt

    import models
    import models.vit  # noqa: F401  (registers the ViTs)
    from benchmarks.jittor_flops import JittorFlops
    from benchmarks.run import _TorchFlops
    from benchmarks.torch_models import ViT
    with JittorFlops() as counted:
        out = models.create_model("vit_tiny", patch_size=4, img_size=16).forward_features(jt.randn(2, 3, 16, 16))
        out["cls"].sqr().mean() + out["patch"].sqr().mean()
    twin, x = ViT("vit_tiny", 4, 16), torch.randn(2, 3, 16, 16)

    def step():
        out = twin.forward_features(x)
        (out["cls"].pow(2).mean() + out["patch"].pow(2).mean()).backward()

    reference = _TorchFlops(step)
    reference()
    assert counted.step_flops == reference.flops > 0


def test_jittor_flops_count_each_product_once_with_the_backward_it_needs():
    import jhssl  # noqa: F401
    import jittor as jt
    from jittor import nn

    from benchmarks.jittor_flops import JittorFlops
    from models import perf
    from models.layers import attention
    from models.layers.patch_embed import PatchEmbed
    original_mm = nn.matmul_transpose
    with JittorFlops() as fc:
        nn.Linear(7, 3)(jt.randn(5, 7))
    assert (fc.forward, fc.backward) == (2 * 5 * 7 * 3, 2 * 2 * 5 * 7 * 3)  # input and weight gradients
    with JittorFlops() as fc, jt.no_grad():  # the teacher: no backward
        nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)(jt.randn(2, 8, 5, 5))
    assert (fc.forward, fc.backward) == (2 * (2 * 8 * 5 * 5) * (8 // 4) * 3 * 3, 0)
    with perf.fast_kernels(False), JittorFlops() as fc:  # _bmm3 falls back to jt.matmul: counted once
        attention._bmm3(jt.randn(3, 4, 6), jt.randn(3, 5, 6), trans_b=True)
    assert fc.forward == 2 * 3 * 4 * 5 * 6
    embed = PatchEmbed(img_size=8, patch_size=4, in_chans=3, embed_dim=6)
    patch_flops = 2 * (2 * 4) * 6 * (3 * 4 * 4)  # 2 images x 4 patches, 48 values each, 6 outputs
    with JittorFlops() as fc:
        embed(jt.randn(2, 3, 8, 8))
    assert (fc.forward, fc.backward) == (patch_flops, patch_flops)  # no gradient of the pixels
    for p in embed.parameters():
        p.stop_grad()  # MoCo v3's frozen patch embedding
    with JittorFlops() as fc:
        embed(jt.randn(2, 3, 8, 8))
    assert (fc.forward, fc.backward) == (patch_flops, 0)
    assert nn.matmul_transpose is original_mm and attention._bmm3.__name__ == "_bmm3"  # unpatched on exit


def test_jittor_flops_the_same_under_the_cpu_bf16_autocast_and_for_the_nhwc_depthwise_conv():
    """The CPU's bf16 products and the channels-last depthwise kernel bypass matmul_transpose and
    nn.Conv: their own entry points are counted, the same FLOPs as the fp32 / nn.Conv path."""
    import jhssl  # noqa: F401
    import jittor as jt
    from jittor import nn

    from benchmarks.jittor_flops import JittorFlops
    from jhssl import amp
    from models import perf
    from models.layers import dwconv  # called through the module, as models/heads.py does
    lin, conv = nn.Linear(7, 3), nn.Conv2d(6, 6, 3, padding=1, groups=6)
    x, t = jt.randn(5, 7), jt.randn(2, 4, 4, 6)
    counts = []
    for cpu_amp, fast in ((False, False), (True, True)):
        with perf.fast_kernels(fast), amp.autocast("bfloat16" if cpu_amp else None, cpu=cpu_amp), \
                JittorFlops() as fc:
            lin(x)
            dwconv.depthwise_conv_nhwc(t, conv)
        counts.append((fc.forward, fc.backward))
    linear_fwd, conv_fwd = 2 * 5 * 7 * 3, 2 * (2 * 4 * 4 * 6) * 3 * 3
    assert counts[0] == counts[1] == (linear_fwd + conv_fwd, 2 * (linear_fwd + conv_fwd))


def test_jittor_flops_the_same_for_the_fused_and_the_split_self_attention():
    """Short sequences take the fused attention op (both products in one call): counted as the two
    batched products of the split path."""
    import jhssl  # noqa: F401
    import jittor as jt

    from benchmarks.jittor_flops import JittorFlops
    from models import perf
    from models.layers import attention
    counts = []
    for fast in (False, True):
        with perf.fast_kernels(fast), JittorFlops() as fc:
            attention.self_attention(jt.randn(2, 5, 3 * 8), 2)
        counts.append((fc.forward, fc.backward))
    fwd = 2 * (2 * 2 * 5 * 5 * 4)  # q k^T and P v: (2 images x 2 heads) x 5 x 5 x D 4 multiply-adds each
    assert counts[0] == counts[1] == (2 * fwd, 4 * fwd)


@pytest.mark.slow  # six small training steps: ~1 min
def test_jittor_step_flops_equal_the_torch_twins_and_the_search_counts_every_head():
    require("torch")
    from benchmarks.run import worker_ssl
    spec = dict(kind="ssl", method="ibot", arch="vit_tiny", patch=4, local=16, n_local=2, batch=2, warmup=1,
                iters=1, fast=True, masked=True, depth=3)  # the twin's head is 3 blocks deep
    spec["global"] = 32
    for heads in ([], ["convnext"]):
        jittor, twin = (worker_ssl(dict(spec, framework=f, heads=heads)) for f in ("jittor", "torch"))
        assert jittor["flops"] == pytest.approx(twin["flops"], rel=1e-3), heads
    search = dict(spec, framework="jittor", search=True, patch_level="none", depth=1)
    one, six = (worker_ssl(dict(search, heads=h))["flops"]
                for h in (["convnext"], ["convnext", "poolformer", "resmlp", "resnet", "swin", "vit"]))
    assert six > 1.2 * one > 0


def test_step_flops_takes_the_search_step_ratio_from_the_newest_report_of_its_setting(tmp_path, monkeypatch):
    import json

    import benchmarks.step_flops as step_flops
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)

    def report(name, date, quick, one, six):
        rows = [{"label": "search-1head jittor", "result": {"median_s": one}}]
        rows += [{"label": "search-6heads jittor", "result": {"median_s": six}}] if six else []
        (results / name).write_text(json.dumps({"meta": {"date": date, "quick": quick}, "results": rows}))

    report("a.json", "2026-11-23", True, 1.0, 2.0)
    report("b.json", "2026-11-29", True, 1.0, None)  # newer, but without the six-head row
    report("c.json", "2026-11-24", False, 2.0, 3.0)
    (results / "other.json").write_text("[1, 2]")  # a results file of another tool
    monkeypatch.setattr(step_flops, "ROOT", str(tmp_path))
    assert step_flops.newest_report(True) == ("benchmarks/results/a.json", 2.0)
    assert step_flops.newest_report(False) == ("benchmarks/results/c.json", 1.5)
    report("d.json", "2026-11-30", False, 1.0, 1.25)
    assert step_flops.newest_report(False) == ("benchmarks/results/d.json", 1.25)


def test_search_batch_pairs_the_two_rows_of_each_round():
    from benchmarks.search_batch import summarize
    measured = {8: {"times": {1: [1.0, 2.0], 6: [2.0, 3.0]}, "flops": {1: 10.0, 6: 15.0}, "params": {1: 5, 6: 50}},
                32: {"times": {1: [4.0], 6: [6.0]}, "flops": {1: 40.0, 6: 60.0}, "params": {1: 5, 6: 50}}}
    rows = summarize(measured)
    assert rows[8]["step_ratio_per_round"] == [2.0, 1.5]  # each round's six-head time over its own one-head time
    assert rows[8]["step_ratio_mean"] == pytest.approx(1.75) and rows[8]["step_ratio_std"] == pytest.approx(0.3536, 1e-3)
    assert rows[8]["flop_ratio"] == 1.5 and rows[8]["step_over_flop_ratio"] == pytest.approx(1.75 / 1.5)
    assert rows[32]["step_ratio_std"] is None and rows[32]["step_over_flop_ratio"] == pytest.approx(1.0)


def test_search_batch_writes_each_rounds_ratio_where_out_says(tmp_path, monkeypatch):
    import json
    import benchmarks.common as common
    import benchmarks.search_batch as search_batch
    measured = {8: {"times": {1: [1.0, 2.0], 6: [2.0, 3.0]}, "flops": {1: 10.0, 6: 15.0}, "params": {1: 5e6, 6: 50e6}}}
    monkeypatch.setattr(search_batch, "measure", lambda *a, **k: measured)
    monkeypatch.setattr(common, "machine_info", lambda: {})
    monkeypatch.setattr(common, "machine_line", lambda m: "machine")
    stem = tmp_path / "sb"
    assert search_batch.main(["--full", "--batches", "8", "--rounds", "2", "--out", str(stem)]) == 0
    md = (tmp_path / "sb.md").read_text()
    assert "| 8 | 1.500 | 2.500 | 1.750 ± 0.354 | 2.000, 1.500 | 1.500 |" in md
    assert "--rounds 2 --iters 3 --out " in md  # the command that reproduces it
    assert json.loads((tmp_path / "sb.json").read_text())["rows"]["8"]["step_ratio_per_round"] == [2.0, 1.5]


def test_summarize_gives_the_search_its_flop_ratio_and_says_when_the_goal_is_below_it(monkeypatch):
    import benchmarks.run as run
    monkeypatch.setattr(run, "machine_line", lambda m: "machine")
    rows = [_row("search-1head jittor", median_s=1.0, flops=10e9), _row("search-6heads jittor", median_s=2.0, flops=15e9)]
    figures, md = run.summarize(rows, _META)
    assert figures["six_head_search_over_one_head_step"] == 2.0
    assert figures["six_head_search_over_one_head_flops"] == 1.5  # counted FLOPs, not times
    assert figures["six_head_search_step_ratio_over_flop_ratio"] == pytest.approx(2.0 / 1.5)
    assert "1.4 goal asks for fewer FLOPs than the search needs" in md
    rows[1]["result"]["flops"] = 12e9
    figures, md = run.summarize(rows, _META)
    assert figures["six_head_search_over_one_head_flops"] == pytest.approx(1.2)
    assert "1.4 leaves 1.17x over the FLOP ratio for everything else" in md


def test_vit_bf16_rows_pair_jittor_amp_with_torch_autocast_on_the_same_model(monkeypatch):
    import benchmarks.run as run
    from benchmarks.run import plan, summarize
    monkeypatch.setattr(run, "machine_line", lambda m: "machine")
    rows = {label: spec for _, label, spec in plan(True)}
    for name in ("ViT-T/4 @32 b64", "ViT-S/16 @224 b8"):
        jb, tb, fp = rows[f"{name} jittor fast bf16"], rows[f"{name} torch bf16"], rows[f"{name} torch"]
        assert jb["amp"] and tb["amp"] and jb["fast"] and not fp.get("amp")
        same = ("arch", "patch", "img", "batch")
        assert {k: jb[k] for k in same} == {k: tb[k] for k in same} == {k: fp[k] for k in same}
    results = [{"section": "vit", "label": "ViT-S/16 @224 b8 jittor fast bf16", "spec": {}, "result": {"img_per_s": 6.0}},
               {"section": "vit", "label": "ViT-S/16 @224 b8 torch bf16", "spec": {}, "result": {"img_per_s": 4.0}},
               {"section": "vit", "label": "ViT-T/4 @32 b64 jittor fast bf16", "spec": {},
                "result": {"unavailable": "this CPU has no AVX512_BF16/AMX"}}]
    _, md = summarize(results, _META)
    assert "| ViT-S/16 @224 b8 | 6.0 | 4.0 | 1.50 |" in md
    assert "| ViT-T/4 @32 b64 | this CPU has no AVX512_BF16/AMX |" in md


def test_attention_tokens_times_both_ways_and_writes_its_report(tmp_path):
    import json
    from benchmarks import attention_tokens
    from models.layers import attention
    before = attention.FUSED_MAX_TOKENS
    out = str(tmp_path / "fa")
    longer = before + 1
    attention_tokens.main(["--tokens", "3", str(longer), "--batch", "2", "--heads", "2", "--head-dim", "4",
                           "--rounds", "2", "--iters", "1", "--out", out])
    assert attention.FUSED_MAX_TOKENS == before  # restored after forcing each way
    [stem] = [str(p)[:-5] for p in tmp_path.glob("fa-*.json")]  # the machine's name appended
    rec = json.load(open(stem + ".json"))
    assert set(rec["runs"]) == {"3", str(longer)} and all(len(v["fused"]) == len(v["split"]) == 2 for v in rec["runs"].values())
    md = open(stem + ".md").read()
    assert "| 3 |" in md and "| fused |" in md and "| split |" in md  # 3 <= the limit < longer
    with pytest.raises(SystemExit, match="positive"):
        attention_tokens.main(["--tokens", "0", "--out", out])


def test_memory_breakdown_parses_the_profiler_and_sorts_live_allocations_by_shape():
    from benchmarks.memory_breakdown import ACTIVATIONS, DIV_FIELD, DIV_VAR, PARAM_SHAPED, classify, parse_peak_vars
    info = DIV_VAR.join(["600",
                         f"Var(7:0:1:1:i0:o1:s1:n0:g1,float32,,7f00)[4,8,]{{x}}{DIV_FIELD}128{DIV_FIELD}",
                         f"Var(9:0:1:1:i0:o1:s1:n0:g0,float32,,7f10)[4,8,]{{x}}{DIV_FIELD}128{DIV_FIELD}",
                         f"Var(11:0:1:1:i1:o1:s1:n1:g0,float32,,7f20)[2,3,4,]{DIV_FIELD}96{DIV_FIELD}",
                         f"Var(12:0:1:1:i1:o1:s1:n1:g0,float32,,7f30)[2,3,4,]{DIV_FIELD}96{DIV_FIELD}",
                         f"Var(13:0:1:1:i1:o1:s1:n1:g0,float32,,7f40)[16,]{DIV_FIELD}64{DIV_FIELD}"])
    total, live = parse_peak_vars(info)
    assert total == 600 and live[0] == ("7f00", (4, 8), 128) and live[2] == ("7f20", (2, 3, 4), 96)
    cats, acts = classify(live, {(4, 8), (16,)})
    assert cats == {PARAM_SHAPED: 128 + 128 + 64, ACTIVATIONS: 192} and acts == {(2, 3, 4): 192}


@pytest.mark.slow  # four tiny iBOT steps with the memory profiler on: ~20 s
def test_memory_breakdown_finds_the_head_and_the_state_of_every_parameter_at_the_peak():
    from benchmarks.memory_breakdown import ACTIVATIONS, PARAM_SHAPED, worker
    spec = dict(method="ibot", arch="vit_tiny", patch=16, local=16, n_local=2, batch=2, depth=1, label="x")
    spec["global"] = 32
    base, hssl = worker(dict(spec, heads=[])), worker(dict(spec, heads=["convnext"]))
    assert "aux_head" in hssl["n_params"] and "aux_head" not in base["n_params"]
    for r in (base, hssl):
        cats, n = r["categories"], sum(r["n_params"].values())
        # at any point of the step each trained parameter has a value, a teacher copy and two moments
        assert cats[PARAM_SHAPED] >= 16 * n and cats[ACTIVATIONS] > 0
        assert r["peak_live_bytes"] == sum(cats.values()) and r["peak_rss_mb"] > 0
    assert hssl["peak_live_bytes"] > base["peak_live_bytes"]


def test_json_worker_returns_the_last_json_line_and_names_what_failed(tmp_path):
    from benchmarks.common import run_json_worker
    script = tmp_path / "w.py"
    script.write_text("import json, sys\np = json.loads(sys.argv[2])\nif p['fail']:\n    sys.exit('boom: ' + p['why'])\n"
                      "print('{\"not\": \"this\"}')\nprint(json.dumps({'got': p['x'] * 2}))\n")
    assert run_json_worker(str(script), {"fail": False, "x": 21}, 60, "the step") == {"got": 42}
    with pytest.raises(SystemExit, match=r"w.py: the step failed: boom: bad input"):
        run_json_worker(str(script), {"fail": True, "why": "bad input"}, 60, "the step")


# ----------------------------------------------------------------------------- benchmarks/op_profile.py
def test_op_profile_sorts_jittor_op_names_into_kinds():
    from benchmarks.op_profile import op_kind
    cases = {  # op names as Jittor's profiler reports them (JIT keys, shortened)
        "mkl_matmul«T:float32«Trans_a:N«Trans_b:T«JIT:1«JIT_cpu:1": "GEMM (oneDNN products)",
        "dnnl_bmm«T:float32«Trans_a:N«Trans_b:T«Bf16:0«Bias:0«JIT:1": "GEMM (oneDNN products)",
        "cpu_attention_backward«T:float32«JIT:1": "attention, fused (cpu_attention)",
        "mkl_conv«Tx:float32«Ty:float32«JIT:1": "convolution",
        "cpu_dwconv_nhwc_grad_w«T:float32«JIT:1": "convolution",
        "cpu_layer_norm_grad_wb«T:float32«BIAS:0«JIT:1": "LayerNorm",
        "cpu_gelu_backward«T:float32«JIT:1": "GELU",
        "cpu_softmax«T:float32«JIT:1": "softmax, cross-entropy",
        "cpu_soft_cross_entropy_backward«T:float32«JIT:1": "softmax, cross-entropy",
        'code«IN_SIZE:4«HEADER:«CODE:const float decay = data["decay"], b0 = data["b0"];': "AdamW update",
        "«opkey0:fuse_transpose«Tx:float32«DIM=5«BC:1«JIT:1": "copies (transpose, index, concat)",
        "setitem«OP:void«Td:float32«BMASK=2«JIT:1": "copies (transpose, index, concat)",
        "«opkey0:reduce«Tx:float32«OP:add«DIM=3«REDUCE=3«JIT:1": "reductions (bias gradients, norms)",
        "«opkey0:binary«Tx:float32«OP:multiply«opkey1:reduce«Tx:float32«OP:add«DIM=2«JIT:1":
            "reductions (bias gradients, norms)",
        "«opkey0:broadcast_to«Tx:float32«DIM=3«opkey1:binary«Tx:float32«OP:add«JIT:1": "elementwise (fused by Jittor)",
    }
    for name, kind in cases.items():
        assert op_kind(name) == kind, name


def test_op_profile_splits_a_real_step_and_bounds_its_speedup_by_the_gemm_time():
    from benchmarks.op_profile import GEMM_KINDS, KINDS, render, target_figures, worker_jittor
    spec = dict(kind="vit", arch="vit_tiny", patch=8, img=16, batch=2, label="tiny", warmup=0, iters=1, profiled=1)
    res = worker_jittor(spec)
    kinds = res["kinds"]
    assert set(kinds) <= set(KINDS) and kinds["GEMM (oneDNN products)"]["ms"] > 0
    # 12 blocks x (qkv, proj, fc1, fc2) linear layers: forward and two gradient products each
    assert kinds["GEMM (oneDNN products)"]["ops"] >= 12 * 4 * 3
    assert res["flops"] > 0 and res["gemm_peak_gflops"] > 0 and res["step_s"] > 0
    assert 5.3e6 < res["n_params"] < 5.5e6  # ViT-T (5.38 M here): the parameters AdamW runs over
    f = target_figures([{"jittor": res, "torch": {"step_s": 2 * res["step_s"]}}])
    op_ms = sum(v["ms"] for v in kinds.values())
    gemm_ms = sum(kinds[k]["ms"] for k in GEMM_KINDS if k in kinds)
    assert f["gemm_share"][0] == pytest.approx(gemm_ms / op_ms) and 0 < f["gemm_share"][0] <= 1
    assert f["max_speedup"][0] == pytest.approx(op_ms / gemm_ms) and f["max_speedup"][0] >= 1
    assert f["jittor_over_torch"][0] == pytest.approx(2.0)
    assert f["jittor_over_torch_ceiling"][0] == pytest.approx(2e3 * res["step_s"] / gemm_ms)
    meta = dict(command="python benchmarks/op_profile.py", machine={}, loadavg_start=[0], loadavg_end=[0],
                date="d", time_utc="t", rounds=1)
    import benchmarks.op_profile as op_profile
    op_profile.TARGETS["tiny"] = spec
    try:
        md = render(meta, {"tiny": f})
    finally:
        del op_profile.TARGETS["tiny"]
    assert "| GEMM (oneDNN products) |" in md and "ceiling: Jittor / torch" in md


def test_op_profile_names_an_unknown_target_before_measuring():
    from benchmarks.op_profile import main
    with pytest.raises(SystemExit, match="unknown target.*'vit-b16'.*choose from vit-t4, vit-s16, demo"):
        main(["--targets", "vit-t4,vit-b16"])


def test_op_profile_demo_amp_takes_the_recipes_precision_and_says_which(monkeypatch):
    import jittor as jt
    import jhssl.amp as amp
    from benchmarks.op_profile import TARGETS, _jittor_demo_step
    monkeypatch.setattr(amp, "cpu_has_bf16", lambda: True)
    assert _jittor_demo_step(TARGETS["demo-amp"], jt)[2].startswith("bf16 linear/attention products")
    assert _jittor_demo_step(TARGETS["demo"], jt)[2] == "fp32"  # the demo target overrides amp=false
    monkeypatch.setattr(amp, "cpu_has_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no bf16 instructions"):
        assert _jittor_demo_step(TARGETS["demo-amp"], jt)[2] == "fp32"


def test_fused_ab_builds_each_variant_with_its_own_switch():
    from jhssl import perf
    import jhssl.methods.losses as losses
    from models.layers import attention
    from benchmarks.fused_ab import _built_with_fast_kernels, attention_variant, bias_variant, loss_variant, main
    seen = []
    plain = _built_with_fast_kernels(lambda: seen.append(perf.fast_kernels_enabled()), False)
    with perf.fast_kernels(True):
        plain()
        assert perf.fast_kernels_enabled()  # restored after the loss is built
    assert seen == [False]
    original = losses.soft_cross_entropy
    with loss_variant("plain"):
        assert losses.soft_cross_entropy is not original
    assert losses.soft_cross_entropy is original
    limits = attention.FUSED_MAX_TOKENS, attention.FUSED_MAX_TOKENS_BF16
    with attention_variant("split"):  # no sequence takes the fused op, fp32 or bf16
        assert (attention.FUSED_MAX_TOKENS, attention.FUSED_MAX_TOKENS_BF16) == (0, 0)
    with attention_variant("fused"):
        assert (attention.FUSED_MAX_TOKENS, attention.FUSED_MAX_TOKENS_BF16) == limits
    assert (attention.FUSED_MAX_TOKENS, attention.FUSED_MAX_TOKENS_BF16) == limits
    with bias_variant("separate"):
        assert not perf.fused_bias_enabled()
        with bias_variant("fused"):
            assert perf.fused_bias_enabled()
    assert perf.fused_bias_enabled()
    with pytest.raises(SystemExit, match="--path loss targets must be among .*hssl-quick.*got 'vit-t4'"):
        main(["--targets", "vit-t4"])
    with pytest.raises(SystemExit, match="--path allocator targets must be among vit-t4, vit-s16, demo"):
        main(["--path", "allocator", "--targets", "hssl-quick"])
    with pytest.raises(SystemExit, match="--path attention targets must be among vit-t4, vit-s16, demo"):
        main(["--path", "attention", "--targets", "hssl-quick"])


def test_fused_ab_allocator_path_empties_the_cache_after_each_freed_step_only(monkeypatch):
    import jittor as jt
    from benchmarks import fused_ab
    monkeypatch.setitem(fused_ab.TARGETS, "tiny", dict(kind="vit", arch="vit_tiny", patch=16, img=32, batch=2,
                                                       label="tiny"))
    calls = []
    real_gc = jt.gc
    monkeypatch.setattr(jt, "gc", lambda: (calls.append(1), real_gc()))
    rows = fused_ab.measure("allocator", "tiny", rounds=2, iters=1)
    assert len(calls) == 2 + 2 * 1  # the compile pass's 2 "freed" steps, then one per round; none when "kept"
    assert len(rows) == 2 and all(r["freed_s"] > 0 and r["kept_s"] > 0 and r["kept_minor_faults"] >= 0
                                  and r["freed_sys_s"] >= 0 for r in rows)
