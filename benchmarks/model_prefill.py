"""Prefill time of a whole shipped model on one GPU, bf16 against an FP8 block checkpoint of it.

    python3 benchmarks/model_prefill.py --models models/deepseek-v3-width,models/qwen3-235b-width \
        --weights bf16,fp8 --tokens 8192 --repeats 5 [--layers 3,5] [--moe-configs DIR] \
        --extra "--attention-backend flashinfer" --out DIR

The layer benchmark (`tbo_layer_bench.py`) times stand-ins for a layer's attention; this runs the
real model code instead, through SGLang's own `sglang.benchmark.one_batch` (one extend of
--tokens tokens, timed between device synchronizations, after its warm-up), with dummy weights.
For `fp8` the model's config gets the `quantization_config` of DeepSeek-V3's release (FP8 e4m3,
128 x 128 weight blocks, dynamic per-token activation scales), so SGLang builds every linear and
expert layer as it would for that checkpoint. The model folder is written to a temporary
directory with a throwaway word-level tokenizer: one_batch loads a tokenizer even for synthetic
prompts, and the shipped configs have none.

Which block-FP8 linear kernel runs is SGLang's choice: DeepGEMM where `deep_gemm` imports, else
Triton. --layers runs each model at those decoder depths; two of them give the time per added
layer (DeepSeek's dense first layer, the embedding and the LM head cancel out). On the device
bundle pass `--attention-backend flashinfer`: its sgl-kernel has no FA3, SGLang's Hopper default.
Writes DIR/model_prefill.json (command, machine, date, per model, weights and depth: every
repeat's prefill seconds and their median; the per-layer slopes) and one log per run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import MOE_CONFIGS_HELP, moe_configs_env, provenance, record_json  # noqa: E402

# DeepSeek-V3's release (config.json of deepseek-ai/DeepSeek-V3)
FP8_BLOCK_QUANTIZATION = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                          "weight_block_size": [128, 128]}


def write_model_dir(model: str, weights: str, dest: str, layers: int | None = None) -> str:
    """dest/ with model's config.json (plus the FP8 block quantization_config for 'fp8', and
    `layers` decoder layers if given) and a word-level tokenizer that transformers' AutoTokenizer
    loads. Returns dest."""
    if weights not in ("bf16", "fp8"):
        raise ValueError(f"--weights takes bf16 and fp8, not {weights!r}")
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    if "quantization_config" in config:
        raise ValueError(f"{model} already has a quantization_config; give this script a bf16 config")
    if weights == "fp8":
        config["quantization_config"] = dict(FP8_BLOCK_QUANTIZATION)
    if layers:
        config["num_hidden_layers"] = layers
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "token": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(os.path.join(dest, "tokenizer.json"))
    with open(os.path.join(dest, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}, f)
    return dest


def one_batch_command(model_dir: str, tokens: int, repeats: int, result_file: str, extra: list[str]) -> list[str]:
    """SGLang's one-batch benchmark: one prompt of `tokens`, timed `repeats` times after its warm-up."""
    return [sys.executable, "-m", "sglang.benchmark.one_batch", "--model-path", model_dir,
            "--load-format", "dummy", "--disable-cuda-graph", "--batch-size", "1",
            "--input-len", *[str(tokens)] * repeats, "--output-len", "1",
            "--result-filename", result_file, *extra]


def prefill_seconds(result_file: str) -> list[float]:
    """The prefill latencies one_batch wrote (JSON lines, one per timed run)."""
    with open(result_file) as f:
        return [json.loads(line)["prefill_latency"] for line in f if line.strip()]


def per_layer(runs: list[dict]) -> list[dict]:
    """Per added decoder layer, from the fewest and the most layers each (model, weights) ran:
    the steady-state layer time, without the embedding, the LM head and the dense first layers."""
    out = []
    for key in dict.fromkeys((r["model"], r["weights"]) for r in runs):
        done = sorted((r for r in runs if (r["model"], r["weights"]) == key and "median_ms" in r),
                      key=lambda r: r["layers"])
        if len(done) >= 2 and done[-1]["layers"] > done[0]["layers"]:
            lo, hi = done[0], done[-1]
            out.append({"model": key[0], "weights": key[1], "layers": f"{lo['layers']}->{hi['layers']}",
                        "ms_per_layer": round((hi["median_ms"] - lo["median_ms"]) / (hi["layers"] - lo["layers"]), 2)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="comma list of model folders with a bf16 config.json")
    ap.add_argument("--weights", default="bf16,fp8", help="comma list: bf16, fp8")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--layers", default="", help="comma list of decoder-layer counts to run each model "
                    "at (default: its config's); with two, also the time per added layer")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--timeout-s", type=float, default=300, help="per run")
    ap.add_argument("--extra", default="", help="more SGLang server arguments, one string")
    ap.add_argument("--moe-configs", default="sglang", help=MOE_CONFIGS_HELP)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    result = dict(provenance(), tokens=args.tokens, moe_configs=args.moe_configs, runs=[])
    env = {**os.environ, **moe_configs_env(args.moe_configs)}
    cells = [(m, w, int(n) if n else None) for m in args.models.split(",") for w in args.weights.split(",")
             for n in (args.layers.split(",") if args.layers else [""])]
    for model, weights, layers in cells:
        name = f"{os.path.basename(model.rstrip('/'))}_{weights}" + (f"_{layers}layers" if layers else "")
        tmp = tempfile.mkdtemp(prefix="model-prefill-")
        try:
            model_dir = write_model_dir(model, weights, os.path.join(tmp, "model"), layers)
            run = dict(model=model, weights=weights, layers=_layers(model_dir))
            result_file = os.path.join(tmp, "result.jsonl")
            cmd = one_batch_command(model_dir, args.tokens, args.repeats, result_file, args.extra.split())
            with open(os.path.join(args.out, f"{name}.log"), "w") as log:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      timeout=args.timeout_s)
            run["rc"] = proc.returncode
            if proc.returncode == 0:
                seconds = prefill_seconds(result_file)
                run |= {"prefill_s": seconds, "median_ms": round(statistics.median(seconds) * 1e3, 2)}
        except subprocess.TimeoutExpired:
            run["rc"] = "timeout"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
        result["per_layer"] = per_layer(result["runs"])
        record_json(os.path.join(args.out, "model_prefill.json"), result)
    for row in result["per_layer"]:
        print(json.dumps(row))
    return 0


def _layers(model_dir: str) -> int:
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)["num_hidden_layers"]


if __name__ == "__main__":
    sys.exit(main())
