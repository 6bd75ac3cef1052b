"""The layer benchmark: its derived numbers (pure arithmetic over measured times), argument checks,
rank-failure handling and the attention core's micro-batch prefix (on the CPU)."""

import sys
import time
from pathlib import Path

import pytest
import torch

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
    out = tbo_layer_bench.against_baselines([default, ctas2])
    assert ctas2["overlap_efficiency"] > 0.8 > default["overlap_efficiency"]
    assert out[1]["vs_nccl_serial"] == round(16.42 / 16.58, 3) < 1.0
    assert out[0]["vs_nccl_serial"] == round(16.42 / 16.06, 3)


def test_rows_without_a_default_nccl_baseline_are_left_as_they_are():
    ce = row("copy-engine", 4, 10.0, 1.0, 11.0, 10.5)
    other_depth = row("nccl", 12, 30.0, 3.0, 33.0, 31.0)
    assert tbo_layer_bench.against_baselines([ce, other_depth])[0] == ce
    per_layer = tbo_layer_bench.marginal([row("nccl", 4, 10, 1, 11, 10.5), row("nccl", 12, 30, 3, 33, 31)])
    assert per_layer[0]["serial_ms"] == 2.75 and "vs_nccl_serial" in tbo_layer_bench.against_baselines(per_layer)[0]


def test_dense_and_fused_expert_rows_of_one_cell_stay_apart():
    """A run with --experts dense,fused has two rows per (comm, shape, tokens, layers): the
    per-layer numbers and the NCCL baseline are taken within each expert kind, never across."""
    dense = [row("nccl", 4, 10, 1, 11, 10.5) | {"experts": "dense"},
             row("nccl", 12, 30, 3, 33, 31) | {"experts": "dense"}]
    fused = [row("nccl", 4, 20, 1, 21, 20.5) | {"experts": "fused"},
             row("nccl", 12, 60, 3, 63, 61) | {"experts": "fused"}]
    per_layer = {r["experts"]: r for r in tbo_layer_bench.marginal(dense + fused)}
    assert per_layer["dense"]["compute_ms"] == 2.5 and per_layer["fused"]["compute_ms"] == 5.0
    baselined = tbo_layer_bench.against_baselines(dense + fused)
    assert [r["vs_nccl_serial"] for r in baselined] == [round(11 / 10.5, 3), round(33 / 31, 3),
                                                        round(21 / 20.5, 3), round(63 / 61, 3)]


def test_expert_kinds_are_checked_before_any_rank_starts(capsys):
    for argv, says in ((["--experts", "dense,sparse"], "unknown ['sparse']"),
                       (["--device", "cpu", "--experts", "fused"], "use --device cuda"),
                       (["--device", "cpu", "--experts", "dense,fused-fp8"], "use --device cuda")):
        with pytest.raises(SystemExit):
            tbo_layer_bench.main(argv)
        assert says in capsys.readouterr().err


def test_a_rank_that_dies_stops_the_run_instead_of_a_wait_on_the_queue():
    """On 1xH200 (2026-11-23) a rank's exception left the parent waiting up to an hour for rows."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    dying = ctx.Process(target=sys.exit, args=(3,))
    dying.start()
    dying.join()
    with pytest.raises(SystemExit, match="rank 0 exited with code 3"):
        tbo_layer_bench.rank0_rows(ctx.Queue(), [dying], poll_s=0.1)


def _ops(tokens):
    """Tiny StandInOps with the attention core, on the CPU."""
    shape = dict(tbo_layer_bench.SHAPES["qwen3-235b-width"], hidden=64, inter=32, q_dim=256, kv_dim=16)
    experts = tbo_layer_bench.DenseExperts(shape, 1, torch.device("cpu"), torch.float32)
    return tbo_layer_bench.StandInOps(shape, 0, tokens, torch.device("cpu"), torch.float32, experts,
                                      attention_core=True)


def test_the_attention_core_of_two_micro_batches_is_that_of_the_whole_sequence():
    """--attention sdpa: micro-batch 1 attends to micro-batch 0 as its prefix, so the halves of
    one rank's tokens give the whole sequence's causal attention; without the prefix they do not."""
    for first, second in ((40, 56), (0, 96), (96, 0)):
        split, whole = _ops([first, second]), _ops([first + second])
        whole.x[0] = torch.cat([split.x[0], split.x[1]]).clone()
        halves = torch.cat([split.attention(0, 0), split.attention(1, 0)])
        assert torch.allclose(halves, whole.attention(0, 0), atol=1e-5)
    split, whole = _ops([40, 56]), _ops([96])
    whole.x[0] = torch.cat([split.x[0], split.x[1]]).clone()
    split.attention(0, 0)
    split.prefix = None  # as if micro-batch 1 ran without micro-batch 0's keys
    assert not torch.allclose(split.attention(1, 0), whole.attention(0, 0)[40:], atol=1e-2)


def test_micro_batch_1_may_not_use_another_layers_prefix():
    split = _ops([8, 8])
    split.attention(0, 0)
    with pytest.raises(AssertionError, match="micro-batch 0's attention must run first"):
        split.attention(1, 1)


def test_plain_sglang_rows_give_vs_plain_to_every_transport_of_their_cell():
    """vs_plain divides the cell's plain-SGLang time (measured over default NCCL only) by each
    row's overlapped time, per layer too."""
    def timed_row(comm, layers, overlapped, plain=None):
        t = {"compute": 10.0 * layers, "comm": 1.0 * layers, "serial": 11.0 * layers, "overlapped": overlapped}
        if plain:
            t |= {"plain": plain, "plain_comm": 2.0 * layers}
        return {"comm": comm, "shape": "s", "tokens_per_rank": 8192, "layers": layers, **tbo_layer_bench.derived(t)}

    rows = [timed_row("nccl", 4, 42.0, plain=48.0), timed_row("copy-engine", 4, 40.0),
            timed_row("nccl", 12, 122.0, plain=144.0), timed_row("copy-engine", 12, 120.0)]
    assert rows[0]["vs_plain"] == round(48 / 42, 3) and "vs_plain" not in rows[1]
    out = tbo_layer_bench.against_baselines(rows)
    assert [r["vs_plain"] for r in out] == [round(48 / 42, 3), round(48 / 40, 3), round(144 / 122, 3), 1.2]
    per_layer = tbo_layer_bench.against_baselines(tbo_layer_bench.marginal(rows))
    nccl, ce = sorted(per_layer, key=lambda r: r["comm"], reverse=True)
    assert nccl["plain_ms"] == 12.0 and nccl["plain_comm_ms"] == 2.0 and nccl["vs_plain"] == round(12 / 10, 3)
    assert "plain_ms" not in ce and ce["vs_plain"] == round(12 / 10, 3)


def test_the_benchmark_runs_on_gloo_and_checks_the_plain_sglang_baseline(tmp_path, capfd):
    """The whole script on 2 CPU ranks: every transport and the plain-SGLang baseline (two
    all-reduces of every rank's rows) must reproduce the serial layer on uneven rows before any
    timing (a baseline copying rows into the wrong slot fails this: checked by breaking it), and
    the JSON has the plain times and vs_plain."""
    import json

    assert tbo_layer_bench.main(["--gpus", "2", "--device", "cpu", "--quick", "--shapes", "qwen3-235b-width",
                                 "--out", str(tmp_path)]) == 0
    assert "check plain SGLang qwen3-235b-width dense experts" in capfd.readouterr().out  # rank 0 prints it
    result = json.loads((tmp_path / "tbo_layer.json").read_text())
    assert result["rows"] and all({"plain_ms", "plain_comm_ms", "vs_plain"} <= set(r) for r in result["rows"])
    assert all("vs_plain" in r for r in result["per_layer"])


def test_the_plain_sglang_baseline_gathers_like_an_all_gather_on_one_rank():
    """World 1 (gloo): the gather is the rows themselves, the scatter returns this rank's sums."""
    import os
    import tempfile

    import torch.distributed as dist

    init = tempfile.mktemp(prefix="plain_comm_")
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1)
    try:
        comm = tbo_layer_bench.SglangSumLenComm(dist.group.WORLD, 4, torch.float32, "cpu")
        comm.set_rows(0, [3])
        rows = torch.arange(12.0).view(3, 4)
        comm.issue_gather(0, rows)
        assert torch.equal(comm.wait_gather(0), rows)
        comm.issue_scatter(0, rows * 2)
        assert torch.equal(comm.wait_scatter(0), rows * 2)
    finally:
        dist.destroy_process_group()
        if os.path.exists(init):
            os.remove(init)


def test_comm_probe_times_the_collectives_on_gloo(tmp_path, capfd):
    """comm_probe.py on 3 CPU ranks: one row per size and skew, with the ratios of two
    all-reduces to all_gatherv + reduce_scatterv and to the padded all_gather + reduce_scatter,
    computed from its own times. The grouped collectives of unequal rows are checked for the
    rows they move before timing (a wrong gather or sum stops the run)."""
    import json

    import comm_probe

    assert comm_probe.rank_rows(8, 3, 0.5) == [8, 6, 4] and comm_probe.rank_rows(8, 2, 0) == [8, 8]
    assert comm_probe.main(["--gpus", "3", "--device", "cpu", "--hidden", "16", "--rows-per-rank", "4,8",
                            "--skews", "0,0.5", "--iters", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "comm_probe.json").read_text())["rows"]
    assert [(r["rows_per_rank"], r["skew"]) for r in rows] == [(4, 0), (4, 0.5), (8, 0), (8, 0.5)]
    assert rows[3]["rank_rows"] == [8, 6, 4] and all(r["world"] == 3 for r in rows)
    for r in rows:
        # the row's times are rounded to 3 decimals, its ratios were computed before rounding
        assert r["ratio"] == pytest.approx(2 * r["all_reduce_ms"] / (r["all_gatherv_ms"] + r["reduce_scatterv_ms"]),
                                           rel=0.05, abs=0.01)
        assert r["max_len_ratio"] == pytest.approx(
            2 * r["all_reduce_ms"] / (r["all_gather_ms"] + r["reduce_scatter_ms"]), rel=0.05, abs=0.01)
    # equal rows: the variable-size collectives are NCCL's own, the same times
    assert all(r["all_gatherv_ms"] == r["all_gather_ms"] for r in rows if r["skew"] == 0)
    # host cost of the transport's calls, at the first size; pynccl exists only on NCCL
    host = json.loads((tmp_path / "comm_probe.json").read_text())["host_us"]
    assert host["rows_per_rank"] == 4 and host["iters"] == 50 and host["c10d"] > 0
    assert host["pynccl"] is None and host["pynccl_skipped"].startswith("gloo")
    out = capfd.readouterr().out
    assert "all_reduce" in out and "c10d" in out and "pynccl gloo: pynccl is NCCL only" in out


def test_comm_probe_host_cost_divides_by_the_collectives_it_issued(monkeypatch):
    """host_us reports per collective: a pair of calls that takes 2 x 1 ms reads 1000 us."""
    import comm_probe

    calls = []

    def pair():
        calls.append(1)
        time.sleep(0.002)

    monkeypatch.setattr(comm_probe.dist, "barrier", lambda: None)  # no process group here
    us = comm_probe.host_us(pair, torch.device("cpu"), iters=5)
    assert len(calls) == 3 + 5  # warm-up, then timed
    assert 1000 <= us < 1900  # per pair (2000+) or counting the warm-up (625) would miss


def test_fp8_projections_go_through_sglangs_block_fp8_linear_dispatch():
    w = torch.randn(256, 384)
    matmul, name = tbo_layer_bench.projection(w, "bf16")
    x = torch.randn(5, 256)
    assert name == "matmul" and torch.equal(matmul(x), x @ w)
    # on a machine without deep_gemm, SGLang 0.5.17 serves block-FP8 linear layers with Triton
    _, name = tbo_layer_bench.projection(w, "fp8")
    assert name == "triton_w8a8_block_fp8_linear"

