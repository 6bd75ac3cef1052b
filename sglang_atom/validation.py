"""Which flag combinations `--backend atom` accepts, and the one line saying what is active.

Pure Python over the plain values of SGLang's ServerArgs that matter (`ServingSetup`), so every
error message is unit-tested without SGLang. Each error is one sentence saying what to change.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import AtomConfig, AtomConfigError
from .platform import PlatformPlan

SUPPORTED_ARCHITECTURES = ("Qwen3MoeForCausalLM", "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")
MLA_ARCHITECTURES = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")


@dataclass(frozen=True)
class ServingSetup:
    architecture: str | None  # None: not read (SGLang's "dummy" model path; the schedulers' setup)
    dp_attention: bool
    dp_size: int
    tp_size: int
    moe_a2a_backend: str
    prefill_delayer: bool
    two_batch_overlap: bool
    disaggregation_mode: str  # "null", "prefill" or "decode"
    pp_size: int = 1
    # Read only when two-batch overlap is on.
    mixed_chunk: bool = False
    speculative: bool = False
    expert_balancing: bool = False  # EPLB or the expert distribution recorder
    ep_size: int = 1
    nnodes: int = 1
    prefill_attention_backend: str | None = None  # as SGLang resolved it (None: not known)
    # Read whether or not two-batch overlap is on.
    shared_expert_tp1: bool = False  # SGLANG_SHARED_EXPERT_TP1=1
    dp_sync_skipped: bool = False  # SGLANG_SCHEDULER_SKIP_ALL_GATHER=1
    prefill_tokens_per_rank: int | None = None  # the chunked prefill size as resolved (None: off)


def check(cfg: AtomConfig, setup: ServingSetup, platform: str = "cuda") -> None:
    """Raise AtomConfigError for a combination `--backend atom` cannot serve on `platform`."""
    if setup.architecture is not None and setup.architecture not in SUPPORTED_ARCHITECTURES:
        raise AtomConfigError(
            f"--backend atom supports {', '.join(SUPPORTED_ARCHITECTURES)}, but this model is "
            f"{setup.architecture}; serve it with --backend sglang."
        )
    if setup.moe_a2a_backend != "none":
        raise AtomConfigError(
            f"--backend atom runs MoE over all_gather/reduce_scatter and cannot use "
            f"--moe-a2a-backend {setup.moe_a2a_backend}; drop --moe-a2a-backend or use --backend sglang."
        )
    if setup.prefill_delayer and cfg.admission != "off":
        raise AtomConfigError(
            "--enable-prefill-delayer and sglang-atom's admission policy both gate prefill; "
            "drop --enable-prefill-delayer, or pass --atom-admission off to keep SGLang's delayer."
        )
    if setup.dp_sync_skipped and admission_active(cfg, setup):
        raise AtomConfigError(
            "SGLANG_SCHEDULER_SKIP_ALL_GATHER=1 turns off the per-pass DP sync that sglang-atom's "
            "admission rides on; unset it or pass --atom-admission off.")
    if cfg.prefill_tokens_per_rank and not setup.dp_attention:
        raise AtomConfigError(
            "--atom-prefill-tokens-per-rank sets the budget of each DP-attention rank; without "
            f"DP attention{_dp1(setup)} use --chunked-prefill-size instead.")
    if cfg.prefill_tokens_per_rank and setup.dp_attention and setup.prefill_tokens_per_rank is None:
        raise AtomConfigError(
            "--atom-prefill-tokens-per-rank bounds chunked prefill, which --chunked-prefill-size -1 "
            "turns off; drop one of the two.")
    if cfg.dp_gatherv and not (setup.dp_attention and setup.dp_size > 1 and setup.tp_size == setup.dp_size):
        raise AtomConfigError(
            "--atom-dp-gatherv gathers each DP rank's rows with attention TP 1; pass "
            "--enable-dp-attention with --dp 2 or more equal to --tp (got --tp "
            f"{setup.tp_size} --dp {setup.dp_size}{'' if setup.dp_attention else ', no DP attention'}), "
            "or drop --atom-dp-gatherv.")
    if cfg.dp_gatherv and setup.shared_expert_tp1:
        raise AtomConfigError(
            "--atom-dp-gatherv sums shared experts in the reduce_scatterv, which needs them "
            "TP-sharded; unset SGLANG_SHARED_EXPERT_TP1 or drop --atom-dp-gatherv.")
    if setup.two_batch_overlap and not setup.dp_attention:
        raise AtomConfigError(
            "--enable-two-batch-overlap with --backend atom overlaps the DP all_gather/reduce_scatter "
            f"and needs DP attention{_dp1(setup)}; pass --enable-dp-attention with --dp 2 or more, or "
            "drop --enable-two-batch-overlap."
        )
    if setup.two_batch_overlap:
        check_tbo(cfg, setup, platform)
    if setup.pp_size > 1:
        raise AtomConfigError(
            "--backend atom does not support pipeline parallelism; drop --pp-size or use --backend sglang."
        )
    if setup.disaggregation_mode == "decode" and setup.two_batch_overlap:
        raise AtomConfigError(
            "--backend atom overlaps prefill only; drop --enable-two-batch-overlap on a "
            "--disaggregation-mode decode server."
        )


def _dp1(setup: ServingSetup) -> str:
    """Why DP attention is off although --enable-dp-attention may have been given."""
    return " (SGLang turns it off at --dp 1)" if setup.dp_size == 1 else ""


def check_tbo(cfg: AtomConfig, setup: ServingSetup, platform: str) -> None:
    """What two-batch overlap over all_gather/reduce_scatter (integration/tbo.py) can run."""
    if cfg.tbo_comm == "copy-engine" and platform != "cuda":
        raise AtomConfigError(
            f"--atom-tbo-comm copy-engine needs CUDA GPUs (PyTorch symmetric memory), but this is "
            f"{platform}; pass --atom-tbo-comm nccl.")
    if cfg.tbo_comm == "copy-engine" and cfg.tbo_nccl_max_ctas:
        raise AtomConfigError(
            "--atom-tbo-nccl-max-ctas limits NCCL's collectives, but --atom-tbo-comm copy-engine "
            "uses none; drop one of the two.")
    if cfg.tbo_comm == "copy-engine" and setup.nnodes > 1:
        raise AtomConfigError(
            f"--atom-tbo-comm copy-engine maps peer GPU memory over NVLink within one node, but "
            f"--nnodes is {setup.nnodes}; pass --atom-tbo-comm nccl.")
    if setup.tp_size != setup.dp_size:
        raise AtomConfigError(
            f"two-batch overlap with --backend atom runs attention with one GPU per DP rank; set "
            f"--dp equal to --tp (got --tp {setup.tp_size} --dp {setup.dp_size}).")
    if setup.ep_size != 1:
        raise AtomConfigError(
            "two-batch overlap with --backend atom keeps experts TP-sharded; drop --ep-size.")
    if setup.mixed_chunk:
        raise AtomConfigError(
            "two-batch overlap with --backend atom splits prefill-only batches; drop --enable-mixed-chunk.")
    if setup.speculative:
        raise AtomConfigError(
            "two-batch overlap with --backend atom does not support speculative decoding; drop "
            "--speculative-algorithm or --enable-two-batch-overlap.")
    if setup.expert_balancing:
        raise AtomConfigError(
            "two-batch overlap with --backend atom does not record expert load; drop --enable-eplb "
            "and --expert-distribution-recorder-mode, or --enable-two-batch-overlap.")
    if setup.architecture in MLA_ARCHITECTURES and setup.prefill_attention_backend == "triton":
        raise AtomConfigError(
            "two-batch overlap with --backend atom cuts DeepSeek prompts in two, and SGLang's triton "
            "attention runs every second half as absorbed MLA (0.57x measured on 2xH200); pass "
            "--attention-backend (or --prefill-attention-backend) flashinfer or fa3.")
    if setup.shared_expert_tp1:
        raise AtomConfigError(
            "two-batch overlap with --backend atom sums shared experts in the reduce_scatter, which "
            "needs them TP-sharded; unset SGLANG_SHARED_EXPERT_TP1.")


def admission_active(cfg: AtomConfig, setup: ServingSetup) -> bool:
    # A PD-disaggregated server has no decode on the prefill side and no prefill on the decode
    # side, so there is nothing to align.
    return (cfg.enabled and cfg.admission != "off" and setup.dp_attention and setup.dp_size > 1
            and setup.disaggregation_mode == "null")


def tbo_active(cfg: AtomConfig, setup: ServingSetup) -> bool:
    return cfg.enabled and setup.two_batch_overlap and setup.dp_attention and setup.dp_size > 1


def summary(cfg: AtomConfig, setup: ServingSetup, plan: PlatformPlan, tbo_min_tokens: int) -> str:
    """The startup line: what is active, and why a feature is off when it is.
    `tbo_min_tokens`: --atom-tbo-min-tokens as resolved for the served model (read when TBO is on)."""
    if admission_active(cfg, setup):
        admission = (f"admission=coalesce(target_fill={cfg.admission_target_fill}, "
                     f"align={int(cfg.admission_align)}, max_hold={cfg.admission_max_hold_passes} passes, "
                     f"chunked_hold={cfg.admission_chunked_max_hold_passes} passes, "
                     f"max_wait={cfg.admission_max_wait_ms} ms)")
    elif cfg.admission == "off":
        admission = "admission=off (--atom-admission off)"
    elif not setup.dp_attention or setup.dp_size <= 1:
        admission = "admission=off (needs --enable-dp-attention with --dp > 1)"
    else:
        admission = "admission=off (PD-disaggregated server: no prefill and decode to align)"
    if tbo_active(cfg, setup):
        # say it where operators look: measured so far, it breaks even at best
        where = f"passes of >= {tbo_min_tokens} tokens on the largest rank"
        if not cfg.tbo_min_tokens:
            where += " (from the model's expert widths)"
        tbo = (f"tbo=prefill {where} over all_gather/reduce_scatter by {cfg.tbo_comm} "
               f"(experimental: 0.95-1.05x of prefill without it from 8k tokens per rank on "
               f"2xH200, DP4 not yet remeasured, see README)")
        if cfg.tbo_nccl_max_ctas:
            tbo += f" [NCCL limited to {cfg.tbo_nccl_max_ctas} CTAs: not yet measured in serving]"
        if cfg.tbo_comm == "copy-engine":
            tbo += (" [copy-engine has one clean served run and one that hung; use --atom-tbo-comm "
                    "nccl unless you are testing it]")
    elif not setup.two_batch_overlap:
        tbo = "tbo=off (--enable-two-batch-overlap not given)"
    else:
        tbo = "tbo=off (needs --enable-dp-attention with --dp > 1)"
    gatherv = (" | dp_gatherv=all_gatherv/reduce_scatterv in passes SGLang would all-reduce "
               "(experimental: not yet measured on GPUs)" if cfg.dp_gatherv else "")
    budget = (f" | prefill budget={setup.prefill_tokens_per_rank} tokens per rank"
              if setup.dp_attention and setup.prefill_tokens_per_rank else "")
    return (f"sglang-atom active: {admission}{budget} | {tbo}{gatherv} | moe_kernel={plan.moe_kernel} ({plan.platform}) | "
            f"collectives={plan.collective_backend} all_gather/reduce_scatter")
