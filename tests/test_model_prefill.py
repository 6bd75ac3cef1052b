"""model_prefill.py: the model folders it hands SGLang's one-batch benchmark, read back by SGLang
0.5.17 and transformers on the CPU, and its command parsed by SGLang's own parser."""

import argparse
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import model_prefill  # noqa: E402


@pytest.mark.parametrize("weights", ["bf16", "fp8"])
def test_sglang_reads_the_fp8_block_checkpoint_config_and_transformers_the_tokenizer(tmp_path, weights):
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.server_args import prepare_server_args
    from transformers import AutoTokenizer

    folder = model_prefill.write_model_dir(str(REPO / "models" / "deepseek-v3-width"), weights, str(tmp_path / "m"))
    config = ModelConfig.from_server_args(prepare_server_args(["--model-path", folder, "--device", "cpu"]))
    if weights == "fp8":
        assert config.quantization == "fp8"
        assert config.hf_config.quantization_config["weight_block_size"] == [128, 128]
    else:
        assert config.quantization is None
    assert config.hf_config.hidden_size == 7168  # the rest of the shipped config is kept
    assert AutoTokenizer.from_pretrained(folder).encode("token token") == [1, 1]


def test_a_config_that_is_already_quantized_or_a_weight_kind_it_does_not_know_is_refused(tmp_path):
    quantized = tmp_path / "q"
    quantized.mkdir()
    (quantized / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "fp8"}}))
    with pytest.raises(ValueError, match="already has a quantization_config"):
        model_prefill.write_model_dir(str(quantized), "fp8", str(tmp_path / "out"))
    with pytest.raises(ValueError, match="bf16 and fp8"):
        model_prefill.write_model_dir(str(REPO / "models" / "qwen3-235b-width"), "int4", str(tmp_path / "out"))


def test_the_command_is_one_sglangs_one_batch_benchmark_parses(tmp_path):
    from sglang.benchmark.one_batch import BenchArgs
    from sglang.srt.server_args import ServerArgs

    cmd = model_prefill.one_batch_command("/m", 8192, 3, str(tmp_path / "r.jsonl"), ["--mem-fraction-static", "0.8"])
    assert cmd[1:3] == ["-m", "sglang.benchmark.one_batch"]
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    BenchArgs.add_cli_args(parser)
    args = parser.parse_args(cmd[3:])
    bench = BenchArgs.from_cli_args(args)
    assert list(bench.input_len) == [8192] * 3 and list(bench.batch_size) == [1] and list(bench.output_len) == [1]
    assert args.load_format == "dummy" and args.mem_fraction_static == 0.8


def test_prefill_seconds_reads_one_batchs_result_lines(tmp_path):
    result = tmp_path / "r.jsonl"
    result.write_text("".join(json.dumps({"run_name": "before", "prefill_latency": s, "batch_size": 1}) + "\n"
                              for s in (0.11, 0.1)))
    assert model_prefill.prefill_seconds(str(result)) == [0.11, 0.1]


def test_layers_sets_the_decoder_depth_sglang_builds(tmp_path):
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.server_args import prepare_server_args

    folder = model_prefill.write_model_dir(str(REPO / "models" / "qwen3-235b-width"), "fp8", str(tmp_path / "m"), 6)
    config = ModelConfig.from_server_args(prepare_server_args(["--model-path", folder, "--device", "cpu"]))
    assert config.num_hidden_layers == 6 and config.quantization == "fp8"


def test_per_layer_is_the_slope_between_the_fewest_and_the_most_layers():
    runs = [dict(model="m", weights="bf16", layers=3, median_ms=60.0),
            dict(model="m", weights="bf16", layers=5, median_ms=112.0),
            dict(model="m", weights="fp8", layers=3, median_ms=45.0),
            dict(model="m", weights="fp8", layers=5, rc=1),  # failed: no slope for fp8
            dict(model="q", weights="bf16", layers=4, median_ms=38.8)]  # one depth only
    assert model_prefill.per_layer(runs) == [
        {"model": "m", "weights": "bf16", "layers": "3->5", "ms_per_layer": 26.0}]


def test_tbo_serving_serves_copies_named_after_their_model_and_refuses_them_in_checks(monkeypatch, capsys):
    import tbo_serving

    folders = tbo_serving.model_copies(f"{REPO}/models/deepseek-v3-width,{REPO}/models/qwen3-235b-width",
                                       "fp8").split(",")
    assert [Path(f).name for f in folders] == ["deepseek-v3-width-fp8", "qwen3-235b-width-fp8"]
    config = json.loads((Path(folders[0]) / "config.json").read_text())
    assert config["quantization_config"] == model_prefill.FP8_BLOCK_QUANTIZATION
    assert config["num_hidden_layers"] == 4  # the shipped depth unless --layers
    deeper = tbo_serving.model_copies(f"{REPO}/models/deepseek-v3-width", "bf16", 8)
    assert Path(deeper).name == "deepseek-v3-width-8l"
    config = json.loads((Path(deeper) / "config.json").read_text())
    assert config["num_hidden_layers"] == 8 and "quantization_config" not in config
    assert config["first_k_dense_replace"] == 1  # one dense layer, seven MoE layers
    assert Path(tbo_serving.model_copies(f"{REPO}/models/deepseek-v3-width", "fp8", 8)).name == \
        "deepseek-v3-width-fp8-8l"
    for flag in (["--weights", "fp8"], ["--layers", "8"]):
        monkeypatch.setattr(sys, "argv",
                            ["tbo_serving.py", "check", "--out", "unused", "--models", "m", *flag])
        with pytest.raises(SystemExit):
            tbo_serving.main()
        assert "use --weights fp8 and --layers with perf or profile" in capsys.readouterr().err
