"""The FLOP count the benchmark suite reports (benchmarks/run.py) against hand-counted FLOPs."""
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
