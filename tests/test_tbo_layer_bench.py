"""The layer benchmark's derived numbers (pure arithmetic over measured times)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import tbo_layer_bench  # noqa: E402


def row(comm, layers, compute, comm_ms, serial, overlapped):
    t = {"compute": compute, "comm": comm_ms, "serial": serial, "overlapped": overlapped}
    return {"comm": comm, "shape": "s", "tokens_per_rank": 8192, "layers": layers, **tbo_layer_bench.derived(t)}


def test_slower_comm_raises_efficiency_but_not_the_gain_over_default_nccl():
    """Numbers of the 2xH200 DeepSeek-V3 cell (2026-11-23, per layer): 2 CTAs hid 82% of a comm
    6x longer, and ended slower than default NCCL run serially."""
    default = row("nccl", 4, 14.88, 1.12, 16.42, 16.06)
    ctas2 = row("nccl-ctas2", 4, 15.32, 7.17, 20.97, 16.58)
    out = tbo_layer_bench.against_nccl_serial([default, ctas2])
    assert ctas2["overlap_efficiency"] > 0.8 > default["overlap_efficiency"]
    assert out[1]["vs_nccl_serial"] == round(16.42 / 16.58, 3) < 1.0
    assert out[0]["vs_nccl_serial"] == round(16.42 / 16.06, 3)


def test_rows_without_a_default_nccl_baseline_are_left_as_they_are():
    ce = row("copy-engine", 4, 10.0, 1.0, 11.0, 10.5)
    other_depth = row("nccl", 12, 30.0, 3.0, 33.0, 31.0)
    assert tbo_layer_bench.against_nccl_serial([ce, other_depth])[0] == ce
    per_layer = tbo_layer_bench.marginal([row("nccl", 4, 10, 1, 11, 10.5), row("nccl", 12, 30, 3, 33, 31)])
    assert per_layer[0]["serial_ms"] == 2.75 and "vs_nccl_serial" in tbo_layer_bench.against_nccl_serial(per_layer)[0]
