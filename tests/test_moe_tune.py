"""The MoE config tuner's pure parts, and the tuned files read back by SGLang 0.5.17's own loader
through the directory the benchmarks hand servers (SGLANG_MOE_CONFIG_DIR)."""

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import admission_ab  # noqa: E402
import moe_tune  # noqa: E402
import serving  # noqa: E402

KEYS = {"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages"}


def test_search_space_has_small_tiles_for_decode_and_large_for_prefill():
    small, large = moe_tune.search_space(64), moe_tune.search_space(8192)
    for space in (small, large):
        assert all(set(c) == KEYS for c in space)
        assert len({tuple(sorted(c.items())) for c in space}) == len(space)
    assert max(c["BLOCK_SIZE_M"] for c in small) <= 64 < max(c["BLOCK_SIZE_M"] for c in large)
    assert min(c["BLOCK_SIZE_M"] for c in large) >= 64
    assert moe_tune.search_space(moe_tune.SMALL_M) == small
    assert moe_tune.search_space(moe_tune.SMALL_M + 1) == large


def test_best_config_is_the_fastest():
    a, b, c = ({"BLOCK_SIZE_M": m} for m in (16, 32, 64))
    assert moe_tune.best_config([(a, 2.0), (b, 0.5), (c, 1.0)]) == (b, 0.5)


@pytest.fixture
def sglang_loader(monkeypatch):
    """SGLang's real get_moe_configs, naming files for an H200 (the CPU has no GPU name)."""
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_moe_triton_config as cfg

    monkeypatch.setattr(cfg, "get_device_name", lambda: "NVIDIA H200")
    from sglang.srt.runtime_context import reset_context

    moe_tune.publish_server_args(str(REPO / "models" / "deepseek-v3-width"), device="cpu")
    cfg.get_moe_configs.cache_clear()
    yield cfg
    cfg.get_moe_configs.cache_clear()
    reset_context()


def test_sglang_reads_tuned_tables_laid_over_its_own(tmp_path, monkeypatch, sglang_loader):
    import triton

    cfg = sglang_loader
    table = {1: moe_tune.search_space(1)[0], 8192: moe_tune.search_space(8192)[5]}
    name = cfg.get_config_file_name(257, 512, None)
    assert name == "E=257,N=512,device_name=NVIDIA_H200.json"
    path = moe_tune.write_config_table(str(tmp_path / "tuned"), triton.__version__, name, table)
    assert json.loads(Path(path).read_text()) == {str(m): c for m, c in table.items()}

    # without the tuned files SGLang has nothing for bf16 E=257 on H200 and uses its default
    assert cfg.get_moe_configs(257, 512, None) is None
    stock_qwen = cfg.get_moe_configs(128, 384, None)
    assert stock_qwen  # Qwen3-235B widths at TP4: SGLang's own (Triton 3.2.0's directory)

    merged = serving.moe_config_dir(str(tmp_path / "tuned"), str(tmp_path / "merged"))
    monkeypatch.setenv("SGLANG_MOE_CONFIG_DIR", merged)
    cfg.get_moe_configs.cache_clear()
    assert cfg.get_moe_configs(257, 512, None) == table
    assert cfg.get_moe_configs(128, 384, None) == stock_qwen  # SGLang's own still found
    # SGLang's own files are linked, not copied
    version_dir = Path(merged, "configs", "triton_" + triton.__version__.replace(".", "_"))
    assert not (version_dir / name).is_symlink()
    assert any(p.is_symlink() for p in version_dir.iterdir())


def test_moe_config_dir_refuses_a_directory_without_configs(tmp_path):
    with pytest.raises(RuntimeError, match="no configs/ directory"):
        serving.moe_config_dir(str(tmp_path), str(tmp_path / "merged"))


def test_shipped_tables_are_in_sglang_format():
    root = Path(serving.SHIPPED_MOE_CONFIGS, "configs")
    files = list(root.glob("triton_*/*.json"))
    assert files, "benchmarks/moe_configs holds no tuned tables"
    for f in files:
        table = json.loads(f.read_text())
        assert all(int(m) > 0 and set(c) == KEYS for m, c in table.items()), f


def test_admission_ab_hands_every_server_the_tuned_configs(tmp_path, monkeypatch):
    envs = []

    class Recorder:
        def __init__(self, args, log_path, port=30000, env=None):
            envs.append(env)
            Path(log_path).write_text("not started\n")
            raise RuntimeError("not started in this test")

    monkeypatch.setattr(admission_ab, "Server", Recorder)
    assert admission_ab.main(["--configs", "plain,atom", "--moe-configs", "shipped", "--concurrency", "4",
                              "--repeats", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ab.json").read_text())
    assert result["moe_configs"] == "shipped"
    assert len(envs) == 2 and envs[0] == envs[1]
    config_dir = envs[0]["SGLANG_MOE_CONFIG_DIR"]
    assert os.path.isdir(os.path.join(config_dir, "configs"))
    assert envs[0]["SGLANG_ENABLE_METRICS_DEVICE_TIMER"] == "1"


def test_a_server_refused_before_it_starts_is_recorded(tmp_path, monkeypatch):
    """A port still taken stops a server before its log exists (seen on 1xH200, 2026-11-23);
    the matrix records that and goes on instead of failing on the missing log."""

    class PortTaken:
        def __init__(self, args, log_path, port=30000, env=None):
            pass

        def __enter__(self):
            raise RuntimeError("port 30000 is in use")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(admission_ab, "Server", PortTaken)
    assert admission_ab.main(["--configs", "plain", "--concurrency", "4", "--repeats", "1",
                              "--out", str(tmp_path)]) == 0
    failed = json.loads((tmp_path / "ab.json").read_text())["failed_configs"]["plain"]
    assert "port 30000 is in use" in failed and "no server log" in failed


def test_deepseek_scenarios_run_the_tuned_configs():
    for name, scenario in admission_ab.SCENARIOS.items():
        deepseek = "deepseek" in scenario["model"]
        assert (scenario.get("moe_configs") == "shipped") == deepseek, name


def test_fp8_tables_are_the_ones_sglang_reads_for_block_fp8_experts(tmp_path, monkeypatch, sglang_loader):
    import triton

    cfg = sglang_loader
    name = moe_tune.config_file_name(257, 512, "fp8")
    assert name == "E=257,N=512,device_name=NVIDIA_H200,dtype=fp8_w8a8,block_shape=[128, 128].json"
    table = {8192: moe_tune.search_space(8192)[0]}
    moe_tune.write_config_table(str(tmp_path / "tuned"), triton.__version__, name, table)
    monkeypatch.setenv("SGLANG_MOE_CONFIG_DIR", str(tmp_path / "tuned"))
    assert cfg.get_moe_configs(257, 512, "fp8_w8a8", 128, 128) == table


def test_tuned_entries_go_on_top_of_the_table_sglang_would_read(sglang_loader):
    """A tuning run covers a few M; SGLang takes the entry nearest each batch's M from the one
    file it finds, so a file of those entries alone would retune every other M by accident."""
    import triton

    cfg = sglang_loader
    fp8 = moe_tune.config_file_name(257, 512, "fp8")
    path, table = moe_tune.stock_table(fp8, triton.__version__)
    assert path and len(table) > 10  # SGLang ships FP8 block tables for DeepSeek-V3's TP4 shape
    assert table == cfg.get_moe_configs(257, 512, "fp8_w8a8", 128, 128)
    assert moe_tune.stock_table(moe_tune.config_file_name(257, 512, "bf16"), triton.__version__) == (None, {})


def test_shipped_tables_keep_every_entry_of_the_sglang_table_they_replace():
    import triton

    version = "triton_" + triton.__version__.replace(".", "_")
    folder = REPO / "benchmarks" / "moe_configs" / "configs" / version
    replaced = 0
    for path in folder.glob("*.json"):
        stock_path, stock = moe_tune.stock_table(path.name, triton.__version__)
        if stock_path:
            replaced += 1
            assert set(stock) <= {int(m) for m in json.loads(path.read_text())}, path.name
    assert replaced == 1  # the FP8 DeepSeek-V3 TP4 table; SGLang has no bf16 table for E=256/257


def test_a_search_run_keeps_sglang_entries_for_the_m_it_did_not_tune(tmp_path, monkeypatch):
    import triton

    monkeypatch.setattr(moe_tune, "publish_server_args", lambda model: None)
    monkeypatch.setattr(moe_tune, "config_file_name", lambda e, n, d: "stock.json")
    stock = ("/stock/stock.json", {1: {"s": 1}, 16384: {"s": 2}})
    monkeypatch.setattr(moe_tune, "stock_table", lambda name, v: (stock[0], dict(stock[1])))
    tuned = {"BLOCK_SIZE_M": 128}
    monkeypatch.setattr(moe_tune, "tune_shape", lambda e, n, h, k, ms, narrow, dtype, search: dict(
        rows=[dict(m=m, config=tuned) for m in ms]))
    moe_tune.main(["--shapes", "257:512", "--batch-sizes", "16384", "--out", str(tmp_path)])
    folder = tmp_path / "configs" / ("triton_" + triton.__version__.replace(".", "_"))
    assert json.loads((folder / "stock.json").read_text()) == {"1": {"s": 1}, "16384": tuned}
    shape = json.loads((tmp_path / "moe_tune.json").read_text())["shapes"][0]
    assert shape["stock_file"] == "/stock/stock.json"


def test_fp8_blocks_keep_each_block_to_fp8_precision_with_its_own_scale():
    import torch

    w = torch.randn(256, 384, generator=torch.Generator().manual_seed(0))
    w[:128, :128] *= 1000  # one loud block must not cost the others their precision
    q, scale = moe_tune.quantize_fp8_blocks(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert scale.shape == (2, 3) and scale.dtype == torch.float32
    back = (q.float().view(2, 128, 3, 128) * scale[:, None, :, None]).view(256, 384)
    # e4m3 keeps 3 mantissa bits: a rounding error of at most 1/16 of the value, plus the
    # subnormal step (2^-9 of the block's scale) near zero
    bound = w.abs() / 16 + 2.0 ** -9 * scale.repeat_interleave(128, 0).repeat_interleave(128, 1)
    assert ((back - w).abs() <= bound).all()
    assert torch.allclose(q.float().view(2, 128, 3, 128).abs().amax(dim=(1, 3)), torch.full((2, 3), 448.0))
    assert scale[0, 0] > 500 * scale[1, 1]


def test_fp8_blocks_refuse_a_shard_that_is_not_whole_blocks():
    import torch

    with pytest.raises(ValueError, match="192"):  # Qwen3-235B's experts at TP8: 1536 / 8
        moe_tune.quantize_fp8_blocks(torch.zeros(384, 192))


def test_fp8_expert_weights_ask_fused_experts_for_its_block_kernel():
    import torch

    w1, w2, kwargs = moe_tune.expert_weights(3, 256, 128, torch.device("cpu"), "fp8")
    assert w1.shape == (3, 512, 128) and w2.shape == (3, 128, 256) and w1.dtype == torch.float8_e4m3fn
    assert kwargs["use_fp8_w8a8"] and kwargs["block_shape"] == [128, 128]
    assert kwargs["w1_scale"].shape == (3, 4, 1) and kwargs["w2_scale"].shape == (3, 1, 2)
    again = moe_tune.expert_weights(3, 256, 128, torch.device("cpu"), "fp8")
    assert torch.equal(w1.float(), again[0].float()), "the same seed must give every rank the same weights"
    w1_bf16, _, none = moe_tune.expert_weights(3, 256, 128, torch.device("cpu"), "bf16")
    assert none == {} and w1_bf16.dtype == torch.bfloat16
    assert abs(w1_bf16.float().std().item() - 128 ** -0.5) < 0.01  # std: one over the root of the fan-in
    with pytest.raises(ValueError, match="bf16 or fp8"):
        moe_tune.expert_weights(3, 256, 128, torch.device("cpu"), "int4")


def test_no_search_times_sglangs_choice_only_and_writes_no_table(tmp_path, monkeypatch):
    """On 1xH200 (2026-11-24) --no-search stopped after its first shape: nothing had made the
    output folder, which until then only a written table did."""
    calls = []

    def fake_time(experts, inter, hidden, topk, m, config, iters, dtype):
        calls.append((experts, inter, m, config, dtype))
        return 0.001 * inter / 512

    monkeypatch.setattr(moe_tune, "time_fused_moe", fake_time)
    monkeypatch.setattr(moe_tune, "publish_server_args", lambda model: None)
    out = tmp_path / "out"
    assert moe_tune.main(["--dtype", "fp8", "--no-search", "--shapes", "257:512,257:256",
                          "--batch-sizes", "32768", "--out", str(out)]) == 0
    assert calls == [(257, 512, 32768, None, "fp8"), (257, 256, 32768, None, "fp8")]
    result = json.loads((out / "moe_tune.json").read_text())
    assert [(s["inter"], s["dtype"], s["rows"]) for s in result["shapes"]] == [
        (512, "fp8", [{"m": 32768, "sglang_ms": 1.0}]), (256, "fp8", [{"m": 32768, "sglang_ms": 0.5}])]
    assert not (out / "configs").exists()
