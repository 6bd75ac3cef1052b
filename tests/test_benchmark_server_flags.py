"""Integration tier: every server the benchmark scripts start is accepted by real SGLang 0.5.17
(its ServerArgs parsing and resolution, with sglang-atom's checks), on CPU. A flag SGLang or
sglang-atom refuses then fails here, not minutes into a multi-GPU machine's time."""

import json
import sys
from types import SimpleNamespace

import pytest

from sglang_helpers import ROOT, parse_many

sys.path.insert(0, str(ROOT / "benchmarks"))
import admission_ab  # noqa: E402
import tbo_serving  # noqa: E402

TBO_MODELS = ("models/qwen3-moe-tiny", "models/qwen3-235b-width", "models/deepseek-v3-width")


def admission_servers() -> dict[str, list[str]]:
    """Every config of every named scenario, and every config with the default arguments."""
    runs = {"default": admission_ab.parse_args(["--out", "unused"])}
    runs.update({name: admission_ab.parse_args(["--scenario", name, "--out", "unused"])
                 for name in admission_ab.SCENARIOS})
    servers = {}
    for run, args in runs.items():
        configs = admission_ab.CONFIGS if run == "default" else args.configs.split(",")
        for config in configs:
            servers[f"admission_ab {run} {config}"] = admission_ab.base_flags(args) + admission_ab.CONFIGS[config]
    return servers


def tbo_prefill_servers() -> dict[str, list[str]]:
    """tbo_serving.py perf's servers for each model (and the width models as FP8 block checkpoints,
    also with 8 layers) at DP 2, 4 and 8, without TBO and with it over NCCL (`--atom-tbo-comm
    copy-engine` is refused on a machine without CUDA, rightly), each also with
    `--atom-dp-gatherv 1` (`--gatherv`)."""
    servers = {}
    widths = ",".join(TBO_MODELS[1:])
    fp8 = tbo_serving.model_copies(widths, "fp8").split(",")  # --weights fp8
    deep = tbo_serving.model_copies(widths, "fp8", 8).split(",")  # --weights fp8 --layers 8
    for model in (*TBO_MODELS, *fp8, *deep):
        for dp in (2, 4, 8):
            args = SimpleNamespace(dp=dp, cuda_graph=True)
            for comm in (None, "nccl"):
                for gatherv in (False, True):
                    servers[f"tbo_serving {model} dp{dp} {comm}{' gatherv' * gatherv}"] = (
                        tbo_serving.prefill_flags(args, model, 8192, comm, gatherv))
    return servers


# A combination sglang-atom refuses, parsed with the rest: shows that a refusal reaches the results.
CONTROL = "control: the prefill delayer under --backend atom"


@pytest.fixture(scope="module")
def parsed():
    args = admission_ab.parse_args(["--out", "unused"])
    servers = {**admission_servers(), **tbo_prefill_servers(),
               CONTROL: admission_ab.base_flags(args) + ["--backend", "atom", "--enable-prefill-delayer"]}
    # A process that parsed --backend atom has the runtime hooks installed and refuses a later
    # server without it, as a real launcher would: the two kinds parse in separate processes.
    out = {}
    for atom in (False, True):
        out.update(parse_many({name: argv + ["--device", "cpu"]
                               for name, argv in servers.items() if ("atom" in argv) == atom}))
    assert out.keys() == servers.keys()
    return {name: None if result is None else ": ".join(result) for name, result in out.items()}


def test_every_benchmark_server_parses(parsed):
    refused = {name: why for name, why in parsed.items() if why is not None and name != CONTROL}
    assert not refused, json.dumps(refused, indent=1)
    assert sum(name.startswith("admission_ab inferencex-dp8") for name in parsed) == 4


def test_a_refused_combination_is_reported(parsed):
    assert parsed[CONTROL].startswith("AtomConfigError: --enable-prefill-delayer and sglang-atom's admission")
