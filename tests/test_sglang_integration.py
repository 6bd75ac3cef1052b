"""Integration tier: the plugin against real SGLang 0.5.17 on CPU (real entry points, real
ServerArgs parsing, real HookRegistry, gloo process groups). No mock of SGLang itself."""

import json
import subprocess
import sys

import pytest

from sglang_helpers import CPU_ARGS, QWEN, ROOT, last_json, parse_many, run_python

SCHEDULER_TARGETS = [
    "sglang.srt.managers.scheduler.Scheduler.init_schedule_policy",
    "sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill",
    "sglang.srt.managers.scheduler.Scheduler.get_next_batch_to_run",
    "sglang.srt.managers.scheduler_components.dp_attn.MLPSyncBatchInfo._get_local_tensor",
    "sglang.srt.managers.scheduler_components.dp_attn.MLPSyncBatchInfo._get_fallback_tensor",
    "sglang.srt.managers.scheduler_components.dp_attn.MLPSyncBatchInfo.all_gather",
]
DP_TARGET = "sglang.srt.entrypoints.engine.run_data_parallel_controller_process"

PARSE_AND_REPORT = """
import json, os, pickle, pkgutil, sys
from sglang.srt.plugins import load_plugins
from sglang.srt.plugins.hook_registry import HookRegistry
load_plugins()
from sglang.srt.server_args import prepare_server_args
sa = prepare_server_args(json.loads(sys.argv[1]) if len(sys.argv) > 1 else ARGV)
targets = TARGETS
print(json.dumps({
    # a HookRegistry wrapper's code lives in hook_registry.py
    "wrapped": {t: pkgutil.resolve_name(t).__code__.co_filename.endswith("hook_registry.py") for t in targets},
    "patched": {t: t in HookRegistry._patched for t in targets},
    "dp_target": pkgutil.resolve_name(DP).__module__,
    "dp_target_pickles_to": pickle.dumps(pkgutil.resolve_name(DP)).decode("latin1"),
    "backend_env": os.environ.get("SGLANG_ATOM_BACKEND"),
    "config_env": json.loads(os.environ.get("SGLANG_ATOM_CONFIG", "{}")),
}))
"""


def parse_and_report(argv, env=None):
    code = (PARSE_AND_REPORT.replace("ARGV", repr(argv)).replace("TARGETS", repr(SCHEDULER_TARGETS))
            .replace("DP", repr(DP_TARGET)))
    proc = run_python(code, env)
    return proc, last_json(proc)


def test_entry_point_is_discovered_by_sglang():
    proc = run_python(
        "from sglang.srt.plugins import GENERAL_PLUGINS_GROUP, load_plugins_by_group\n"
        "import json; p = load_plugins_by_group(GENERAL_PLUGINS_GROUP)\n"
        "print(json.dumps({'names': sorted(p), 'func': p['sglang_atom'][0].__module__}))")
    out = last_json(proc)
    assert "sglang_atom" in out["names"]
    assert out["func"] == "sglang_atom.plugin"


def test_launch_server_help_lists_the_flags():
    proc = subprocess.run([sys.executable, "-m", "sglang.launch_server", "--help"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for flag in ("--backend {sglang,atom}", "--atom-admission-target-fill", "--atom-admission-max-wait-ms",
                 "--atom-tbo-min-tokens", "--atom-moe-kernel"):
        assert flag in proc.stdout


def test_backend_atom_parses_installs_and_verifies_hooks():
    argv = ["--model-path", QWEN, *CPU_ARGS, "--tp", "4", "--dp", "4", "--enable-dp-attention",
            "--backend", "atom", "--atom-admission-target-fill", "0.6"]
    proc, out = parse_and_report(argv)
    assert all(out["wrapped"].values()) and all(out["patched"].values()), out
    assert out["dp_target"] == "sglang_atom.integration.runtime"
    assert "sglang_atom.integration.runtime" in out["dp_target_pickles_to"]
    assert out["backend_env"] == "atom"
    assert out["config_env"]["admission_target_fill"] == 0.6


def test_backend_sglang_leaves_sglang_untouched():
    argv = ["--model-path", QWEN, *CPU_ARGS, "--tp", "4", "--dp", "4", "--enable-dp-attention"]
    proc, out = parse_and_report(argv)
    assert not any(out["wrapped"].values()) and not any(out["patched"].values()), out
    assert out["dp_target"] == "sglang.srt.managers.data_parallel_controller"
    assert out["backend_env"] == "sglang"
    assert "sglang-atom active" not in proc.stderr


@pytest.mark.parametrize("model", ["deepseek-v3-tiny", "deepseek-v3-width", "qwen3-235b-width",
                                   "qwen3-moe-check", "deepseek-v3-check"])
def test_every_shipped_model_parses_with_atom(model):
    argv = ["--model-path", str(ROOT / "models" / model), *CPU_ARGS, "--tp", "4", "--dp", "4",
            "--enable-dp-attention", "--backend", "atom"]
    proc, out = parse_and_report(argv)
    assert all(out["wrapped"].values()), proc.stderr[-3000:]


def test_engine_api_switch_is_the_environment_variable():
    """sglang.Engine(**kwargs) builds ServerArgs directly after load_plugins(): same hooks, same checks."""
    code = (
        "import json, pkgutil\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "from sglang.srt.server_args import ServerArgs\n"
        f"sa = ServerArgs(model_path={QWEN!r}, device='cpu', tp_size=2, dp_size=2,"
        " enable_dp_attention=True, load_format='dummy', skip_tokenizer_init=True)\n"
        f"f = pkgutil.resolve_name({SCHEDULER_TARGETS[1]!r})\n"
        "print(json.dumps({'wrapped': f.__code__.co_filename.endswith('hook_registry.py')}))\n"
    )
    proc = run_python(code, {"SGLANG_ATOM_BACKEND": "atom"})
    assert last_json(proc) == {"wrapped": True}


ERROR_CASES = {
    "architecture": (["--model-path", "LLAMA"],
                     "--backend atom supports Qwen3MoeForCausalLM, DeepseekV2ForCausalLM, "
                     "DeepseekV3ForCausalLM, but this model is LlamaForCausalLM; serve it with --backend sglang."),
    "a2a": (["--moe-a2a-backend", "deepep"],
            "--backend atom runs MoE over all_gather/reduce_scatter and cannot use --moe-a2a-backend deepep"),
    "delayer": (["--enable-prefill-delayer"],
                "--enable-prefill-delayer and sglang-atom's admission policy both gate prefill"),
    "pipeline": (["--pp-size", "2"], "--backend atom does not support pipeline parallelism"),
    "fill_range": (["--atom-admission-target-fill", "1.5"],
                   "--atom-admission-target-fill must be <= 1.0, got 1.5"),
    "hold_range": (["--atom-admission-max-hold-passes", "-3"],
                   "--atom-admission-max-hold-passes must be >= 0, got -3"),
    "tbo_range": (["--atom-tbo-min-tokens", "1"],
                  "--atom-tbo-min-tokens must be 0 (from the model) or >= 2, got 1"),
    "aiter_on_cpu": (["--atom-moe-kernel", "aiter"], "--atom-moe-kernel aiter needs a ROCm GPU"),
    "tbo_attention_tp": (["--enable-two-batch-overlap", "--tp", "4"],
                         "set --dp equal to --tp (got --tp 4 --dp 2)"),
    "tbo_mixed_chunk": (["--enable-two-batch-overlap", "--enable-mixed-chunk"],
                        "splits prefill-only batches; drop --enable-mixed-chunk"),
    "gatherv_attention_tp": (["--atom-dp-gatherv", "1", "--tp", "4"],
                             "--atom-dp-gatherv gathers each DP rank's rows with attention TP 1; pass "
                             "--enable-dp-attention with --dp 2 or more equal to --tp (got --tp 4 --dp 2)"),
}

@pytest.fixture(scope="module")
def error_results(tmp_path_factory):
    llama = tmp_path_factory.mktemp("llama")
    (llama / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 4, "vocab_size": 1024, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6, "torch_dtype": "bfloat16"}))
    base = ["--model-path", QWEN, *CPU_ARGS, "--tp", "2", "--dp", "2", "--enable-dp-attention",
            "--backend", "atom"]
    argvs = {}
    for name, (extra, _) in ERROR_CASES.items():
        argv = list(base)
        if "--model-path" in extra:
            argv[argv.index("--model-path") + 1] = str(llama)
            extra = []
        argvs[name] = argv + extra
    return parse_many(argvs)


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_unsupported_combinations_fail_with_one_sentence(error_results, case):
    result = error_results[case]
    assert result is not None, f"{case}: parsed without error"
    kind, message = result
    assert kind == "AtomConfigError"
    assert ERROR_CASES[case][1] in message


def test_tbo_without_dp_attention_is_refused():
    argv = ["--model-path", QWEN, *CPU_ARGS, "--tp", "2", "--backend", "atom", "--enable-two-batch-overlap"]
    code = PARSE_AND_REPORT.replace("ARGV", repr(argv)).replace("TARGETS", "[]").replace("DP", repr(DP_TARGET))
    proc = run_python(code)
    assert proc.returncode != 0
    # --dp is 1 here, where SGLang would turn DP attention off even if it were asked for
    assert ("--enable-two-batch-overlap with --backend atom overlaps the DP all_gather/reduce_scatter "
            "and needs DP attention (SGLang turns it off at --dp 1); pass --enable-dp-attention with "
            "--dp 2 or more") in proc.stderr


def test_environment_switch_conflicting_with_cli_is_refused():
    argv = ["--model-path", QWEN, *CPU_ARGS, "--backend", "sglang"]
    code = PARSE_AND_REPORT.replace("ARGV", repr(argv)).replace("TARGETS", "[]").replace("DP", repr(DP_TARGET))
    proc = run_python(code, {"SGLANG_ATOM_BACKEND": "atom"})
    assert proc.returncode != 0
    assert "SGLANG_ATOM_BACKEND=atom is set in the environment but --backend sglang was given" in proc.stderr


def run_lockstep(seed: int, *extra: str) -> tuple[dict, str]:
    """tests/drivers/admission_lockstep.py for 150 passes; checks what holds with or without TBO
    and returns the ranks' results and the driver's stderr."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests/drivers/admission_lockstep.py"), QWEN,
                           "150", str(seed), *extra], capture_output=True, text=True, timeout=400, cwd=ROOT)
    out = last_json(proc)
    assert out["exitcodes"] == [0, 0, 0, 0], proc.stderr[-4000:]
    ranks = out["ranks"]
    assert sorted(ranks) == ["0", "1", "2", "3"]
    sequences = [ranks[r]["decisions"] for r in sorted(ranks)]
    assert all(s == sequences[0] for s in sequences), "ranks diverged"
    assert len(sequences[0]) == 150
    holds = 0
    for fire, _reason in sequences[0]:
        holds = 0 if fire else holds + 1
        assert holds <= 32
    assert {reason for fire, reason in sequences[0] if not fire} <= {"align", "fill_wait"}
    # the states reached the policy: it held on some passes (an empty table only ever fires)
    assert any(not fire for fire, _ in sequences[0])
    # one all_gather per pass on every rank: SGLang's DP sync, which carries the states
    assert all(ranks[r]["all_gathers_per_pass"] == [1] for r in ranks)
    assert proc.stderr.count("sglang-atom active: admission=coalesce(target_fill=0.0") == 1
    assert "| prefill budget=" in proc.stderr
    assert "hooks verified in: launcher, scheduler" in proc.stderr
    # rank 3 is never sent a request: it admitted nothing, yet ran each of the 150 passes' syncs
    # and decisions (above), as an idle DP rank must
    assert ranks["3"]["admitted"] == 0
    assert all(ranks[r]["admitted"] > 0 for r in "012")
    return ranks, proc.stderr


def test_admission_decisions_stay_in_lockstep_on_four_gloo_ranks():
    """Real hooked Scheduler methods and SGLang's real per-pass DP sync on 4 gloo ranks, random
    workloads, one rank never loaded."""
    for seed in (1, 2):
        ranks, stderr = run_lockstep(seed)
        assert "tbo=off (--enable-two-batch-overlap not given)" in stderr
        assert not any(ranks[r]["tbo_aware"] for r in ranks)


def test_admission_and_tbo_together_split_in_lockstep():
    """Both on: the admitted prefill (else a decode) goes through SGLang's real DP sync, its TBO
    preparer and sglang-atom's split agreement on 4 gloo ranks. Every rank must leave the sync
    with the same split-or-not, splits only where every busy rank extends and the largest has
    --atom-tbo-min-tokens, and admission must still decide in lockstep (checked by run_lockstep)."""
    ranks, stderr = run_lockstep(1, "tbo")
    assert ("tbo=prefill passes of >= 1024 tokens on the largest rank over all_gather/reduce_scatter "
            "by nccl") in stderr
    assert all(ranks[r]["tbo_aware"] for r in ranks)  # the policy's TBO rule is on
    split_passes = extend_unsplit = 0
    for p in range(150):
        views = [ranks[r]["splits"][p] for r in sorted(ranks)]
        if all(v is None for v in views):  # no rank had tokens: no forward at all
            continue
        assert None not in views, f"pass {p}: a rank left the sync without a batch while others ran"
        assert all(v[0] == views[0][0] and v[2] == views[0][2] for v in views), f"pass {p}: {views}"
        split, tokens = views[0][0], views[0][2]
        modes = {v[1] for v in views}
        if split:
            split_passes += 1
            assert modes <= {"EXTEND", "IDLE"} and max(tokens) >= 1024, f"pass {p}: {views}"
        elif "EXTEND" in modes:
            extend_unsplit += 1
    assert split_passes > 0 and extend_unsplit > 0, (split_passes, extend_unsplit)


def test_cuda_platform_defaults_are_applied_before_resolution():
    """Fake the platform probe as CUDA: the Triton MoE runner is chosen while ServerArgs is
    still writable (SGLang makes it read-only once resolved)."""
    code = (
        "import json\n"
        "import sglang_atom.platform as p\n"
        "p.probe = lambda: 'cuda'\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "from sglang.srt.server_args import prepare_server_args\n"
        f"sa = prepare_server_args({['--model-path', QWEN, *CPU_ARGS, '--tp', '2', '--dp', '2', '--enable-dp-attention', '--backend', 'atom']!r})\n"
        "print(json.dumps({'moe_runner_backend': sa.moe_runner_backend}))\n"
    )
    proc = run_python(code)
    assert last_json(proc) == {"moe_runner_backend": "triton"}, proc.stderr[-3000:]


BUDGET_SCRIPT = r"""
import json
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.server_args import prepare_server_args
print(json.dumps({"per_rank": prepare_server_args(ARGV).chunked_prefill_size}))
"""


@pytest.mark.parametrize("extra, per_rank", [
    ([], 1024),  # SGLang alone: its CPU default of 2048 divided by --dp 2
    (["--backend", "atom"], 2048),  # the undivided value, per rank
    (["--backend", "atom", "--chunked-prefill-size", "8192"], 8192),
    (["--backend", "atom", "--atom-prefill-tokens-per-rank", "3000"], 3000),
])
def test_each_dp_rank_gets_the_whole_prefill_budget_under_atom(extra, per_rank):
    argv = ["--model-path", QWEN, *CPU_ARGS, "--tp", "2", "--dp", "2", "--enable-dp-attention", *extra]
    proc = run_python(BUDGET_SCRIPT.replace("ARGV", repr(argv)))
    assert last_json(proc) == {"per_rank": per_rank}, proc.stderr[-3000:]


def test_dp_controller_process_loads_and_verifies_the_hooks():
    """SGLang 0.5.17's DP controller does not load plugins; sglang-atom's process target does."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests/drivers/dp_controller_child.py"), QWEN],
                          capture_output=True, text=True, timeout=400, cwd=ROOT)
    out = last_json(proc)
    assert out["target"] == "sglang_atom.integration.runtime.DPControllerProcess"
    assert out["args"] == ["server_args", "port_args"]  # the controller got its arguments
    assert out["scheduler_wrapped"] is True
    assert out["hooked_env"] == "launcher,dp_controller"
    assert out["exitcode"] == 0


def test_a_hook_sglang_fails_to_apply_stops_startup():
    """HookRegistry only logs a hook it cannot apply; sglang-atom must stop instead of serving."""
    code = (
        "from sglang.srt.plugins.hook_registry import HookRegistry\n"
        "original = HookRegistry._apply_target.__func__\n"
        "def failing(cls, target, hooks):\n"
        "    if target.endswith('Scheduler.get_new_batch_prefill'):\n"
        "        raise RuntimeError('simulated failure')\n"
        "    return original(cls, target, hooks)\n"
        "HookRegistry._apply_target = classmethod(failing)\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "from sglang.srt.server_args import prepare_server_args\n"
        f"prepare_server_args({['--model-path', QWEN, *CPU_ARGS, '--tp', '2', '--dp', '2', '--enable-dp-attention', '--backend', 'atom']!r})\n"
        "print('SERVED ANYWAY')\n"
    )
    proc = run_python(code)
    assert proc.returncode != 0 and "SERVED ANYWAY" not in proc.stdout
    assert ("sglang-atom: SGLang did not apply its hooks on "
            "sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill") in proc.stderr


MISSING_CLI_READ = (
    "from sglang_atom.integration import symbols\n"
    "symbols.CLI_READS += ('sglang.srt.server_args.ServerArgs.no_such_method',)\n"
    "from sglang.srt.plugins import load_plugins\n"
    "load_plugins()\n"
    "from sglang.srt.server_args import prepare_server_args\n"
    f"prepare_server_args({['--model-path', QWEN, *CPU_ARGS]!r})\n"
    "print('SERVES')\n"
)


def test_an_sglang_it_cannot_hook_stops_backend_atom_and_leaves_plain_sglang_serving():
    """SGLang's plugin loader logs and swallows an Exception from a plugin: under --backend atom
    that would serve without sglang-atom, so registration stops the process; under --backend
    sglang the same SGLang goes on serving, with the reason in its log."""
    atom = run_python(MISSING_CLI_READ, env={"SGLANG_ATOM_BACKEND": "atom"})
    assert atom.returncode != 0 and "SERVES" not in atom.stdout
    assert ("sglang-atom cannot start --backend atom: sglang-atom supports SGLang 0.5.17, but SGLang "
            "0.5.17 lacks sglang.srt.server_args.ServerArgs.no_such_method") in atom.stderr
    plain = run_python(MISSING_CLI_READ)
    assert plain.returncode == 0 and "SERVES" in plain.stdout, plain.stderr[-3000:]
    assert "lacks sglang.srt.server_args.ServerArgs.no_such_method" in plain.stderr


def test_a_missing_sglang_internal_is_named():
    code = (
        "from sglang_atom.integration import symbols\n"
        "try:\n"
        "    symbols.require(['sglang.srt.managers.scheduler.Scheduler.get_new_batch_prefill',\n"
        "                     'sglang.srt.managers.scheduler.Scheduler.no_such_method'])\n"
        "except symbols.SGLangMismatch as exc:\n"
        "    print(exc)\n"
    )
    proc = run_python(code)
    assert ("sglang-atom supports SGLang 0.5.17, but SGLang 0.5.17 lacks "
            "sglang.srt.managers.scheduler.Scheduler.no_such_method; install sglang==0.5.17") in proc.stdout


def test_dp_controller_target_refuses_to_run_inside_the_launcher():
    code = (
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "from sglang.srt.server_args import prepare_server_args\n"
        f"prepare_server_args({['--model-path', QWEN, *CPU_ARGS, '--tp', '2', '--dp', '2', '--enable-dp-attention', '--backend', 'atom']!r})\n"
        "from sglang.srt.entrypoints import engine\n"
        "try:\n"
        "    engine.run_data_parallel_controller_process('server_args', 'port_args')\n"
        "except RuntimeError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    proc = run_python(code)
    assert "REFUSED DPControllerProcess must run as a spawned process target" in proc.stdout, proc.stderr[-2000:]
