"""The GPU benchmark's profile summary (benchmarks/gpu_train_throughput.py): it decides what the next
device session optimises, so its arithmetic and kernel families are checked here on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_train_throughput as bench  # noqa: E402


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "gemm"),
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopB_TNT", "gemm"),
        ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>", "attention"),
        ("triton_per_fused_add_native_layer_norm_3", "compiled (triton)"),
        ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
        ("Memcpy HtoD (Pinned -> Device)", "copy / cast / fill"),
        ("aten::mm", "gemm"),
        ("some_new_kernel", "other"),
    ],
)
def test_kernel_families(name, family):
    assert bench.kernel_family(name) == family


def test_summary_is_per_step_and_shares_add_up():
    events = [("aten::mm", 30.0, 20), ("triton_poi_fused_0", 6.0, 40), ("flash_fwd_kernel", 4.0, 2)]
    s = bench.kernel_time_summary(events, wall_ms=50.0, steps=2, top=2)
    assert s["kernel_ms_per_step"] == pytest.approx(20.0) and s["wall_ms_per_step"] == pytest.approx(25.0)
    assert s["busy"] == pytest.approx(0.8)
    assert list(s["families"]) == ["gemm", "compiled (triton)", "attention"]  # largest first
    assert sum(f["share"] for f in s["families"].values()) == pytest.approx(1.0)
    assert [k["name"] for k in s["top"]] == ["aten::mm", "triton_poi_fused_0"]
    assert s["top"][0]["calls_per_step"] == 10


def test_profiling_a_cpu_step_finds_its_matmuls():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    s = bench.profile_model_steps(lambda: (a @ b).relu_(), 3, torch.device("cpu"))
    assert s["steps"] == 3 and s["families"]["gemm"]["share"] > 0.5
