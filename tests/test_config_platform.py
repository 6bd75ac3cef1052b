"""Pure tier: the configuration object, its flags and the platform decision."""

import argparse
import json
import re

import pytest

from sglang_atom.config import AtomConfig, AtomConfigError
from sglang_atom.platform import plan


def parse(argv):
    parser = argparse.ArgumentParser()
    AtomConfig.add_arguments(parser)
    return AtomConfig.from_namespace(parser.parse_args(argv))


def test_defaults_are_valid_and_backend_is_sglang():
    cfg = parse([])
    assert cfg == AtomConfig()
    assert not cfg.enabled


def test_flags_parse():
    cfg = parse(["--backend", "atom", "--atom-admission-target-fill", "0.5",
                 "--atom-admission-align", "0", "--atom-moe-kernel", "triton"])
    assert cfg.enabled and cfg.admission_target_fill == 0.5
    assert cfg.admission_align is False and cfg.moe_kernel == "triton"


@pytest.mark.parametrize("argv,message", [
    (["--atom-admission-target-fill", "-0.1"], "--atom-admission-target-fill must be >= 0.0"),
    (["--atom-prefill-tokens-per-rank", "-1"], "--atom-prefill-tokens-per-rank must be >= 0"),
    (["--atom-admission-target-fill", "1.5"], "--atom-admission-target-fill must be <= 1.0"),
    (["--atom-admission-max-hold-passes", "-1"], "--atom-admission-max-hold-passes must be >= 0"),
    (["--atom-admission-stall-passes", "0"], "--atom-admission-stall-passes must be >= 1"),
    (["--atom-admission-kv-high", "2"], "--atom-admission-kv-high must be <= 1.0"),
    (["--atom-tbo-min-tokens", "1"], "--atom-tbo-min-tokens must be 0 (from the model) or >= 2, got 1"),
    (["--atom-tbo-min-tokens", "-5"], "--atom-tbo-min-tokens must be >= 0"),
    (["--atom-tbo-nccl-max-ctas", "65"], "--atom-tbo-nccl-max-ctas must be <= 64"),
])
def test_out_of_range_values_raise_with_the_flag_name(argv, message):
    with pytest.raises(AtomConfigError, match=re.escape(message)):
        parse(argv)


def test_env_round_trip():
    env = {}
    cfg = AtomConfig(backend="atom", admission_max_wait_ms=250)
    cfg.to_env(env)
    assert AtomConfig.from_env(env) == cfg
    assert AtomConfig.from_env({"SGLANG_ATOM_BACKEND": "ATOM"}) == AtomConfig(backend="atom")


def test_bad_environment_names_the_variable():
    with pytest.raises(AtomConfigError, match=re.escape(
            "SGLANG_ATOM_BACKEND must be atom or sglang, got '1'; set SGLANG_ATOM_BACKEND=atom or unset it.")):
        AtomConfig.from_env({"SGLANG_ATOM_BACKEND": "1"})
    stale = json.dumps({"backend": "atom", "tbo_overlap_layers": 4})
    with pytest.raises(AtomConfigError, match=re.escape(
            "SGLANG_ATOM_CONFIG holds settings this sglang-atom does not know (tbo_overlap_layers)")):
        AtomConfig.from_env({"SGLANG_ATOM_CONFIG": stale})


def test_cuda_plan_uses_triton_and_nccl():
    p = plan("cuda")
    assert (p.moe_kernel, p.collective_backend, p.moe_runner_backend, p.env) == (
        "triton", "nccl", "triton", {})


def test_rocm_plan_uses_aiter_and_raises_hw_queues():
    p = plan("rocm", "auto", {"GPU_MAX_HW_QUEUES": "2"})
    assert (p.moe_kernel, p.collective_backend, p.moe_runner_backend) == ("aiter", "rccl", "aiter")
    assert p.env == {"SGLANG_USE_AITER": "1", "GPU_MAX_HW_QUEUES": "5"}


def test_rocm_plan_keeps_a_larger_user_queue_setting():
    assert "GPU_MAX_HW_QUEUES" not in plan("rocm", "auto", {"GPU_MAX_HW_QUEUES": "8"}).env


def test_rocm_can_be_told_to_use_triton():
    p = plan("rocm", "triton", {})
    assert p.moe_kernel == "triton" and "SGLANG_USE_AITER" not in p.env


def test_aiter_on_cuda_is_refused():
    with pytest.raises(AtomConfigError, match="needs a ROCm GPU"):
        plan("cuda", "aiter")


def test_summary_says_why_features_are_off():
    from sglang_atom.validation import ServingSetup, summary

    off = ServingSetup(None, dp_attention=False, dp_size=1, tp_size=2, moe_a2a_backend="none",
                       prefill_delayer=False, two_batch_overlap=False, disaggregation_mode="null")
    line = summary(AtomConfig(backend="atom"), off, plan("cuda"), 0)
    assert "admission=off (needs --enable-dp-attention with --dp > 1)" in line
    assert "tbo=off (--enable-two-batch-overlap not given)" in line
    assert "moe_kernel=triton (cuda) | collectives=nccl" in line
    line = summary(AtomConfig(backend="atom", admission="off"), off, plan("rocm", "auto", {}), 0)
    assert "admission=off (--atom-admission off)" in line and "moe_kernel=aiter (rocm)" in line


def test_readme_documents_every_flag():
    import dataclasses
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for f in dataclasses.fields(AtomConfig):
        assert f"`{AtomConfig.flag_name(f.name)}" in readme, f.name


def test_admission_is_off_on_disaggregated_servers():
    from sglang_atom.validation import ServingSetup, admission_active, summary

    for mode in ("prefill", "decode"):
        setup = ServingSetup(None, dp_attention=True, dp_size=4, tp_size=4, moe_a2a_backend="none",
                             prefill_delayer=False, two_batch_overlap=False, disaggregation_mode=mode)
        assert not admission_active(AtomConfig(backend="atom"), setup)
        assert "admission=off (PD-disaggregated server" in summary(AtomConfig(backend="atom"), setup, plan("cuda"), 0)


TBO_REFUSALS = {
    "tp_size": ({"tp_size": 8}, "set --dp equal to --tp (got --tp 8 --dp 4)"),
    "ep_size": ({"ep_size": 4}, "keeps experts TP-sharded; drop --ep-size"),
    "mixed_chunk": ({"mixed_chunk": True}, "drop --enable-mixed-chunk"),
    "speculative": ({"speculative": True}, "does not support speculative decoding"),
    "expert_balancing": ({"expert_balancing": True}, "does not record expert load"),
    "shared_expert_tp1": ({"shared_expert_tp1": True}, "unset SGLANG_SHARED_EXPERT_TP1"),
    "pd_decode": ({"disaggregation_mode": "decode"}, "overlaps prefill only"),
    "deepseek_triton": ({"architecture": "DeepseekV3ForCausalLM", "prefill_attention_backend": "triton"},
                        "pass --attention-backend (or --prefill-attention-backend) flashinfer or fa3."),
}


@pytest.mark.parametrize("case", sorted(TBO_REFUSALS))
def test_two_batch_overlap_refusals(case):
    from dataclasses import replace

    from sglang_atom.validation import ServingSetup, check

    ok = ServingSetup("Qwen3MoeForCausalLM", dp_attention=True, dp_size=4, tp_size=4,
                      moe_a2a_backend="none", prefill_delayer=False, two_batch_overlap=True,
                      disaggregation_mode="null")
    check(AtomConfig(backend="atom"), ok)  # the supported setup passes
    change, message = TBO_REFUSALS[case]
    with pytest.raises(AtomConfigError, match=re.escape(message)):
        check(AtomConfig(backend="atom"), replace(ok, **change))
    # the same setup without two-batch overlap is fine (these only matter to TBO)
    check(AtomConfig(backend="atom"), replace(ok, two_batch_overlap=False, **change))


def test_two_batch_overlap_without_dp_attention_says_why_it_is_off():
    """SGLang drops --enable-dp-attention at --dp 1, so "add it" alone would puzzle a user who
    passed it."""
    from dataclasses import replace

    from sglang_atom.validation import ServingSetup, check

    one = ServingSetup("Qwen3MoeForCausalLM", dp_attention=False, dp_size=1, tp_size=1,
                       moe_a2a_backend="none", prefill_delayer=False, two_batch_overlap=True,
                       disaggregation_mode="null")
    with pytest.raises(AtomConfigError, match=re.escape(
            "needs DP attention (SGLang turns it off at --dp 1); pass --enable-dp-attention with --dp 2 "
            "or more, or drop --enable-two-batch-overlap.")):
        check(AtomConfig(backend="atom"), one)
    with pytest.raises(AtomConfigError, match=re.escape("needs DP attention; pass --enable-dp-attention")):
        check(AtomConfig(backend="atom"), replace(one, dp_size=4, tp_size=4))


def test_two_batch_overlap_attention_backends():
    """Only DeepSeek's MLA pays for a cut prompt under triton; Qwen3 and flashinfer are fine."""
    from sglang_atom.validation import ServingSetup, check

    for arch, backend in (("DeepseekV3ForCausalLM", "flashinfer"), ("DeepseekV2ForCausalLM", "fa3"),
                          ("Qwen3MoeForCausalLM", "triton"), ("DeepseekV3ForCausalLM", None)):
        check(AtomConfig(backend="atom"), ServingSetup(
            arch, dp_attention=True, dp_size=2, tp_size=2, moe_a2a_backend="none", prefill_delayer=False,
            two_batch_overlap=True, disaggregation_mode="null", prefill_attention_backend=backend))


def test_summary_marks_two_batch_overlap_experimental():
    from sglang_atom.validation import ServingSetup, summary

    on = ServingSetup("Qwen3MoeForCausalLM", dp_attention=True, dp_size=4, tp_size=4,
                      moe_a2a_backend="none", prefill_delayer=False, two_batch_overlap=True,
                      disaggregation_mode="null")
    line = summary(AtomConfig(backend="atom"), on, plan("cuda"), 7168)
    assert ("tbo=prefill passes of >= 7168 tokens on the largest rank (from the model's expert "
            "widths) over all_gather/reduce_scatter by nccl (experimental: 0.95-1.05x") in line
    # a value given on the command line is said as given
    given = summary(AtomConfig(backend="atom", tbo_min_tokens=4096), on, plan("cuda"), 4096)
    assert "passes of >= 4096 tokens on the largest rank over" in given


def test_copy_engine_transport_needs_cuda_and_one_node():
    from dataclasses import replace

    from sglang_atom.validation import ServingSetup, check, summary

    on = ServingSetup("Qwen3MoeForCausalLM", dp_attention=True, dp_size=4, tp_size=4,
                      moe_a2a_backend="none", prefill_delayer=False, two_batch_overlap=True,
                      disaggregation_mode="null")
    ce = AtomConfig(backend="atom", tbo_comm="copy-engine")
    check(ce, on, "cuda")
    line = summary(ce, on, plan("cuda"), 7168)
    assert "by copy-engine" in line and "one that hung" in line
    assert "hung" not in summary(AtomConfig(backend="atom"), on, plan("cuda"), 7168)
    with pytest.raises(AtomConfigError, match=re.escape("needs CUDA GPUs (PyTorch symmetric memory), "
                                                        "but this is rocm; pass --atom-tbo-comm nccl.")):
        check(ce, on, "rocm")
    with pytest.raises(AtomConfigError, match=re.escape("but --nnodes is 2; pass --atom-tbo-comm nccl.")):
        check(ce, replace(on, nnodes=2), "cuda")
    check(AtomConfig(backend="atom"), replace(on, nnodes=2), "rocm")  # nccl runs anywhere
    check(ce, replace(on, two_batch_overlap=False), "rocm")  # only matters with TBO on
    limited = AtomConfig(backend="atom", tbo_nccl_max_ctas=8)
    check(limited, on, "cuda")
    assert "[NCCL limited to 8 CTAs: not yet measured in serving]" in summary(limited, on, plan("cuda"), 7168)
    with pytest.raises(AtomConfigError, match="uses none; drop one of the two"):
        check(AtomConfig(backend="atom", tbo_comm="copy-engine", tbo_nccl_max_ctas=8), on, "cuda")
    with pytest.raises(AtomConfigError, match="--atom-tbo-comm must be one of nccl, copy-engine"):
        AtomConfig(backend="atom", tbo_comm="nvshmem").validate()


def test_admission_refuses_a_skipped_dp_sync():
    from dataclasses import replace

    from sglang_atom.validation import ServingSetup, check

    setup = ServingSetup("Qwen3MoeForCausalLM", dp_attention=True, dp_size=4, tp_size=4,
                         moe_a2a_backend="none", prefill_delayer=False, two_batch_overlap=False,
                         disaggregation_mode="null", dp_sync_skipped=True)
    with pytest.raises(AtomConfigError, match=re.escape(
            "SGLANG_SCHEDULER_SKIP_ALL_GATHER=1 turns off the per-pass DP sync that sglang-atom's "
            "admission rides on; unset it or pass --atom-admission off.")):
        check(AtomConfig(backend="atom"), setup)
    check(AtomConfig(backend="atom", admission="off"), setup)  # nothing rides on it then
    check(AtomConfig(backend="atom"), replace(setup, dp_sync_skipped=False))


def test_nccl_options_carry_the_cta_limit():
    """What `nccl_group` hands NCCL (the group itself needs GPUs)."""
    from sglang_atom.tbo.overlap import nccl_options

    opts = nccl_options(8, high_priority=True)
    assert opts.config.max_ctas == 8 and opts.is_high_priority_stream
    assert not nccl_options(2).is_high_priority_stream
    assert nccl_options().config.max_ctas < 0  # 0 asks for nothing: NCCL's unset sentinel stays


def test_prefill_budget_per_rank_needs_dp_attention_and_is_in_the_startup_line():
    from dataclasses import replace

    from sglang_atom.validation import ServingSetup, check, summary

    dp = ServingSetup("Qwen3MoeForCausalLM", dp_attention=True, dp_size=4, tp_size=4,
                      moe_a2a_backend="none", prefill_delayer=False, two_batch_overlap=False,
                      disaggregation_mode="null", prefill_tokens_per_rank=8192)
    given = AtomConfig(backend="atom", prefill_tokens_per_rank=4096)
    check(given, dp)
    with pytest.raises(AtomConfigError, match=re.escape(
            "--atom-prefill-tokens-per-rank sets the budget of each DP-attention rank; without "
            "DP attention (SGLang turns it off at --dp 1) use --chunked-prefill-size instead.")):
        check(given, replace(dp, dp_attention=False, dp_size=1))
    with pytest.raises(AtomConfigError, match=re.escape("without DP attention use --chunked-prefill-size")):
        check(given, replace(dp, dp_attention=False, dp_size=4, tp_size=4))
    check(AtomConfig(backend="atom"), replace(dp, dp_attention=False, dp_size=1))  # the default is 0
    with pytest.raises(AtomConfigError, match=re.escape("--chunked-prefill-size -1 turns off; drop one")):
        check(given, replace(dp, prefill_tokens_per_rank=None))
    check(AtomConfig(backend="atom"), replace(dp, prefill_tokens_per_rank=None))
    assert "| prefill budget=8192 tokens per rank |" in summary(AtomConfig(backend="atom"), dp, plan("cuda"), 0)
    assert "prefill budget" not in summary(AtomConfig(backend="atom"), replace(dp, prefill_tokens_per_rank=None),
                                           plan("cuda"), 0)


def test_dp_gatherv_needs_dp_attention_with_attention_tp_1_and_is_in_the_startup_line():
    from dataclasses import replace

    from sglang_atom.integration.dp_gatherv import reduce_scatters_here
    from sglang_atom.validation import ServingSetup, check, summary

    dp = ServingSetup("DeepseekV3ForCausalLM", dp_attention=True, dp_size=4, tp_size=4,
                      moe_a2a_backend="none", prefill_delayer=False, two_batch_overlap=False,
                      disaggregation_mode="null")
    on = parse(["--backend", "atom", "--atom-dp-gatherv", "1"])
    assert on.dp_gatherv and not AtomConfig().dp_gatherv  # off until measured on GPUs
    check(on, dp)
    check(on, replace(dp, two_batch_overlap=True))  # TBO's own passes keep their transport
    for setup, got in ((replace(dp, tp_size=8), "(got --tp 8 --dp 4)"),
                       (replace(dp, dp_attention=False, dp_size=1), "(got --tp 4 --dp 1, no DP attention)")):
        with pytest.raises(AtomConfigError, match=re.escape(
                "--atom-dp-gatherv gathers each DP rank's rows with attention TP 1; pass "
                f"--enable-dp-attention with --dp 2 or more equal to --tp {got}, or drop --atom-dp-gatherv.")):
            check(on, setup)
    # replicated shared experts, added after the skipped all-reduce on every rank, would be
    # summed dp times (SGLang's own MAX_LEN reduce_scatter has the same hole)
    with pytest.raises(AtomConfigError, match=re.escape(
            "--atom-dp-gatherv sums shared experts in the reduce_scatterv, which needs them "
            "TP-sharded; unset SGLANG_SHARED_EXPERT_TP1 or drop --atom-dp-gatherv.")):
        check(on, replace(dp, shared_expert_tp1=True))
    assert "| dp_gatherv=all_gatherv/reduce_scatterv in passes SGLang would all-reduce" in summary(
        on, dp, plan("cuda"), 0)
    assert "dp_gatherv" not in summary(AtomConfig(backend="atom"), dp, plan("cuda"), 0)
    # the combine adds a reduce_scatterv only where a layer may reduce-scatter, in a SUM_LEN
    # pass, and SGLang does not already (its expert-parallel reduce_scatterv)
    assert [reduce_scatters_here(a, s, g) for a, s, g in
            [(True, True, False), (False, True, False), (True, False, False), (True, True, True)]] == [
        True, False, False, False]
