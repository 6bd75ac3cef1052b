"""Integration tier: `--atom-dp-gatherv` against real SGLang 0.5.17 on CPU.

What the CPU can show: the launcher turns on SGLang's own gather switch for the processes it
spawns (and SGLang reads it under that name), a model process installs and verifies both
combine hooks, and SGLang's real `LayerCommunicator.should_use_reduce_scatter` then tells the
experts to skip their all-reduce exactly in SUM_LEN passes of layers that may reduce-scatter.
The collectives themselves (`all_gatherv`, `reduce_scatterv`) need pynccl, so their answers are
checked on GPUs (`benchmarks/tbo_serving.py check --gatherv --tbo-comm none`).
"""

import json

from sglang_helpers import CPU_ARGS, QWEN, last_json, run_python

TARGETS = [
    "sglang.srt.layers.communicator.LayerCommunicator.should_use_reduce_scatter",
    "sglang.srt.layers.communicator.CommunicateSummableTensorPairFn._scatter_hidden_states",
]

LAUNCHER = r"""
import json, os, sys
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.server_args import prepare_server_args
prepare_server_args(json.loads(sys.argv[1]))
print(json.dumps({"env": os.environ.get("SGLANG_DP_USE_GATHERV"),
                  "config": json.loads(os.environ["SGLANG_ATOM_CONFIG"])["dp_gatherv"]}))
"""

# A model process: what the launcher left in the environment, then SGLang's runtime context
# published from real ServerArgs, as a scheduler has it before its model runs.
MODEL_PROCESS = r"""
import json, os, pkgutil, sys
from types import SimpleNamespace
argv = json.loads(sys.argv[1])
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.plugins.hook_registry import HookRegistry
from sglang.srt.server_args import prepare_server_args
sa = prepare_server_args(argv)
from sglang.srt.runtime_context import get_parallel, publish
publish(sa, role="scheduler")
from sglang_atom.integration import runtime
runtime.install(launcher=False)
from sglang.srt.layers import dp_attention
from sglang.srt.layers.communicator import CommunicateSummableTensorPairFn as Fn, LayerCommunicator
TARGETS = json.loads(sys.argv[2])

def decide(mode, allow=True, fn=Fn._scatter_hidden_states):
    communicator = object.__new__(LayerCommunicator)  # the fields the decision reads
    communicator.allow_reduce_scatter, communicator.is_last_layer = allow, False
    communicator._communicate_summable_tensor_pair_fn = fn
    batch = SimpleNamespace(dp_padding_mode=getattr(dp_attention.DpPaddingMode, mode),
                            attn_cp_metadata=None, forward_mode=None)
    return communicator.should_use_reduce_scatter(batch)

# The live topology of a DP2 server with attention TP 1 (no process group on the CPU).
with get_parallel().override(tp_size=2, attn_dp_size=2, attn_tp_size=1, attn_cp_size=1):
    decisions = {"sum_len": decide("SUM_LEN"), "max_len": decide("MAX_LEN"),
                 "sum_len_no_reduce_scatter": decide("SUM_LEN", allow=False),
                 "sum_len_other_pair_fn": decide("SUM_LEN", fn=Fn._trivial)}
print(json.dumps({
    "sglang_reads_gather_switch": dp_attention._USE_DP_GATHERV,
    "patched": [t in HookRegistry._patched for t in TARGETS],
    "wrapped": [pkgutil.resolve_name(t).__code__.co_filename.endswith("hook_registry.py") for t in TARGETS],
    "decisions": decisions,
}))
"""


def argv(*extra):
    return ["--model-path", QWEN, *CPU_ARGS, "--tp", "2", "--dp", "2", "--enable-dp-attention",
            "--backend", "atom", *extra]


def test_launcher_turns_on_sglangs_gather_switch_only_with_the_flag():
    on = last_json(run_python(LAUNCHER, args=(json.dumps(argv("--atom-dp-gatherv", "1")),)))
    off = last_json(run_python(LAUNCHER, args=(json.dumps(argv()),)))
    assert on == {"env": "1", "config": True}
    assert off == {"env": None, "config": False}


def model_process(flag_on: bool) -> dict:
    extra = ("--atom-dp-gatherv", "1") if flag_on else ()
    # the environment a scheduler inherits from a launcher that parsed these flags
    env = {"SGLANG_DP_USE_GATHERV": "1"} if flag_on else {}
    proc = run_python(MODEL_PROCESS, env, args=(json.dumps(argv(*extra)), json.dumps(TARGETS)))
    return last_json(proc)


def test_model_process_reduce_scatters_sum_len_passes_with_the_flag():
    out = model_process(flag_on=True)
    assert out["sglang_reads_gather_switch"] is True  # SGLang's gather half, under that name
    assert out["patched"] == [True, True] and out["wrapped"] == [True, True]
    assert out["decisions"] == {
        "sum_len": True,  # new: the experts skip their all-reduce, the pair step reduce_scatters
        "max_len": True,  # SGLang's own reduce_scatter, unchanged
        "sum_len_no_reduce_scatter": False,
        "sum_len_other_pair_fn": False,
    }


def test_without_the_flag_sglang_keeps_its_all_reduce():
    out = model_process(flag_on=False)
    assert out["sglang_reads_gather_switch"] is False
    assert out["patched"] == [False, False]
    assert out["decisions"]["sum_len"] is False and out["decisions"]["max_len"] is True
