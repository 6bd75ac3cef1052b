"""Two-batch overlap of MoE prefill over all_gather/reduce_scatter, hooked into SGLang 0.5.17.

SGLang still builds the two child ForwardBatches and their attention metadata
(`TboForwardBatchPreparer`); sglang-atom changes three things around it:

- where it cuts: token-even (`tbo.split.seq_cut`), a sequence cut in the middle when needed;
- when: every rank splits or none does, from the numbers SGLang's per-pass DP sync already
  gathered (no extra collective), only for prefill (EXTEND) with enough tokens;
- how the layers run: SGLang's own TBO layer programs assume an all-to-all dispatcher and crash
  without one, so the MoE layers run through `tbo.overlap` (async all_gather/reduce_scatter of
  each micro-batch's rows, interleaved with the other micro-batch's compute).

Decode never splits, and decode CUDA graphs are captured without TBO (`--enable-two-batch-overlap`
would otherwise capture TBO decode graphs, whose layer programs also assume all-to-all), and the
two child attention backends stay out of the graph paths.
See docs/tbo-integration-sglang-0.5.17.md for the SGLang code this relies on.
"""

from __future__ import annotations

from functools import lru_cache

from ..tbo.overlap import make_transport, micro_batch_program, nccl_group, run_interleaved
from ..tbo.split import agree_split, auto_min_tokens, micro_batch_rows, seq_cut
from . import moe_layers

_TBO = "sglang.srt.batch_overlap.two_batch_overlap"
TARGETS = (
    f"{_TBO}._split_extend_seqs",
    f"{_TBO}._is_two_chunk_split_enabled",
    "sglang.srt.managers.scheduler_components.dp_attn.prepare_mlp_sync_batch_raw",
    f"{_TBO}.model_forward_maybe_tbo",
    f"{_TBO}.TboCudaGraphRunnerPlugin.capture_one_batch_size",
    f"{_TBO}.TboCudaGraphRunnerPlugin.replay_prepare",
    "sglang.srt.model_executor.runner.decode_cuda_graph_runner.DecodeCudaGraphRunner.capture",
    "sglang.srt.layers.attention.tbo_backend.TboAttnBackend._children_use_cuda_graph",
    f"{_TBO}.TboDPAttentionPreparer.prepare_all_gather",
)
# ScheduleBatch fields that SGLang's child-batch builder (TboForwardBatchPreparer.filter_batch)
# does not carry into the micro-batches: it raises on a batch holding one, on that rank alone,
# while the other ranks go on into the split's collectives.
UNSPLITTABLE_FIELDS = ("input_embeds", "replace_embeds")
READS = (
    "sglang.srt.model_executor.forward_batch_info.ForwardMode.EXTEND",
    *(f"sglang.srt.managers.schedule_batch.ScheduleBatch.{f}" for f in UNSPLITTABLE_FIELDS),
    f"{_TBO}._model_forward_tbo_split_inputs",
    f"{_TBO}._model_forward_tbo_merge_outputs",
    "sglang.srt.batch_overlap.operations._resolve_tbo_child_contexts",
    "sglang.srt.model_executor.forward_context.forward_context",
    "sglang.srt.layers.dp_attention.get_attention_dp_rank",
    "sglang.srt.distributed.parallel_state.get_tp_group",
    *moe_layers.READS,
)


def split_extend_seqs(extend_lens) -> int:
    """REPLACE of SGLang's split rule: the sequence index of the token-even cut."""
    return seq_cut(extend_lens)[0]


def is_two_chunk_split_enabled(extend_lens) -> bool:
    """REPLACE: SGLang cuts a sequence in two exactly when the token-even cut falls inside one."""
    return extend_lens is not None and seq_cut(extend_lens)[1]


def split_min_tokens(hf_text_config) -> int:
    """--atom-tbo-min-tokens 0 for this model: the size derived from its expert widths
    (`tbo.split.auto_min_tokens`). Every rank serves the same config, so every rank gets the
    same number."""
    c = hf_text_config
    try:
        experts = c.num_experts_per_tok + (getattr(c, "n_shared_experts", None) or 0)
        return auto_min_tokens(c.hidden_size, c.moe_intermediate_size, experts)
    except (AttributeError, TypeError, ValueError) as exc:
        raise RuntimeError(f"sglang-atom TBO cannot derive --atom-tbo-min-tokens from this model's "
                           f"config ({exc}); pass --atom-tbo-min-tokens N.") from exc


def make_agreement(min_tokens: int):
    """AFTER hook of `prepare_mlp_sync_batch_raw`: keep SGLang's split only where all ranks agree.

    SGLang has just gathered every rank's token count and forward mode, so the inputs here are
    the same on every rank and so is the answer: split only prefill (global mode EXTEND, which
    SGLang sets only when all busy ranks extend) where the largest rank has `min_tokens` (0: the
    model's `split_min_tokens`, derived from the first batch's config, since the hook is built
    before the model is known; the scheduler derived the same number at start-up, where a
    config it cannot use stops the server).
    """
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    threshold = min_tokens

    def after_prepare_mlp_sync_batch_raw(result, *args, **kwargs):
        nonlocal threshold
        batch = result
        if batch is not None and batch.forward_mode.is_prebuilt():
            batch = getattr(batch, "inner_idle_batch", None)
        if batch is None or batch.tbo_split_seq_index is None:
            return None
        tokens = list(batch.global_num_tokens)
        if not threshold:  # one model per scheduler process: derive once
            threshold = split_min_tokens(batch.model_config.hf_text_config)
        if not (batch.global_forward_mode == ForwardMode.EXTEND and agree_split(tokens, threshold)):
            batch.tbo_split_seq_index = None
            batch.global_forward_mode = None
        else:
            # A split pass runs its micro-batches eagerly: the prefill graphs were captured
            # whole (`cli.around_breakable_graph_rules`). Every rank splits, so every rank
            # leaves the graphs, and their collectives stay matched.
            batch.can_run_dp_breakable_cuda_graph = False
        return None

    return after_prepare_mlp_sync_batch_raw


def after_prepare_all_gather(result, preparer, local_batch, *args, **kwargs):
    """AFTER hook of TboDPAttentionPreparer.prepare_all_gather: a rank whose batch carries input
    embeddings (a /generate request with `input_embeds`) votes against splitting. SGLang takes
    the minimum of the votes from the DP sync it already runs (`compute_output`), so every rank
    then runs the pass whole."""
    can_run_tbo, local_forward_mode = result
    if can_run_tbo and local_batch is not None and any(
            getattr(local_batch, field, None) is not None for field in UNSPLITTABLE_FIELDS):
        return False, local_forward_mode
    return None


def no_tbo_capture(*args, **kwargs):
    """REPLACE of TboCudaGraphRunnerPlugin.capture_one_batch_size / replay_prepare: decode
    graphs are captured and replayed without micro-batches."""
    return None


def before_decode_graph_capture(runner, *args, **kwargs):
    # Read again at replay (`can_run_graph` would otherwise demand a TBO split of every decode).
    runner.enable_two_batch_overlap = False
    return None


def children_outside_graphs(*args, **kwargs) -> bool:
    """REPLACE of TboAttnBackend._children_use_cuda_graph: decode graphs run on the primary
    backend alone. Otherwise every replay also builds the children's metadata for a TBO split of
    the decode batch that never runs: wasted work on triton, and on flashinfer MLA a KeyError,
    since the children never captured those batch sizes (seen on 2xH200, 2026-11-22)."""
    return False


@lru_cache(maxsize=4)
def _comm(kind: str, nccl_max_ctas: int, hidden: int, dtype, device):
    """One transport and one set of persistent buffers per process (per hidden size/dtype).

    Created at the first split forward, which every rank runs: so a CTA-limited NCCL group is
    created by all ranks together."""
    from sglang.srt.distributed.parallel_state import get_tp_group

    tp = get_tp_group()
    group = tp.device_group
    if kind == "nccl" and nccl_max_ctas > 0:
        group = nccl_group(list(tp.ranks), nccl_max_ctas)
    return make_transport(kind, group, hidden, dtype, device)


def make_forward(comm_kind: str, nccl_max_ctas: int):
    """AROUND hook of `model_forward_maybe_tbo`, moving rows with the `--atom-tbo-comm` transport."""

    def around(original, *args, **kwargs):
        return around_model_forward_maybe_tbo(original, *args, comm_kind=comm_kind,
                                              nccl_max_ctas=nccl_max_ctas, **kwargs)

    return around


def around_model_forward_maybe_tbo(original, layers, enable_tbo, positions, forward_batch,
                                   hidden_states, input_data_scatter_mode, residual,
                                   zero_allocator=None, *, comm_kind: str, nccl_max_ctas: int):
    """Run SGLang's TBO layer range as two micro-batches over async all_gather/reduce_scatter."""
    from sglang.srt.batch_overlap import two_batch_overlap as tbo
    from sglang.srt.batch_overlap.operations import _resolve_tbo_child_contexts
    from sglang.srt.layers.dp_attention import get_attention_dp_rank
    from sglang.srt.model_executor.forward_context import forward_context

    if not enable_tbo:
        return original(layers, enable_tbo, positions, forward_batch, hidden_states,
                        input_data_scatter_mode, residual, zero_allocator)
    ops_cls = moe_layers.layer_ops_for(layers)  # a clear error on a layer range it cannot run
    inputs = tbo._model_forward_tbo_split_inputs(
        hidden_states=hidden_states, residual=residual, positions=positions,
        forward_batch=forward_batch, zero_allocator=zero_allocator,
        input_data_scatter_mode=input_data_scatter_mode,
        layer_input_scatter_mode=layers[0].layer_scatter_modes.layer_input_mode,
    )
    # Micro-batch rows of every rank follow from the gathered token counts and the token-even
    # rule, so no collective is needed to size the all_gathers.
    rows = micro_batch_rows(forward_batch.global_num_tokens_cpu)
    rank = get_attention_dp_rank()
    # Holds whenever the split hook is in effect, which startup verifies. If it ever fails, it
    # fails on one rank: that scheduler's exception makes SGLang stop the whole server
    # (run_scheduler_process sends the launcher SIGQUIT), so the peers waiting in the first
    # all_gather are stopped too rather than left waiting.
    for mb, inp in enumerate(inputs):
        if inp["hidden_states"].shape[0] != rows[mb][rank]:
            raise RuntimeError(
                f"sglang-atom TBO: micro-batch {mb} has {inp['hidden_states'].shape[0]} rows on DP "
                f"rank {rank} but the token-even rule gives {rows[mb][rank]}; SGLang's split rule "
                f"hook is not in effect.")
    comm = _comm(comm_kind, nccl_max_ctas, hidden_states.shape[1], hidden_states.dtype,
                 hidden_states.device)
    for mb in (0, 1):
        comm.set_rows(mb, rows[mb])
    ops = ops_cls(layers, inputs)
    child_contexts = _resolve_tbo_child_contexts()
    if child_contexts[0] is None:  # each micro-batch's attention needs its own child backend
        raise RuntimeError("sglang-atom TBO: the active attention backend is not SGLang's "
                           "TboAttnBackend, so the micro-batches cannot attend separately; pass "
                           "--attention-backend flashinfer or fa3, or drop --enable-two-batch-overlap.")
    run_interleaved(
        [micro_batch_program(mb, len(layers), ops, comm) for mb in (0, 1)],
        contexts=[lambda c=c: forward_context(c) for c in child_contexts],
    )
    return tbo._model_forward_tbo_merge_outputs(*ops.outputs(), hidden_states.shape[0])


def hooks(min_tokens: int, comm_kind: str, nccl_max_ctas: int):
    from sglang.srt.plugins.hook_registry import HookType

    return [
        (TARGETS[0], split_extend_seqs, HookType.REPLACE),
        (TARGETS[1], is_two_chunk_split_enabled, HookType.REPLACE),
        (TARGETS[2], make_agreement(min_tokens), HookType.AFTER),
        (TARGETS[3], make_forward(comm_kind, nccl_max_ctas), HookType.AROUND),
        (TARGETS[4], no_tbo_capture, HookType.REPLACE),
        (TARGETS[5], no_tbo_capture, HookType.REPLACE),
        (TARGETS[6], before_decode_graph_capture, HookType.BEFORE),
        (TARGETS[7], children_outside_graphs, HookType.REPLACE),
        (TARGETS[8], after_prepare_all_gather, HookType.AFTER),
    ]
