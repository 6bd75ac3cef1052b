"""All_gatherv + reduce_scatterv of each rank's real rows in passes SGLang would all-reduce.

With DP attention and TP-sharded experts, SGLang 0.5.17 moves an MoE layer's rows in one of
two ways. MAX_LEN passes (decode in CUDA graphs, prefill in its prefill graphs): all_gather of
rows padded to the largest rank's, reduce_scatter after the experts. SUM_LEN passes (every
other pass with a prefill on some rank): an all-reduce of a zero-filled buffer of every rank's
rows to gather them, and an all-reduce of the experts' partial sums followed by taking this
rank's slice. An all-reduce is a reduce_scatter plus an all_gather of the same buffer, so a
SUM_LEN layer moves about twice the bytes it needs (NCCL measured 1.43-1.64x the time of
all_gather + reduce_scatter on 2xH200, `benchmarks/results/2026-11-24-tbo-plain-dp2-2xh200/`).

SGLang already has the gather half: `SGLANG_DP_USE_GATHERV=1` (read when SGLang imports its
DP-attention module, so the launcher sets it for the processes it spawns) turns the SUM_LEN
gather into `all_gatherv` of the real rows when attention TP is 1. Its combine half exists only
for expert-parallel MoE and DeepSeek-V4. These two hooks add it for TP-sharded experts
(Qwen3-MoE, DeepSeek-V2/V3): in a SUM_LEN pass the layer skips the experts' all-reduce and its
summable-pair step reduce_scatters the partial sums with `reduce_scatterv` instead of slicing an
all-reduced buffer. Both hooks decide from the pass's padding mode, which SGLang derives from
the gathered token counts, so every rank takes the same branch in every layer. Gather and
combine are independent (either gather gives the same buffer), so the combine is correct with
or without SGLang's gather half; only the two hooks must agree, and they test the same thing.
"""

from __future__ import annotations

ENV = {"SGLANG_DP_USE_GATHERV": "1"}

_COMM = "sglang.srt.layers.communicator"
TARGETS = (
    f"{_COMM}.LayerCommunicator.should_use_reduce_scatter",
    f"{_COMM}.CommunicateSummableTensorPairFn._scatter_hidden_states",
)
READS = (
    "sglang.srt.layers.dp_attention.get_dp_global_num_tokens",
    "sglang.srt.layers.dp_attention.get_local_dp_buffer",
    "sglang.srt.layers.moe.utils.should_use_dp_reduce_scatterv",
    "sglang.srt.distributed.parallel_state.get_tp_group",
    "sglang.srt.distributed.parallel_state.GroupCoordinator.reduce_scatterv",
    "sglang.srt.model_executor.forward_batch_info.ForwardBatch.dp_padding_mode",
)


def reduce_scatters_here(allow_reduce_scatter: bool, sum_len_pass: bool,
                         sglang_reduce_scatters: bool) -> bool:
    """Whether sglang-atom adds a reduce_scatterv to this layer's combine: a layer that may
    reduce-scatter (SGLang's `allow_reduce_scatter`), in a SUM_LEN pass, where SGLang itself
    does not already (its expert-parallel `reduce_scatterv`)."""
    return allow_reduce_scatter and sum_len_pass and not sglang_reduce_scatters


def _sum_len_pass(forward_batch) -> bool:
    """A SUM_LEN pass outside CUDA-graph capture. Graphs capture MAX_LEN passes, except under
    SGLang's ROCm 7.0-alpha workaround; a captured reduce_scatterv would keep the row counts of
    the capture, so captures keep SGLang's combine (every rank captures together)."""
    import torch

    mode = getattr(forward_batch, "dp_padding_mode", None)
    if mode is None or not mode.is_sum_len():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def _adds_reduce_scatter(allow_reduce_scatter: bool, forward_batch) -> bool:
    from sglang.srt.layers.moe.utils import should_use_dp_reduce_scatterv

    return reduce_scatters_here(allow_reduce_scatter, _sum_len_pass(forward_batch),
                                should_use_dp_reduce_scatterv())


def around_should_use_reduce_scatter(original, communicator, forward_batch, *args, **kwargs):
    """AROUND LayerCommunicator.should_use_reduce_scatter: True also where the combine below
    reduce_scatters, so the experts skip their all-reduce exactly there."""
    from sglang.srt.layers.communicator import CommunicateSummableTensorPairFn

    if original(communicator, forward_batch, *args, **kwargs):
        return True
    return (communicator._communicate_summable_tensor_pair_fn
            is CommunicateSummableTensorPairFn._scatter_hidden_states
            and _adds_reduce_scatter(communicator.allow_reduce_scatter, forward_batch))


def around_scatter_hidden_states(original, hidden_states, residual, forward_batch, context,
                                 allow_reduce_scatter=False, **kwargs):
    """AROUND CommunicateSummableTensorPairFn._scatter_hidden_states: the experts' partial sums
    of every rank's rows -> this rank's rows, summed, by one reduce_scatterv."""
    if not _adds_reduce_scatter(allow_reduce_scatter, forward_batch):
        return original(hidden_states, residual, forward_batch, context,
                        allow_reduce_scatter=allow_reduce_scatter, **kwargs)
    from sglang.srt.distributed.parallel_state import get_tp_group
    from sglang.srt.layers.dp_attention import get_dp_global_num_tokens, get_local_dp_buffer

    group = get_tp_group()  # attention TP is 1 (validation), so SGLang's DP group is the TP group
    sizes = list(get_dp_global_num_tokens())
    local = get_local_dp_buffer(group)
    # Equal sizes: NCCL's own reduce_scatter, not one grouped reduce per rank.
    group.reduce_scatterv(hidden_states, output=local,
                          sizes=None if len(set(sizes)) == 1 else sizes)
    return local, residual


def hooks():
    from sglang.srt.plugins.hook_registry import HookType

    return [
        (TARGETS[0], around_should_use_reduce_scatter, HookType.AROUND),
        (TARGETS[1], around_scatter_hidden_states, HookType.AROUND),
    ]
